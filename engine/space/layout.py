"""The 2-D map of an atlas: UMAP on landmark cells, every other cell placed among them.

A full UMAP on millions of cells does not fit a 2-core machine's time budget, and
umap-learn's ``transform`` is slow. The landmarks' kNN graph is computed exactly with FAISS
and handed to UMAP (``precomputed_knn``). So UMAP is fitted on a reproducible sample of landmark
cells and each remaining cell is placed at the distance-weighted mean position of its
nearest landmarks in the embedding (found with FAISS). Below ``n_landmarks`` cells this is
simply a full UMAP.
"""

from __future__ import annotations

import warnings

import numpy as np

from engine.errors import InputError
from engine.progress import Progress, report

PLACE_CHUNK = 200_000
"""Cells placed at a time."""


def umap_layout(embedding: np.ndarray, *, n_neighbors: int = 15, min_dist: float = 0.3,
                n_landmarks: int = 15_000, k_place: int = 10, seed: int = 0,
                progress: Progress | None = None, out: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Compute 2-D coordinates for every cell.

    Parameters
    ----------
    embedding
        ``(n_cells, dim)`` embedding (memory-mapped is fine: it is read in blocks).
    n_neighbors, min_dist
        UMAP parameters.
    n_landmarks
        Cells UMAP is fitted on; the rest are placed by nearest landmarks.
    k_place
        Landmarks used to place each remaining cell.
    seed
        Seed for the landmark sample and UMAP.
    progress
        Progress callback.
    out
        ``(n_cells, 2)`` float32 array (e.g. memory-mapped) to write the coordinates into.

    Returns
    -------
    coords
        ``(n_cells, 2)`` float32.
    params
        The parameters, for the manifest.
    """
    import umap

    n = len(embedding)
    if n < 5:
        raise InputError(f"A map needs at least 5 cells; this atlas has {n}.")
    rng = np.random.default_rng(seed)
    landmarks = np.sort(rng.choice(n, n_landmarks, replace=False)) if n > n_landmarks else np.arange(n)
    report(progress, 0.0, f"UMAP on {len(landmarks):,} landmark cells")
    n_neighbors = min(n_neighbors, len(landmarks) - 1)
    reference = np.ascontiguousarray(embedding[landmarks], dtype=np.float32)
    knn = exact_knn(reference, n_neighbors)
    reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed, n_components=2,
                        n_jobs=1, precomputed_knn=(*knn, None))
    with warnings.catch_warnings():  # we never call transform: cells are placed by place_by_neighbours
        warnings.filterwarnings("ignore", message=".*transforming new data with transform will be unavailable")
        landmark_coords = reducer.fit_transform(reference).astype(np.float32)
    coords = np.empty((n, 2), dtype=np.float32) if out is None else out
    coords[landmarks] = landmark_coords
    n_rest = n - len(landmarks)
    if n_rest:
        report(progress, 0.8, f"placing {n_rest:,} cells among their nearest landmarks")
        is_landmark = np.zeros(n, dtype=bool)
        is_landmark[landmarks] = True
        index = _flat_index(reference)
        for start in range(0, n, PLACE_CHUNK):
            rows = start + np.flatnonzero(~is_landmark[start:start + PLACE_CHUNK])
            coords[rows] = _place(index, landmark_coords, embedding[rows], k_place)
            report(progress, 0.8 + 0.2 * min(start + PLACE_CHUNK, n) / n,
                   f"placing {n_rest:,} cells among their nearest landmarks")
    report(progress, 1.0, "layout done")
    params = {"method": "umap-landmarks" if n_rest else "umap", "n_neighbors": n_neighbors,
              "min_dist": min_dist, "n_landmarks": int(len(landmarks)), "k_place": k_place, "seed": seed}
    return coords, params


def exact_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest neighbours of every row among the rows (itself first), with FAISS.

    Returns ``(indices, euclidean distances)`` as UMAP's ``precomputed_knn`` expects; this
    replaces UMAP's own approximate search (pynndescent), which is slower to start.
    """
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(x, dtype=np.float32))
    dist, ids = index.search(np.ascontiguousarray(x, dtype=np.float32), k)
    return ids, np.sqrt(np.maximum(dist, 0.0))


def place_by_neighbours(reference: np.ndarray, reference_coords: np.ndarray, queries: np.ndarray,
                        k: int = 10, chunk: int = 200_000) -> np.ndarray:
    """Place each query at the inverse-distance-weighted mean of its ``k`` nearest references."""
    index = _flat_index(reference)
    out = np.empty((len(queries), 2), dtype=np.float32)
    for start in range(0, len(queries), chunk):
        out[start:start + chunk] = _place(index, reference_coords, queries[start:start + chunk], k)
    return out


def _flat_index(reference: np.ndarray):
    import faiss

    index = faiss.IndexFlatL2(reference.shape[1])
    index.add(np.ascontiguousarray(reference, dtype=np.float32))
    return index


def _place(index, reference_coords: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Inverse-distance-weighted mean position of each query's ``k`` nearest references in ``index``."""
    k = min(k, index.ntotal)
    dist, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    weights = 1.0 / (np.sqrt(np.maximum(dist, 0)) + 1e-3)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("nk,nkd->nd", weights, reference_coords[ids]).astype(np.float32)
