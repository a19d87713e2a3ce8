"""Leiden clusters on the kNN graph (engine.space.cluster)."""

from __future__ import annotations

import numpy as np

from engine.space.cluster import leiden_clusters
from engine.space.index import build_index


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0] * 8, [20.0] * 8, [-20.0] + [0.0] * 7])
    sizes = [150, 100, 60]
    x = np.vstack([c + rng.normal(0, 1, (n, 8)) for c, n in zip(centres, sizes)]).astype(np.float32)
    return x, np.repeat(np.arange(3), sizes)


def test_separated_blobs_are_found_largest_first():
    x, truth = _blobs()
    index, _ = build_index(x, seed=0)
    clusters = leiden_clusters(index, x, k=10, resolution=0.2, seed=0)
    labels = np.asarray(clusters)
    for blob in range(3):  # each blob is one cluster
        assert len(set(labels[truth == blob])) == 1
    assert len(set(labels)) == 3
    assert labels[0] == "cluster 1" and set(labels[truth == 2]) == {"cluster 3"}  # numbered by size


def test_clusters_are_reproducible_with_a_seed():
    x, _ = _blobs(1)
    index, _ = build_index(x, seed=0)
    a = np.asarray(leiden_clusters(index, x, seed=3))
    b = np.asarray(leiden_clusters(index, x, seed=3))
    assert (a == b).all()
