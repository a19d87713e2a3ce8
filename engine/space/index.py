"""Nearest-neighbour index over an embedding, with FAISS.

The index type is chosen by atlas size: exact (``Flat``) for small atlases, inverted lists
(``IVF...``) for large ones, with the search breadth (``nprobe``) tuned against exact search
on a sample of queries until recall@10 reaches a target. Row ``i`` of the index is cell ``i``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.errors import BundleError, InputError
from engine.fileio import atomic_path
from engine.progress import Progress, report

EXACT_LIMIT = 200_000
TRAIN_PER_LIST = 64
"""IVF k-means training vectors per list (FAISS warns below 39; more mostly costs time: 256 per list
spent most of a 1M-cell build's four index minutes training)."""
CHUNK = 100_000
"""Vectors checked, added and scanned at a time (a memory-mapped embedding is never loaded whole)."""


@dataclass
class IndexInfo:
    """How an index was made, recorded in the bundle manifest."""

    factory: str
    metric: str
    n: int
    dim: int
    nprobe: int | None = None
    recall_at_10: float | None = None
    device: str = "cpu"

    def to_dict(self) -> dict:
        """Plain-dict form for JSON."""
        return asdict(self)


def choose_factory(n: int, dim: int) -> str:
    """A FAISS factory string suited to ``n`` vectors of width ``dim``.

    Exact search up to ``EXACT_LIMIT`` vectors; above, ``IVF{nlist}_HNSW32,Flat``: about
    ``4 * sqrt(n)`` inverted lists (the usual FAISS guidance) whose centroids are found by an
    HNSW graph rather than a scan. At 1M clustered vectors it answered 2.3x the queries/s of
    ``IVF4096,Flat`` at higher recall (0.986 vs 0.955; ``benchmarks/index_scale.py``).
    """
    if n <= EXACT_LIMIT:
        return "Flat"
    nlist = int(2 ** round(math.log2(4 * math.sqrt(n))))
    return f"IVF{nlist}_HNSW32,Flat"


def metric_type(name: str) -> int:
    """The FAISS metric of ``"l2"`` or ``"ip"`` (inner product on normalised vectors)."""
    import faiss

    if name == "l2":
        return faiss.METRIC_L2
    if name == "ip":
        return faiss.METRIC_INNER_PRODUCT
    raise InputError(f"Unknown index metric '{name}': use 'l2' or 'ip' (inner product on normalised vectors).")


def build_index(embedding: np.ndarray, *, factory: str | None = None, metric: str = "l2",
                target_recall: float = 0.95, seed: int = 0, progress: Progress | None = None):
    """Build a FAISS index whose row ``i`` is ``embedding[i]``.

    Parameters
    ----------
    embedding
        ``(n_cells, dim)`` float32 (memory-mapped is fine).
    factory
        FAISS factory string; chosen by :func:`choose_factory` when ``None``.
    metric
        ``"l2"`` or ``"ip"``.
    target_recall
        For approximate indexes, ``nprobe`` is doubled until recall@10 against exact
        search on a sample of queries reaches this.
    seed
        Seed for the training sample and query sample.
    progress
        Progress callback.

    Returns
    -------
    index, info
        The ``faiss.Index`` (tuned ``nprobe`` / ``efSearch`` set) and its :class:`IndexInfo`
        (factory, metric, search parameters, measured recall@10).
    """
    import faiss

    x = np.ascontiguousarray(embedding, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise InputError("Cannot index an empty embedding: the atlas has no cells.")
    if not all(np.isfinite(x[start:start + CHUNK]).all() for start in range(0, len(x), CHUNK)):
        raise InputError("The embedding contains NaN or infinite values: check the input data and model.")
    n, dim = x.shape
    factory = factory or choose_factory(n, dim)
    index = faiss.index_factory(dim, factory, metric_type(metric))
    info = IndexInfo(factory=factory, metric=metric, n=n, dim=dim)
    rng = np.random.default_rng(seed)
    if not index.is_trained:
        report(progress, 0.05, f"training {factory}")
        train_on_sample(index, n, lambda rows: x[rows], rng)
    for start in range(0, n, CHUNK):
        report(progress, 0.1 + 0.7 * start / n, f"adding vectors to {factory}")
        index.add(np.ascontiguousarray(x[start:start + CHUNK]))
    if "IVF" in factory:
        info.nprobe, info.recall_at_10 = tune_nprobe(index, x, metric, target_recall, rng)
    report(progress, 1.0, "index built")
    return index, info


def train_on_sample(index, n: int, rows: Callable[[np.ndarray], np.ndarray], rng: np.random.Generator) -> int:
    """Train ``index`` on :data:`TRAIN_PER_LIST` vectors per inverted list drawn from ``n`` rows.

    ``rows(positions)`` returns the vectors at sorted ``positions``. k-means runs on GPUs when
    present (:func:`use_gpus_for_training`). Returns the sample size (0: nothing to train).
    """
    import faiss

    if index.is_trained:
        return 0
    n_train = min(n, TRAIN_PER_LIST * max(getattr(faiss.try_extract_index_ivf(index), "nlist", 1), 1))
    use_gpus_for_training(index)
    index.train(np.ascontiguousarray(rows(np.sort(rng.choice(n, n_train, replace=False))), dtype=np.float32))
    return n_train


def use_gpus_for_training(index) -> bool:
    """Run an IVF index's k-means assignments on every GPU (``faiss-gpu``); ``False`` on the CPU build.

    Training is the costly part of an IVF index at scale; the index itself stays a CPU index
    (an HNSW coarse quantizer has no GPU form), so bundles read the same everywhere.
    """
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None or not hasattr(faiss, "index_cpu_to_all_gpus") or faiss.get_num_gpus() == 0:
        return False
    ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlat(ivf.d, ivf.metric_type))
    return True


def tune_nprobe(index, x: np.ndarray, metric: str, target: float, rng) -> tuple[int, float]:
    """The smallest ``nprobe`` (within 1/16) whose recall@10 against exact search reaches ``target``.

    ``nprobe`` doubles until the target is met, then is bisected between the last two values
    (10M cells: 192 probes reach 0.95 at 1.4x the queries/s of the 256 that doubling finds).
    """
    import faiss

    queries = np.ascontiguousarray(x[rng.choice(len(x), min(len(x), 1000), replace=False)])
    truth = exact_neighbours(x, queries, 10, metric)
    nlist = faiss.extract_index_ivf(index).nlist

    def recall(nprobe: int) -> float:
        set_nprobe(index, nprobe)
        return recall_at_k(index.search(queries, 10)[1], truth)

    nprobe, reached = 1, recall(1)
    while reached < target and nprobe < nlist:
        nprobe = min(2 * nprobe, nlist)
        reached = recall(nprobe)
    low = nprobe // 2
    while reached >= target and nprobe - low > max(1, nprobe // 16):
        middle = (low + nprobe) // 2
        if (found := recall(middle)) >= target:
            nprobe, reached = middle, found
        else:
            low = middle
    set_nprobe(index, nprobe)  # the bisection may have left a failing value set
    return nprobe, reached


def set_nprobe(index, nprobe: int) -> None:
    """Search ``nprobe`` inverted lists of an IVF index.

    An HNSW coarse quantizer is told to explore at least ``2 * nprobe`` candidates: with FAISS's
    default (``efSearch`` 16) it returns poor lists when more are asked for, and recall stalls
    (10M cells: recall@10 0.90 at 1,024 probes; 0.97 at 256 with this setting).
    """
    import faiss

    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = nprobe
    quantizer = faiss.downcast_index(ivf.quantizer)
    if hasattr(quantizer, "hnsw"):
        quantizer.hnsw.efSearch = max(16, 2 * nprobe)


def exact_neighbours(x: np.ndarray, queries: np.ndarray, k: int, metric: str = "l2") -> np.ndarray:
    """Ids of the exact ``k`` nearest rows of ``x`` for each query, scanning ``x`` in chunks."""
    import faiss

    heap = faiss.ResultHeap(len(queries), k, keep_max=metric == "ip")
    for start in range(0, len(x), CHUNK):
        distances, ids = faiss.knn(queries, np.ascontiguousarray(x[start:start + CHUNK]), min(k, len(x) - start),
                                   metric=metric_type(metric))
        heap.add_result(distances, np.where(ids >= 0, ids + start, -1))
    heap.finalize()
    return heap.I


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true ``k`` neighbours found, per query."""
    hits = [len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth)]
    return float(np.mean(hits) / truth.shape[1])


def save_index(index, path: str | os.PathLike) -> None:
    """Write ``index`` atomically (GPU indexes are moved to the CPU first)."""
    import faiss

    if hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(index).__name__:
        index = faiss.index_gpu_to_cpu(index)
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def load_index(path: str | os.PathLike, nprobe: int | None = None):
    """Read an index written by :func:`save_index`."""
    import faiss

    path = Path(path)
    if not path.exists():
        raise BundleError(f"The FAISS index {path} is missing: rebuild the bundle with `vcell build`.")
    index = faiss.read_index(str(path))
    if nprobe is not None:
        set_nprobe(index, nprobe)
    return index


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(distances, ids)`` of the ``k`` nearest rows for each query row."""
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    k = int(min(k, index.ntotal))
    return index.search(q, k)
