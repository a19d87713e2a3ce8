"""Reconstruction of hidden genes on held-out cells: hidden entries, imputation baselines, a trained MAE."""

import numpy as np
import pandas as pd
import pytest
import torch

from engine.cli import main
from engine.errors import InputError
from engine.evaluate.suite import evaluate_bundle, load_evaluation
from engine.evaluate.reconstruction import (
    gene_mean_imputation,
    hidden_entries,
    knn_imputation,
    masked_reconstruction,
    reconstruction_metrics,
)


def test_hidden_entries_are_seeded_per_cell_and_gene_and_hide_the_rate():
    cells, genes = np.arange(400), np.arange(300)
    hidden = hidden_entries(cells, genes, 0.5, seed=0)
    assert hidden.shape == (400, 300) and abs(hidden.mean() - 0.5) < 0.01
    assert 0.4 < hidden.mean(axis=1).min() and hidden.mean(axis=1).max() < 0.6  # about half of every cell
    # the same (cell, gene) is hidden whatever the order or subset asked for: models with other genes agree
    np.testing.assert_array_equal(hidden_entries(cells[::-1], genes[50:10:-3], 0.5, seed=0), hidden[::-1, 50:10:-3])
    other = hidden_entries(cells, genes, 0.5, seed=1)
    assert 0.4 < (hidden == other).mean() < 0.6  # another seed hides independent entries
    assert abs(hidden_entries(cells, genes, 0.2, seed=0).mean() - 0.2) < 0.01
    with pytest.raises(InputError, match="between 0 and 1"):
        hidden_entries(cells, genes, 1.0)


def _programmes(n=600, genes=40, seed=0):
    """Cells of three types whose genes move together: hidden genes are predictable from visible ones."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 3, n)
    profiles = rng.gamma(2.0, 1.0, (3, genes))
    return np.log1p(rng.poisson(profiles[types] * 3)).astype(np.float32)


def test_knn_imputation_uses_visible_genes_and_beats_the_gene_mean():
    x = _programmes()
    reference, query = np.arange(400), np.arange(400, 600)
    hidden = hidden_entries(query, np.arange(x.shape[1]), 0.5, seed=0)
    knn = reconstruction_metrics(x[query], knn_imputation(x[reference], x[query], ~hidden), hidden)
    mean = reconstruction_metrics(x[query], gene_mean_imputation(x[reference], len(query)), hidden)
    assert abs(mean["explained_variance"]) < 0.05 and knn["explained_variance"] > 0.3
    assert knn["mse"] < mean["mse"]
    # neighbours chosen on hidden values would be cheating: garbling the hidden entries changes nothing
    garbled = np.where(hidden, 100.0, x[query])
    np.testing.assert_allclose(knn_imputation(x[reference], garbled, ~hidden), knn_imputation(x[reference], x[query],
                                                                                               ~hidden))


class _Echo(torch.nn.Module):
    """A 'model' that returns its input: it can only reconstruct what it was shown."""

    def reconstruct(self, x, mask=None):
        return x.masked_fill(mask, 0.0) if mask is not None else x


def test_masked_reconstruction_hides_the_scored_entries_from_the_model():
    x = _programmes(genes=30)
    missing = np.zeros(30, dtype=bool)
    missing[:5] = True  # genes the atlas lacks: never scored
    x[:, :5] = 0.0
    scores = masked_reconstruction(_Echo(), x, missing, np.arange(400), np.arange(400, 600), np.arange(600),
                                   np.arange(30), seed=3)
    assert set(scores) == {"model", "mean", "knn"}
    n_hidden = int(hidden_entries(np.arange(400, 600), np.arange(30), 0.5, seed=3)[:, 5:].sum())
    assert all(s["n_entries"] == n_hidden for s in scores.values())  # the same entries for all
    # an echo sees only zeros where it is scored: it explains nothing (a leak would give 1) and misses the level
    assert abs(scores["model"]["explained_variance"]) < 1e-9 and scores["model"]["mse"] > scores["mean"]["mse"]
    assert scores["knn"]["explained_variance"] > scores["mean"]["explained_variance"]


def _untrained_copy(checkpoint, out):
    """The same MAE architecture and genes with fresh random weights: a model that learned nothing."""
    from engine.models.serialize import load_model, save_model
    from engine.models.ssl import build_model

    model, genes = load_model(checkpoint)
    torch.manual_seed(0)
    config = {k: v for k, v in model.config.items() if k not in ("method", "n_genes")}
    return save_model(out, build_model(model.config["method"], len(genes), **config), genes)


def test_evaluate_bundle_scores_a_trained_mae_against_the_baselines(mae_bundle, tmp_path):
    model = mae_bundle / "model"
    table = evaluate_bundle(mae_bundle, embeddings=("X_pca",), seeds=(0, 1), supervised=False, linear=False,
                            reconstruct={"mae": model, "untrained": _untrained_copy(model, tmp_path / "untrained")}).table
    rows = table.set_index(["method", "seed"])
    recon, untrained = rows.loc["mae"], rows.loc["untrained"]
    assert np.isfinite(recon[["recon_mse", "recon_explained_variance"]].to_numpy()).all()
    assert (recon.recon_mean_explained_variance.abs() < 0.01).all()  # the mean explains ~nothing of a gene
    assert (recon.recon_mean_mse == untrained.recon_mean_mse).all()  # the same hidden entries for both models
    # even 2 epochs teach the MAE to predict hidden genes from visible ones; random weights explain nothing
    assert (untrained.recon_explained_variance.abs() < 0.01).all()
    assert (recon.recon_explained_variance > untrained.recon_explained_variance + 0.015).all()
    assert (recon.recon_knn_explained_variance > 0.1).all()  # kNN imputation is a strong baseline
    assert rows.loc["X_pca", "recon_mse"].isna().all() and not np.isnan(recon.knn_macro_f1).any()
    # the CLI exposes it and writes the columns to summary.csv
    assert main(["evaluate", str(mae_bundle), "--embeddings", "X_pca", "--seeds", "1", "--no-supervised",
                 "--reconstruct", f"mae={model}", "--hidden-fraction", "0.3"]) == 0
    summary, _ = load_evaluation(mae_bundle / "evaluation")
    mae = summary.set_index("method").loc["mae"]
    for column in ("recon_mse", "recon_explained_variance", "recon_mean_explained_variance",
                   "recon_knn_explained_variance"):
        assert np.isfinite(mae[f"{column}_mean"])
    assert pd.isna(summary.set_index("method").loc["hvg", "recon_mse_mean"])
