"""kNN label agreement: high for separated labels, chance level for random labels."""

import numpy as np

from engine.evaluate import knn_label_agreement
from engine.index import build_index


def test_agreement_separates_real_from_random_labels():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 2000)
    x = (np.eye(4, 8)[labels] * 10 + rng.normal(0, 1, (2000, 8))).astype(np.float32)
    index, _ = build_index(x)
    good = knn_label_agreement(index, x, labels, n_sample=500)
    shuffled = knn_label_agreement(index, x, rng.permutation(labels), n_sample=500)
    assert good["knn_label_agreement"] > 0.95
    assert 0.1 < shuffled["knn_label_agreement"] < 0.4  # chance is ~0.25 for 4 balanced labels
