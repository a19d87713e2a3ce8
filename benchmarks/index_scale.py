"""FAISS at atlas scale: build time, queries/s, recall@10 and memory per index type.

Vectors: ``--cells`` embeddings of width 64, either a bundle's own (``--bundle``: its default
embedding, memory-mapped) or clustered synthetic ones (200 Gaussian clusters of random scale,
like a cell atlas's cell types and states). For each index factory, ``nprobe`` / ``efSearch`` is
raised until recall@10 against exact search on 1,000 held-in queries reaches 0.95; queries/s is
then measured on those queries (2 threads) and compared with exact flat search in the same run,
and, with ``--scanpy``, with the kNN graph scanpy builds by default (``sc.pp.neighbors``:
pynndescent; its per-cell rate is n / graph time, its recall that of the sampled cells' rows).

Usage::

    python benchmarks/index_scale.py --cells 1000000 --scanpy
    python benchmarks/index_scale.py --cells 10000000
    python benchmarks/index_scale.py --bundle atlas.vcell --prebuilt --factories none
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import time

import numpy as np
import pandas as pd

from mdtable import markdown

from engine.space.index import build_index, exact_neighbours, recall_at_k

DIM = 64
N_QUERIES = 1000
TARGET = 0.95


def clustered(n: int, dim: int = DIM, n_clusters: int = 200, seed: int = 0) -> np.ndarray:
    """``n`` float32 vectors in Gaussian clusters of random centre and scale, generated in blocks."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (n_clusters, dim)).astype(np.float32)
    scales = rng.uniform(0.3, 1.5, n_clusters).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 1_000_000):
        stop = min(n, start + 1_000_000)
        which = rng.integers(0, n_clusters, stop - start)
        out[start:stop] = centres[which] + rng.standard_normal((stop - start, dim), dtype=np.float32) * scales[which, None]
    return out


def factories(n: int) -> list[str]:
    """The index types compared at ``n`` vectors (lists about ``4 * sqrt(n)``, a power of two)."""
    nlist = int(2 ** round(np.log2(4 * np.sqrt(n))))
    return [f"IVF{nlist},Flat", f"IVF{nlist}_HNSW32,Flat", f"IVF{nlist}_HNSW32,SQ8", "HNSW32"]


def tune(index, queries: np.ndarray, truth: np.ndarray) -> tuple[str, float]:
    """Raise the search breadth until recall@10 reaches :data:`TARGET`; returns ``(setting, recall)``."""
    import faiss

    params = faiss.ParameterSpace()
    name = "efSearch" if "HNSW" in type(index).__name__ and "IVF" not in type(index).__name__ else "nprobe"
    for value in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):
        params.set_index_parameter(index, name, value)
        _, found = index.search(queries, 10)
        recall = recall_at_k(found, truth)
        if recall >= TARGET:
            break
    return f"{name}={value}", recall


def queries_per_second(index, queries: np.ndarray, repeat: int = 1) -> float:
    """Queries/s for k=10 over ``queries`` (best of ``repeat``)."""
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        index.search(queries, 10)
        best = min(best, time.perf_counter() - start)
    return len(queries) / best


def index_bytes(index) -> int:
    """Size of the serialised index."""
    import faiss

    return int(faiss.serialize_index(index).size)


def scanpy_graph(x: np.ndarray, rows: np.ndarray) -> tuple[float, np.ndarray]:
    """Seconds for scanpy's default kNN graph on ``x`` and the 10 neighbours it gives ``rows``.

    ``sc.pp.neighbors`` (k=15, euclidean) hands the search to pynndescent's ``NNDescent``, called
    here directly with scanpy's settings (this scanpy's post-processing fails on this scipy).
    """
    from pynndescent import NNDescent

    start = time.perf_counter()
    graph = NNDescent(x, n_neighbors=15, metric="euclidean", random_state=0, low_memory=True, n_jobs=-1)
    ids, _ = graph.neighbor_graph
    return time.perf_counter() - start, ids[rows, :10]


def main() -> None:
    """Run the comparison and print one table."""
    import faiss

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--bundle", help="use this bundle's default embedding instead of synthetic vectors")
    parser.add_argument("--scanpy", action="store_true", help="also time scanpy's default neighbour graph")
    parser.add_argument("--factories", help="comma-separated FAISS factories (default: by size; 'none': skip)")
    parser.add_argument("--prebuilt", action="store_true",
                        help="with --bundle: also measure the bundle's own index (as `vcell build` made it)")
    args = parser.parse_args()
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    if args.bundle:
        from engine.bundle.atlas import read_atlas

        atlas = read_atlas(args.bundle)
        x = np.asarray(atlas.embedding(), dtype=np.float32)
        source = f"{args.bundle} ({atlas.default_embedding})"
    else:
        x = clustered(args.cells)
        source = "synthetic: 200 Gaussian clusters"
    n = len(x)
    print(f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, faiss {faiss.__version__}; "
          f"{n:,} x {x.shape[1]} vectors, {source}", flush=True)
    rng = np.random.default_rng(1)
    query_rows = np.sort(rng.choice(n, N_QUERIES, replace=False))
    queries = np.ascontiguousarray(x[query_rows])
    start = time.perf_counter()
    truth = exact_neighbours(x, queries, 10)
    exact_seconds = time.perf_counter() - start
    exact_qps = N_QUERIES / exact_seconds
    rows = [{"index": "Flat (exact)", "build s": 0.0, "setting": "", "recall@10": 1.0, "queries/s": exact_qps,
             "x exact": 1.0, "index GiB": n * x.shape[1] * 4 / 2**30}]
    print(f"exact: {exact_qps:,.0f} queries/s", flush=True)
    if args.prebuilt:
        from engine.space.index import load_index

        info = atlas.manifest.index
        index = load_index(atlas.path / info.path)
        setting, recall = tune(index, queries, truth)
        qps = queries_per_second(index, queries, repeat=3)
        rows.append({"index": f"{info.factory} (the bundle's, built by vcell build)", "build s": np.nan,
                     "setting": setting, "recall@10": recall, "queries/s": qps, "x exact": qps / exact_qps,
                     "index GiB": index_bytes(index) / 2**30})
        print(rows[-1], flush=True)
        del index
    chosen = [] if args.factories == "none" else args.factories.split(",") if args.factories else factories(n)
    for factory in chosen:
        start = time.perf_counter()
        index, _ = build_index(x, factory=factory, target_recall=TARGET)  # includes its nprobe tuning
        built = time.perf_counter() - start
        setting, recall = tune(index, queries, truth)
        qps = queries_per_second(index, queries, repeat=3)
        rows.append({"index": factory, "build s": built, "setting": setting, "recall@10": recall, "queries/s": qps,
                     "x exact": qps / exact_qps, "index GiB": index_bytes(index) / 2**30})
        print(rows[-1], flush=True)
        del index
    if args.scanpy:
        seconds, found = scanpy_graph(x, query_rows)
        rows.append({"index": "scanpy default graph (pynndescent, k=15), every cell", "build s": seconds,
                     "setting": "", "recall@10": recall_at_k(found, truth), "queries/s": n / seconds,
                     "x exact": n / seconds / exact_qps, "index GiB": np.nan})
    table = pd.DataFrame(rows)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\npeak RSS {peak:.1f} GiB")
    print(markdown(table, index=False))


if __name__ == "__main__":
    main()
