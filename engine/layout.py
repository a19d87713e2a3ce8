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


def umap_layout(embedding: np.ndarray, *, n_neighbors: int = 15, min_dist: float = 0.3,
                n_landmarks: int = 15_000, k_place: int = 10, seed: int = 0,
                progress: Progress | None = None) -> tuple[np.ndarray, dict]:
    """Compute 2-D coordinates for every cell.

    Parameters
    ----------
    embedding
        ``(n_cells, dim)`` embedding.
    n_neighbors, min_dist
        UMAP parameters.
    n_landmarks
        Cells UMAP is fitted on; the rest are placed by nearest landmarks.
    k_place
        Landmarks used to place each remaining cell.
    seed
        Seed for the landmark sample and UMAP.

    Returns
    -------
    coords
        ``(n_cells, 2)`` float32.
    params
        The parameters, for the manifest.
    """
    import umap

    x = np.ascontiguousarray(embedding, dtype=np.float32)
    n = len(x)
    if n < 5:
        raise InputError(f"A map needs at least 5 cells; this atlas has {n}.")
    rng = np.random.default_rng(seed)
    landmarks = np.sort(rng.choice(n, n_landmarks, replace=False)) if n > n_landmarks else np.arange(n)
    report(progress, 0.0, f"UMAP on {len(landmarks):,} landmark cells")
    n_neighbors = min(n_neighbors, len(landmarks) - 1)
    knn = exact_knn(x[landmarks], n_neighbors)
    reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed, n_components=2,
                        n_jobs=1, precomputed_knn=(*knn, None))
    with warnings.catch_warnings():  # we never call transform: cells are placed by place_by_neighbours
        warnings.filterwarnings("ignore", message=".*transforming new data with transform will be unavailable")
        landmark_coords = reducer.fit_transform(x[landmarks]).astype(np.float32)
    coords = np.empty((n, 2), dtype=np.float32)
    coords[landmarks] = landmark_coords
    rest = np.setdiff1d(np.arange(n), landmarks, assume_unique=True)
    if len(rest):
        report(progress, 0.8, f"placing {len(rest):,} cells among their nearest landmarks")
        coords[rest] = place_by_neighbours(x[landmarks], landmark_coords, x[rest], k=k_place)
    report(progress, 1.0, "layout done")
    params = {"method": "umap-landmarks" if len(rest) else "umap", "n_neighbors": n_neighbors,
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
    import faiss

    index = faiss.IndexFlatL2(reference.shape[1])
    index.add(np.ascontiguousarray(reference, dtype=np.float32))
    k = min(k, len(reference))
    out = np.empty((len(queries), 2), dtype=np.float32)
    for start in range(0, len(queries), chunk):
        dist, ids = index.search(np.ascontiguousarray(queries[start:start + chunk], dtype=np.float32), k)
        weights = 1.0 / (np.sqrt(np.maximum(dist, 0)) + 1e-3)
        weights /= weights.sum(axis=1, keepdims=True)
        out[start:start + chunk] = np.einsum("nk,nkd->nd", weights, reference_coords[ids])
    return out
