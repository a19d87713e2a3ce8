"""Embedding evaluation: kNN label agreement, held-out donors, zero-shot kNN, linear probe,
reconstruction, method x seed tables and whole bundles."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import explained_variance_score

from engine.bundle.manifest import ColumnSource
from engine.errors import InputError
from engine.evaluate.metrics import (
    donor_split,
    evaluate_embeddings,
    knn_label_agreement,
    knn_zero_shot,
    linear_probe,
    reconstruction_metrics,
    summarise,
)
from engine.evaluate.suite import evaluate_bundle
from engine.space.index import build_index


def test_agreement_separates_real_from_random_labels():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 2000)
    x = (np.eye(4, 8)[labels] * 10 + rng.normal(0, 1, (2000, 8))).astype(np.float32)
    index, _ = build_index(x)
    good = knn_label_agreement(index, x, labels, n_sample=500)
    shuffled = knn_label_agreement(index, x, rng.permutation(labels), n_sample=500)
    assert good["knn_label_agreement"] > 0.95
    assert 0.1 < shuffled["knn_label_agreement"] < 0.4  # chance is ~0.25 for 4 balanced labels


# -- held-out donors, zero-shot kNN, linear probe, reconstruction, tables --------------------------


def _blobs(n=1200, n_labels=4, dim=8, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_labels, n)
    x = (np.eye(n_labels, dim)[labels] * 6 + rng.normal(0, spread, (n, dim))).astype(np.float32)
    return x, np.array([f"type{v}" for v in labels])


def _obs(n=1000, n_donors=6, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"donor_id": pd.Categorical([f"d{v}" for v in rng.integers(0, n_donors, n)]),
                         "cell_type": [f"t{v}" for v in rng.integers(0, 3, n)]})


def test_donor_split_holds_out_whole_donors():
    obs = _obs()
    seen = set()
    for seed in range(3):
        reference, query, note = donor_split(obs, query_fraction=0.3, seed=seed)
        assert len(reference) + len(query) == len(obs) and not np.intersect1d(reference, query).size
        ref_donors, query_donors = set(obs.donor_id.iloc[reference]), set(obs.donor_id.iloc[query])
        assert not ref_donors & query_donors and ref_donors and query_donors
        assert len(query) >= 0.3 * len(obs) and "donor split" in note
        seen.add(frozenset(query_donors))
    assert len(seen) == 3  # consecutive seeds hold out different donors
    again = donor_split(obs, seed=1)
    assert np.array_equal(again[1], donor_split(obs, seed=1)[1])
    obs.loc[:9, "donor_id"] = None  # cells without a donor go to neither side
    reference, query, note = donor_split(obs, seed=0)
    assert len(reference) + len(query) == len(obs) - 10 and "10 cells without a donor" in note


def test_donor_split_falls_back_to_stratified_cell_split():
    obs = _obs()
    obs["donor_id"] = "only"
    reference, query, note = donor_split(obs, query_fraction=0.25, seed=0, label_key="cell_type")
    assert "cell split" in note and "stratified" in note
    assert not np.intersect1d(reference, query).size and len(reference) + len(query) == len(obs)
    fractions = obs.cell_type.iloc[query].value_counts() / obs.cell_type.value_counts()
    assert np.allclose(fractions, 0.25, atol=0.01)
    _, _, note = donor_split(obs.drop(columns="donor_id"), seed=0)
    assert "no donor column" in note
    with pytest.raises(InputError):
        donor_split(obs, query_fraction=1.5)


def test_knn_zero_shot_scores_separated_labels_and_chance():
    x, labels = _blobs()
    good = knn_zero_shot(x[:800], labels[:800], x[800:], labels[800:], k=15)
    assert good["macro_f1"] > 0.95 and good["micro_f1"] > 0.95
    assert list(good["per_class"].columns) == ["label", "f1", "precision", "recall", "support"]
    assert good["per_class"]["support"].sum() == 400 and good["n_reference"] == 800
    shuffled = np.random.default_rng(1).permutation(labels)
    chance = knn_zero_shot(x[:800], shuffled[:800], x[800:], shuffled[800:])
    assert chance["macro_f1"] < 0.4 and chance["micro_f1"] < 0.4
    for options in ({"metric": "cosine"}, {"weighted": True}):
        assert knn_zero_shot(x[:800], labels[:800], x[800:], labels[800:], **options)["macro_f1"] > 0.95


def test_knn_zero_shot_keeps_the_first_neighbour():
    # each query sits exactly on one reference cell whose label differs from its surroundings:
    # with k=1 the nearest neighbour decides (a self-excluding search would drop it).
    reference = np.array([[0.0, 0.0], [10.0, 0.0], [0.1, 0.0]], dtype=np.float32)
    ref_labels = np.array(["a", "b", "c"])
    out = knn_zero_shot(reference, ref_labels, reference[:2], ["a", "b"], k=1)
    assert list(out["predictions"]) == ["a", "b"] and out["micro_f1"] == 1.0
    # ties between labels go to the nearer neighbour
    assert knn_zero_shot(reference, ref_labels, [[0.01, 0.0]], ["a"], k=2)["predictions"][0] == "a"


def test_knn_zero_shot_reports_labels_missing_from_reference():
    x, labels = _blobs()
    keep = labels[:800] != "type3"
    out = knn_zero_shot(x[:800][keep], labels[:800][keep], x[800:], labels[800:])
    assert out["missing_labels"] == ["type3"]
    assert out["per_class"].set_index("label").loc["type3", "f1"] == 0.0
    with pytest.raises(InputError):
        knn_zero_shot(x[:10], labels[:10], x[:5, :4], labels[:5])
    with pytest.raises(InputError):
        knn_zero_shot(x[:10], labels[:10], x[:5], labels[:5], metric="manhattan")
    bad = x[:5].copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError):
        knn_zero_shot(x[:10], labels[:10], bad, labels[:5])


def test_linear_probe_separates_real_from_shuffled_labels():
    x, labels = _blobs(spread=2.0)
    assert linear_probe(x[:800], labels[:800], x[800:], labels[800:])["macro_f1"] > 0.9
    shuffled = np.random.default_rng(2).permutation(labels)
    assert linear_probe(x[:800], shuffled[:800], x[800:], shuffled[800:])["macro_f1"] < 0.4


def test_reconstruction_metrics_match_sklearn_and_respect_the_mask():
    rng = np.random.default_rng(0)
    truth = rng.gamma(1.0, 1.0, (300, 20))
    pred = truth + rng.normal(0, 0.5, truth.shape)
    full = reconstruction_metrics(truth, pred)
    assert full["mse"] == pytest.approx(np.mean((truth - pred) ** 2))
    assert full["explained_variance"] == pytest.approx(
        explained_variance_score(truth, pred, multioutput="variance_weighted"))
    assert reconstruction_metrics(truth, truth)["explained_variance"] == pytest.approx(1.0)
    everything = reconstruction_metrics(truth, pred, mask=np.ones_like(truth, dtype=bool))
    assert everything["mse"] == pytest.approx(full["mse"])
    assert everything["explained_variance"] == pytest.approx(full["explained_variance"])
    mask = rng.random(truth.shape) < 0.5
    spoiled = np.where(mask, truth, 1e3)  # perfect on masked entries, terrible elsewhere
    masked = reconstruction_metrics(truth, spoiled, mask=mask)
    assert masked["mse"] == 0.0 and masked["explained_variance"] == pytest.approx(1.0)
    assert masked["n_entries"] == mask.sum()
    with pytest.raises(InputError):
        reconstruction_metrics(truth, pred[:, :5])


def test_evaluate_embeddings_table_and_summary():
    x, labels = _blobs(n=600)
    noise = np.random.default_rng(3).normal(size=(600, 8)).astype(np.float32)
    calls = []

    def fitted(seed, reference, query):
        calls.append((seed, len(reference), len(query)))
        return x[reference], x[query], (x[query], x[query] + 0.1)

    split = (np.arange(400), np.arange(400, 600), "fixed")
    table = evaluate_embeddings({"blobs": x, "noise": noise, "fitted": fitted,
                                 "pair": (x[:400], x[400:])}, labels, split, seeds=(0, 1))
    assert list(table.columns[:7]) == ["method", "seed", "knn_macro_f1", "knn_micro_f1", "linear_macro_f1",
                                       "recon_mse", "recon_explained_variance"]
    assert len(table) == 8 and calls == [(0, 400, 200), (1, 400, 200)]
    by_method = table.groupby("method").knn_macro_f1.mean()
    assert by_method["blobs"] > 0.95 and by_method["pair"] > 0.95 and by_method["noise"] < 0.5
    assert table.set_index("method").loc["fitted", "recon_mse"].iloc[0] == pytest.approx(0.01, rel=1e-4)
    summary = summarise(table)
    assert list(summary.method) == ["blobs", "noise", "fitted", "pair"]
    row = summary.set_index("method").loc["blobs"]
    assert row.n_seeds == 2 and "±" in row.knn_macro_f1 and row.knn_macro_f1_sd >= 0
    with pytest.raises(InputError):
        evaluate_embeddings({"blobs": x}, labels, (np.arange(400), np.arange(300, 600)))


def _atlas(path):
    from engine.bundle.atlas import Atlas

    return Atlas(path)


def test_evaluate_bundle_on_generated_atlas(small_bundle):
    result = evaluate_bundle(small_bundle, seeds=(0, 1), linear=False, supervised=False)
    table = result.table
    assert result.metric == "l2" and not any("no donor column" in note for note in result.notes)
    assert set(table.method) == {"X_pca", "pca_reference", "hvg"} and len(table) == 6
    assert table.split.str.startswith("donor split").all()
    assert (table.knn_macro_f1 > 0.5).all()
    atlas = _atlas(small_bundle)
    atlas.manifest = replace(atlas.manifest, roles=replace(atlas.manifest.roles, donor=None))
    fallback = evaluate_bundle(atlas, seeds=(0,), linear=False, supervised=False)
    assert fallback.table.split.str.startswith("cell split").all()
    assert any("no donor column" in note for note in fallback.notes)


def test_evaluate_bundle_refuses_clusters_and_missing_labels(small_bundle):
    atlas = _atlas(small_bundle)
    clusters = ColumnSource(source=None, method="leiden clusters on the PCA kNN graph")
    atlas.manifest = replace(atlas.manifest, harmonisation=replace(atlas.manifest.harmonisation, cell_type=clusters))
    with pytest.raises(InputError, match="clusters, not labels: annotate it first"):
        evaluate_bundle(atlas)
    atlas = _atlas(small_bundle)
    atlas.manifest = replace(atlas.manifest, roles=replace(atlas.manifest.roles, cell_type=None))
    with pytest.raises(InputError, match="annotate it first"):
        evaluate_bundle(atlas)


def test_evaluate_bundle_on_kang(kang_bundle):
    table = evaluate_bundle(kang_bundle, seeds=(0,), supervised=False).table
    assert set(table.method) == {"X_pca", "pca_reference", "hvg"}
    assert table.split.str.startswith("cell split").all()  # this file has no donor column
    assert (table.set_index("method").loc[["X_pca", "pca_reference"], "knn_macro_f1"] > 0.6).all()
