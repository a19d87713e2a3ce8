"""Transfer evaluation: the low-label regime (label_subset) and the pretraining-corpus union (write_union)."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from engine.errors import InputError
from engine.evaluate.metrics import evaluate_embeddings, label_subset
from engine.evaluate.finetune import classifier_source
from engine.evaluate.transfer import write_union


def _labels(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    return rng.choice(["a", "b", "c", "rare"], n, p=[0.5, 0.3, 0.19, 0.01])


def test_label_subset_is_a_seeded_stratified_share_of_the_reference_only():
    labels = _labels()
    reference = np.random.default_rng(1).permutation(np.arange(0, 1000, 2)[:400])  # unsorted on purpose
    subset = label_subset(labels, reference, 0.1, seed=0)
    assert set(subset) <= set(reference) and np.all(np.diff(subset) > 0)
    counts, full = pd.Series(labels[subset]).value_counts(), pd.Series(labels[reference]).value_counts()
    for label, n in full.items():  # every label keeps ~10%, and at least one cell
        assert counts[label] == max(1, round(0.1 * n))
    np.testing.assert_array_equal(subset, label_subset(labels, reference, 0.1, seed=0))
    assert not np.array_equal(subset, label_subset(labels, reference, 0.1, seed=1))
    np.testing.assert_array_equal(label_subset(labels, reference, 1.0), np.sort(reference))
    with pytest.raises(InputError, match="label_fraction"):
        label_subset(labels, reference, 0.0)


def test_low_label_regime_limits_the_vote_probe_and_classifier_but_not_the_fit(monkeypatch):
    import engine.evaluate.finetune

    rng = np.random.default_rng(0)
    labels = _labels(600)
    x = (pd.get_dummies(labels).to_numpy(float) * 4 + rng.normal(0, 1, (600, 4))).astype(np.float32)
    split = (np.arange(400), np.arange(400, 600), "fixed")
    seen, trained_on = [], []

    def fitted(seed, reference, query):
        seen.append(len(reference))  # unsupervised fits still get every reference cell
        return x[reference], x[query]

    def spy(x_train, y_train, n_classes, **options):
        trained_on.append(len(x_train))
        return train(x_train, y_train, n_classes, **options)

    train = engine.evaluate.finetune.train_classifier
    monkeypatch.setattr(engine.evaluate.finetune, "train_classifier", spy)
    supervised = classifier_source(x, labels, epochs=1, hidden=(8,), latent=4, label_fraction=0.05)
    full = evaluate_embeddings({"fitted": fitted}, labels, split, seeds=(0,))
    low = evaluate_embeddings({"fitted": fitted, "supervised": supervised}, labels, split, seeds=(0, 1),
                              label_fraction=0.05)
    expected = [len(label_subset(labels, np.arange(400), 0.05, seed)) for seed in (0, 1)]
    assert seen == [400, 400, 400] and full.n_labelled.iloc[0] == 400
    assert list(low.n_labelled[low.method == "fitted"]) == expected and max(expected) < 40
    assert trained_on == expected  # the classifier saw the same labelled cells as the vote and the probe
    assert low.classifier_macro_f1.notna().sum() == 2
    # with 5% of the labels the 'rare' type keeps one labelled cell: k = 15 votes can hardly name it
    assert low[low.method == "fitted"].knn_macro_f1.mean() < full.knn_macro_f1.iloc[0] - 0.1


def _adata(genes, n=5, value=1):
    x = sp.csr_matrix(np.full((n, len(genes)), value, dtype=np.float32) * np.arange(1, len(genes) + 1))
    return ad.AnnData(x, obs=pd.DataFrame({"cell_type": ["t"] * n}, index=[f"c{i}" for i in range(n)]),
                      var=pd.DataFrame(index=genes))


def test_write_union_aligns_sources_to_the_target_genes(tmp_path):
    target = ["CD3E", "MS4A1", "LYZ", "NKG7", "ABSENT"]
    one = _adata(["lyz", "CD3E", "OTHER"], n=3)  # columns hold 1, 2, 3 (times value)
    two = _adata(["NKG7", "CD3E"], n=2, value=10)
    result = write_union({"one": one, "two": two}, target, tmp_path / "union.h5ad")
    report = result.report
    assert result.path == tmp_path / "union.h5ad"
    union = ad.read_h5ad(result.path)
    assert list(union.var_names) == ["CD3E", "LYZ", "NKG7"]  # target order; genes no source has are dropped
    assert list(union.obs.dataset) == ["one"] * 3 + ["two"] * 2 and union.obs_names[0] == "one:c0"
    assert "cell_type" not in union.obs  # a pretraining corpus carries no labels
    np.testing.assert_array_equal(union.X.toarray(), [[2, 1, 0]] * 3 + [[20, 0, 10]] * 2)
    assert report.set_index("dataset").loc["one"].tolist() == [3, 2, 1]
    assert report.set_index("dataset").loc["two"].tolist() == [2, 2, 1] and result.genes_kept == 3
    with pytest.raises(InputError, match="shares a gene"):
        write_union({"one": one}, ["GATA1"], tmp_path / "none.h5ad")
