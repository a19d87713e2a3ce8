"""Layout: full UMAP below the landmark count, landmarks + placement above it."""

import numpy as np
import pytest

from engine.errors import InputError
from engine.space.layout import place_by_neighbours, umap_layout


def blobs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centres = np.array([[0.0] * 8, [10.0] * 8, [-10.0] * 8])
    return (centres[labels] + rng.normal(0, 1, (n, 8))).astype(np.float32), labels


def test_landmark_layout_keeps_clusters_apart():
    x, labels = blobs(1500)
    coords, params = umap_layout(x, n_landmarks=500, seed=0)
    assert coords.shape == (1500, 2) and np.isfinite(coords).all()
    assert params["method"] == "umap-landmarks" and params["n_landmarks"] == 500
    centroids = np.array([coords[labels == k].mean(0) for k in range(3)])
    spread = max(np.linalg.norm(coords[labels == k] - centroids[k], axis=1).mean() for k in range(3))
    gaps = [np.linalg.norm(centroids[i] - centroids[j]) for i in range(3) for j in range(i + 1, 3)]
    assert min(gaps) > 2 * spread  # placed cells land with their own cluster


def test_placement_interpolates_between_references():
    ref = np.array([[0.0, 0.0], [10.0, 0.0]], dtype=np.float32)
    ref_coords = np.array([[0.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    placed = place_by_neighbours(ref, ref_coords, np.array([[0.1, 0.0]], dtype=np.float32), k=2)
    assert placed[0, 0] < 0.1  # much closer to the first reference


def test_too_few_cells():
    with pytest.raises(InputError, match="at least 5 cells"):
        umap_layout(np.zeros((3, 4), dtype=np.float32))
