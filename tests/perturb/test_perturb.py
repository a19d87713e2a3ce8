"""Tests of engine.perturb.spec: the spec, the clamp and the no-change / ridge co-expression baselines."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

from vcell_testing import make_counts_adata, shared_file
from engine.compare.conditions import rank_genes_wilcoxon
from engine.errors import InputError
from engine.perturb.spec import MAX_GENES, TABLE_COLUMNS, PerturbationSpec, clamp_targets, describe_population
from engine.perturb.coexpression import no_change_baseline, ridge_perturbation


def linear_network(n: int = 800, n_unrelated: int = 36, seed: int = 0):
    """Gene T drives A (+0.6 per log unit) and B (-0.6); S is silent; U* are unrelated.

    Returns X (cells x genes, log-like scale), labels and the true mean shift of A and B
    under a knock-out of T (T set to 0 in every cell).
    """
    rng = np.random.default_rng(seed)
    t = np.log1p(rng.poisson(4, n)).astype(np.float64)
    X = np.abs(rng.normal(1.0, 0.3, (n, 4 + n_unrelated)))
    X[:, 0] = t
    X[:, 1] = 0.5 + 0.6 * t + rng.normal(0, 0.2, n)
    X[:, 2] = 3.0 - 0.6 * t + rng.normal(0, 0.2, n)
    X[:, 3] = 0.0
    labels = ["T", "A", "B", "S"] + [f"U{i}" for i in range(n_unrelated)]
    return X, labels, {"A": -0.6 * t.mean(), "B": 0.6 * t.mean()}


# ----------------------------------------------------------------------------- spec and clamp
def test_spec_defaults_and_aliases():
    assert PerturbationSpec(["STAT1"], "kd").strength == 0.5
    assert PerturbationSpec(["STAT1"], "OE").strength == 4.0 and PerturbationSpec(["STAT1"], "OE").mode == "oe"
    spec = PerturbationSpec("STAT1", "knockout", strength=0.3)
    assert spec.mode == "ko" and spec.genes == ["STAT1"] and spec.strength == 0.0
    assert spec.describe() == "knock-out of STAT1"
    assert PerturbationSpec(["A", "B"], "kd", 0.25).describe() == "knock-down to 25% of A, B"


@pytest.mark.parametrize("kwargs, message", [
    (dict(genes=["STAT1"], mode="delete"), "Unknown perturbation mode 'delete'"),
    (dict(genes=[], mode="ko"), "No gene to perturb"),
    (dict(genes=[f"G{i}" for i in range(MAX_GENES + 1)], mode="ko"), f"perturb at most {MAX_GENES}"),
    (dict(genes=["STAT1", "stat1"], mode="ko"), "stat1 is listed twice"),
    (dict(genes=["STAT1"], mode="kd", strength=1.5), "not a remaining fraction"),
    (dict(genes=["STAT1"], mode="oe", strength=0.5), "not a multiple above 1"),
])
def test_spec_rejects_bad_input(kwargs, message):
    with pytest.raises(InputError, match=message):
        PerturbationSpec(**kwargs)


def test_clamp_targets_per_mode():
    x = np.log1p(np.array([[0.0], [1.0], [4.0], [9.0], [100.0]]))
    np.testing.assert_array_equal(clamp_targets(x, PerturbationSpec(["g"], "ko")), 0.0)
    kd = clamp_targets(x, PerturbationSpec(["g"], "kd", 0.5))
    np.testing.assert_allclose(np.expm1(kd), np.expm1(x) * 0.5)
    oe = clamp_targets(x, PerturbationSpec(["g"], "oe", 2.0), cap=np.array([10.0]), level=np.array([3.0]))
    # cells below level 3 start from it (0, 1 -> 6); 4 -> 8; 9 -> 18 capped at 10; 100 is above the cap: kept
    np.testing.assert_allclose(np.expm1(oe).ravel(), [6.0, 6.0, 8.0, 10.0, 100.0])
    assert np.all(oe >= x)


# ----------------------------------------------------------------------------- ridge baseline
def test_ridge_knockout_recovers_a_linear_network():
    X, labels, truth = linear_network()
    result = ridge_perturbation(sp.csr_matrix(X), [0], PerturbationSpec(["T"], "ko"), gene_labels=labels,
                                n_boot=100)
    table = result.table
    assert list(table.columns) == TABLE_COLUMNS
    assert result.method == "ridge co-expression baseline" and result.bootstrap == "cells"
    assert result.spec == "knock-out of T" and result.n_cells == X.shape[0]
    assert [w.split(" moves it")[0] for w in result.warnings] == ["Knocking out T"]  # beyond the fitted spread
    assert np.all(np.diff(table["shift"].abs()) <= 1e-12)
    rows = table.set_index("gene")
    assert rows.loc["T", "is_target"] and rows["is_target"].sum() == 1
    assert rows.loc["T", "shift"] == pytest.approx(-X[:, 0].mean())
    assert rows.loc["T", "mean_perturbed"] == pytest.approx(0.0, abs=1e-12)
    for gene in ("A", "B"):
        row = rows.loc[gene]
        assert row["shift"] == pytest.approx(truth[gene], rel=0.1)
        assert row["ci_low"] <= truth[gene] <= row["ci_high"]
    unrelated = rows.loc[[g for g in labels if g.startswith("U")]]
    assert unrelated["shift"].abs().max() < 0.15 < abs(truth["A"]) / 5
    covered = (unrelated["ci_low"] <= 0) & (unrelated["ci_high"] >= 0)
    assert covered.mean() >= 0.8
    assert rows.loc["S", "shift"] == 0.0
    np.testing.assert_allclose(rows["mean_control"], X.mean(axis=0)[[labels.index(g) for g in rows.index]])


def test_ridge_sparse_and_dense_agree_and_are_reproducible():
    X, labels, _ = linear_network(n=300)
    spec = PerturbationSpec(["T"], "kd", 0.3)
    dense = ridge_perturbation(X, [0], spec, gene_labels=labels, n_boot=20, seed=3).table
    sparse = ridge_perturbation(sp.csr_matrix(X), [0], spec, gene_labels=labels, n_boot=20, seed=3).table
    np.testing.assert_allclose(dense[["shift", "ci_low", "ci_high"]], sparse[["shift", "ci_low", "ci_high"]])
    rows = dense.set_index("gene")
    assert rows.loc["A", "shift"] < 0 < rows.loc["B", "shift"]
    # knock-down to 30% moves less than a knock-out
    ko = ridge_perturbation(X, [0], PerturbationSpec(["T"], "ko"), gene_labels=labels, n_boot=0)
    assert ko.bootstrap == "none"
    ko = ko.table.set_index("gene")
    assert abs(rows.loc["A", "shift"]) < abs(ko.loc["A", "shift"])
    assert ko.loc["A", "ci_low"] == ko.loc["A", "shift"] == ko.loc["A", "ci_high"]


def test_ridge_overexpression_moves_the_other_way():
    X, labels, _ = linear_network()
    table = ridge_perturbation(X, [0], PerturbationSpec(["T"], "oe", 2.0), gene_labels=labels, n_boot=10).table
    rows = table.set_index("gene")
    assert rows.loc["T", "shift"] > 0 and rows.loc["A", "shift"] > 0 > rows.loc["B", "shift"]
    assert rows.loc["A", "mean_perturbed"] <= X[:, 1].max() + 1e-9  # bounded to the observed range


def test_ridge_two_targets():
    rng = np.random.default_rng(1)
    n = 600
    t1, t2 = np.log1p(rng.poisson(3, n)), np.log1p(rng.poisson(3, n))
    X = np.column_stack([t1, t2, 1 + 0.5 * t1 + rng.normal(0, 0.1, n), 2 - 0.5 * t2 + rng.normal(0, 0.1, n),
                         np.abs(rng.normal(1, 0.3, n))])
    table = ridge_perturbation(X, [0, 1], PerturbationSpec(["T1", "T2"], "ko"),
                               gene_labels=["T1", "T2", "A", "B", "U"], n_boot=20).table.set_index("gene")
    assert table["is_target"].sum() == 2
    assert table.loc["A", "shift"] == pytest.approx(-0.5 * t1.mean(), rel=0.1)
    assert table.loc["B", "shift"] == pytest.approx(0.5 * t2.mean(), rel=0.1)
    assert abs(table.loc["U", "shift"]) < 0.1


def test_silent_gene_knockout_predicts_nothing_and_warns():
    X, labels, _ = linear_network()
    result = ridge_perturbation(X, [3], PerturbationSpec(["S"], "ko"), gene_labels=labels, n_boot=10)
    assert result.table["shift"].abs().max() == 0.0
    assert result.warnings == ["S is expressed in 0 of 800 cells: knocking it out changes nothing in this baseline."]
    with pytest.raises(InputError, match=r"^S is expressed in 0 of 800 cells: over-expression .* pick a population"):
        ridge_perturbation(X, [3], PerturbationSpec(["S"], "oe"), gene_labels=labels)


def test_rarely_expressed_and_extrapolation_warnings():
    X, labels, _ = linear_network()
    X[:, 3] = 0.0
    X[:4, 3] = 1.0  # 4 of 800 cells
    rare = ridge_perturbation(X, [3], PerturbationSpec(["S"], "kd"), gene_labels=labels, n_boot=0)
    assert any(w.startswith("S is expressed in only 4 of 800 cells") for w in rare.warnings)
    assert np.isfinite(rare.table["shift"]).all()
    X[:, 4] = 5.0 + np.random.default_rng(0).normal(0, 0.1, X.shape[0])  # high, narrow
    far = ridge_perturbation(X, [4], PerturbationSpec([labels[4]], "ko"), gene_labels=labels, n_boot=0)
    assert any("standard deviations from its mean" in w for w in far.warnings)
    assert (far.table["mean_perturbed"] >= -1e-12).all()  # never below zero


def test_donor_bootstrap_and_gene_bound():
    X, labels, truth = linear_network()
    donors = np.repeat(np.arange(8), 100)
    result = ridge_perturbation(X, [0], PerturbationSpec(["T"], "ko"), gene_labels=labels, donors=donors,
                                n_boot=50, max_genes=5)
    assert result.bootstrap == "donors"
    table = result.table
    assert len(table) == 5 and "T" in set(table["gene"])  # 5 most variable genes include T, A, B
    assert {"A", "B"} <= set(table["gene"])
    a = table.set_index("gene").loc["A"]
    assert a["ci_low"] <= truth["A"] <= a["ci_high"]
    with pytest.raises(InputError, match="donor labels for 800 cells"):
        ridge_perturbation(X, [0], PerturbationSpec(["T"], "ko"), donors=donors[:10])


@pytest.mark.parametrize("genes, targets, kwargs, message", [
    (["T"], [0, 1], {}, "2 target columns for 1 genes"),
    (["T"], [99], {}, "outside 0..39"),
    (["T", "A"], [0, 0], {}, "listed twice"),
    (["T"], [0], {"gene_labels": ["x"]}, "1 gene labels for 40 genes"),
])
def test_ridge_rejects_bad_input(genes, targets, kwargs, message):
    X, _, _ = linear_network()
    with pytest.raises(InputError, match=message):
        ridge_perturbation(X, targets, PerturbationSpec(genes, "ko"), **kwargs)
    with pytest.raises(InputError, match="no cells"):
        ridge_perturbation(X[:0], [0], PerturbationSpec(["T"], "ko"))


def test_no_change_baseline_moves_only_targets():
    X, labels, _ = linear_network()
    result = no_change_baseline(X, [0], PerturbationSpec(["T"], "ko"), gene_labels=labels)
    table = result.table
    assert list(table.columns) == TABLE_COLUMNS and result.method == "no-change baseline"
    assert result.warnings == [] and result.n_cells == X.shape[0] and result.bootstrap == "none"
    rows = table.set_index("gene")
    assert rows.loc["T", "shift"] == pytest.approx(-X[:, 0].mean())
    assert (rows.drop(index="T")[["shift", "ci_low", "ci_high"]] == 0).all().all()


def test_ridge_on_counts_adata_runs_with_progress():
    adata = make_counts_adata()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    seen = []
    table = ridge_perturbation(adata.X, [0], PerturbationSpec(["G0"], "ko"), gene_labels=list(adata.var_names),
                               n_boot=20, progress=lambda f, m: seen.append(f)).table
    assert len(table) == adata.n_vars and np.isfinite(table[["shift", "ci_low", "ci_high"]]).all().all()
    assert (table["ci_low"] <= table["shift"] + 1e-12).all() and (table["shift"] <= table["ci_high"] + 1e-12).all()
    assert seen[-1] == 1.0 and seen == sorted(seen)


def test_describe_population():
    assert describe_population("NK cell", "Covid_Mild") == "'NK cell' cells in 'Covid_Mild'"
    assert describe_population(None, None) == "all cells"


# ----------------------------------------------------------------------------- real data
@pytest.mark.shared
def test_kang_isg15_knockout_in_stimulated_monocytes():
    adata = ad.read_h5ad(shared_file("kang_ifnb_1k.h5ad"))
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    labels = list(adata.var_names)
    stim = (adata.obs["stim"] == "STIM").to_numpy()
    population = stim & (adata.obs["seurat_annotations"] == "CD14 Mono").to_numpy()
    table = ridge_perturbation(adata.X[population], [labels.index("ISG15")], PerturbationSpec(["ISG15"], "ko"),
                               gene_labels=labels, n_boot=30).table
    assert np.isfinite(table[["mean_control", "shift", "ci_low", "ci_high"]]).all().all()
    assert table["gene"].iloc[0] == "ISG15" and table["is_target"].iloc[0]
    # interferon-response genes (the 200 most STIM-up genes) dominate the predicted shifts
    interferon = set(rank_genes_wilcoxon(adata.X[~stim], adata.X[stim], labels).table["gene"].head(200))
    top = table[~table["is_target"]].head(20)
    assert sum(g in interferon for g in top["gene"]) >= 8
    assert {"CXCL10", "MX1"} <= set(top["gene"])
    assert (top.set_index("gene").loc[["CXCL10", "MX1"], "shift"] < 0).all()
