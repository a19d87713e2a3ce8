"""Tests of engine.compare.conditions: composition, cell-level Wilcoxon DE, volcano frame."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from scipy import stats

import engine.compare.conditions as compare
from engine.compare.conditions import rank_genes_wilcoxon, volcano_frame
from engine.compare.composition import composition, composition_shift
from engine.errors import EmptySelectionError, InputError, MissingKeyError
from vcell_testing import make_counts_adata, shared_file

ROLES = {"cell_type": "cell_label", "condition": "condition", "donor": "sample", "batch": None}


@pytest.fixture(scope="module")
def lognorm() -> ad.AnnData:
    adata = make_counts_adata()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


def _groups(adata: ad.AnnData, key: str, a: str, b: str) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    values = adata.obs[key].astype(str).to_numpy()
    return adata.X[values == a], adata.X[values == b]


def _read_lognorm(name: str) -> ad.AnnData:
    adata = ad.read_h5ad(shared_file(name))
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


# ----------------------------------------------------------------------------- composition
def test_composition_per_donor_includes_zeros(lognorm):
    obs = lognorm.obs.copy()
    obs["cell_label"] = obs["cell_label"].astype(str)
    obs.loc[obs["sample"] == "d1", "cell_label"] = "T cell"  # d1 has only T cells
    long = composition(obs, cell_type_key="cell_label", condition_key="condition", donor_key="sample")
    assert list(long.columns) == ["condition", "donor", "cell_type", "n_cells", "proportion"]
    assert len(long) == 4 * 3  # every donor x every cell type
    sums = long.groupby("donor")["proportion"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0)
    d1 = long[long["donor"] == "d1"].set_index("cell_type")
    assert d1.loc["B cell", "n_cells"] == 0 and d1.loc["T cell", "proportion"] == 1.0
    assert d1["n_cells"].sum() == (obs["sample"] == "d1").sum()


def test_composition_without_donors_is_per_condition(lognorm):
    long = composition(lognorm.obs, cell_type_key="cell_label", condition_key="condition", donor_key=None)
    assert set(long["donor"]) == {"normal", "disease"}
    assert (long["donor"] == long["condition"]).all()
    assert long["n_cells"].sum() == lognorm.n_obs
    with pytest.raises(MissingKeyError, match="No obs column 'donor_id'"):
        composition(lognorm.obs, cell_type_key="cell_label", condition_key="condition")


def _shifted_obs(n_donors: int = 4, seed: int = 0) -> pd.DataFrame:
    """Donors of two conditions; 'rare' is ~10% of cells in A and ~40% in B."""
    rng = np.random.default_rng(seed)
    rows = []
    for condition, share in (("A", 0.1), ("B", 0.4)):
        for d in range(n_donors):
            n = 200
            p = np.clip(share + rng.normal(0, 0.02), 0.01, 0.9)
            types = np.where(rng.random(n) < p, "rare", rng.choice(["common1", "common2"], n))
            rows += [(condition, f"{condition}{d}", t) for t in types]
    return pd.DataFrame(rows, columns=["disease", "donor_id", "cell_type"]).astype("category")


def test_composition_shift_detects_a_donor_level_change():
    obs = _shifted_obs()
    result = composition_shift(obs, "A", "B")
    table = result.table
    expected = ["cell_type", "n_cells_a", "n_cells_b", "prop_a", "prop_b", "mean_prop_a", "mean_prop_b",
                "log2_ratio", "n_donors_a", "n_donors_b", "statistic", "pval", "padj", "note"]
    assert list(table.columns) == expected
    assert result.method == "welch t-test on per-donor proportions" and (result.a, result.b) == ("A", "B")
    rare = table.set_index("cell_type").loc["rare"]
    assert table["cell_type"].iloc[0] == "rare"  # largest increase first
    assert rare["n_donors_a"] == 4 and rare["n_donors_b"] == 4
    assert 0.05 < rare["mean_prop_a"] < 0.15 and 0.35 < rare["mean_prop_b"] < 0.45
    assert rare["log2_ratio"] > 1.5 and rare["statistic"] > 0
    assert rare["pval"] < 1e-3 and rare["padj"] < 0.01 and rare["note"] == ""
    assert (table["n_cells_a"].sum(), table["n_cells_b"].sum()) == (800, 800)


def test_composition_shift_says_when_there_are_too_few_donors():
    obs = _shifted_obs()
    one = obs[obs["donor_id"].astype(str).isin(["A0", "B0", "B1"])]
    table = composition_shift(one, "A", "B").table
    assert table["pval"].isna().all() and table["padj"].isna().all()
    assert table["note"].str.startswith("Too few donors to test: 1 in 'A' and 2 in 'B'").all()
    pooled = composition_shift(obs, "A", "B", donor_key=None).table
    assert pooled["pval"].isna().all() and pooled["note"].str.contains("No donor column").all()
    with pytest.raises(InputError, match="Both conditions are 'A'"):
        composition_shift(obs, "A", "A")
    with pytest.raises(InputError, match="Unknown condition 'C'"):
        composition_shift(obs, "A", "C")


# ----------------------------------------------------------------------------- Wilcoxon
def test_wilcoxon_matches_scanpy(lognorm):
    X_a, X_b = _groups(lognorm, "condition", "normal", "disease")
    result = rank_genes_wilcoxon(X_a, X_b, list(lognorm.var_names))
    de = result.table
    adata = lognorm.copy()
    sc.tl.rank_genes_groups(adata, "condition", groups=["disease"], reference="normal",
                            method="wilcoxon", tie_correct=True)
    ref = sc.get.rank_genes_groups_df(adata, "disease").set_index("names")
    ours = de.set_index("gene").loc[ref.index]
    np.testing.assert_allclose(ours["score"], ref["scores"], atol=1e-5)
    np.testing.assert_allclose(ours["pval"], ref["pvals"], rtol=1e-4, atol=1e-300)
    np.testing.assert_allclose(ours["padj"], ref["pvals_adj"], rtol=1e-4, atol=1e-300)
    assert result.method == "wilcoxon (cell-level, exploratory)"
    assert (result.n_cells_a, result.n_cells_b) == (X_a.shape[0], X_b.shape[0]) and result.pseudocount == 0.1


def test_wilcoxon_table_contents(lognorm):
    X_a, X_b = _groups(lognorm, "condition", "normal", "disease")
    de = rank_genes_wilcoxon(X_a, X_b, list(lognorm.var_names)).table
    assert list(de.columns) == ["gene", "log2fc", "mean_a", "mean_b", "pct_a", "pct_b", "score", "pval", "padj"]
    assert len(de) == lognorm.n_vars and np.all(np.diff(de["score"]) <= 0)
    assert set(de["gene"].head(10)) == {f"G{i}" for i in range(10)}  # the planted disease genes
    top = de.set_index("gene").loc[[f"G{i}" for i in range(10)]]
    assert (top["log2fc"] > 1.0).all() and (top["padj"] < 1e-6).all()
    g = de.set_index("gene").loc["G3"]
    column = list(lognorm.var_names).index("G3")
    a = X_a[:, column].toarray().ravel()
    b = X_b[:, column].toarray().ravel()
    assert g["mean_a"] == pytest.approx(a.mean()) and g["pct_b"] == pytest.approx((b > 0).mean())
    assert g["log2fc"] == pytest.approx(np.log2((np.expm1(b).mean() + 0.1) / (np.expm1(a).mean() + 0.1)), rel=1e-5)


def test_wilcoxon_blocks_and_dense_input_agree(lognorm, monkeypatch):
    X_a, X_b = _groups(lognorm, "condition", "normal", "disease")
    labels = list(lognorm.var_names)
    whole = rank_genes_wilcoxon(X_a, X_b, labels).table.set_index("gene")
    monkeypatch.setattr(compare, "_BLOCK_NNZ", 500)  # force many small blocks
    seen = []
    blocked = rank_genes_wilcoxon(X_a, X_b, labels, progress=lambda f, m: seen.append(f)).table.set_index("gene")
    dense = rank_genes_wilcoxon(X_a.toarray(), X_b.toarray(), labels).table.set_index("gene")
    for other in (blocked, dense):
        np.testing.assert_allclose(other.loc[whole.index, "score"], whole["score"], rtol=1e-12)
    assert len(seen) > 20 and seen[-1] == 1.0 and all(0 <= f <= 1 for f in seen)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wilcoxon_matches_scipy_mannwhitneyu(dtype):
    rng = np.random.default_rng(2)
    X = rng.gamma(1.0, 1.0, (150, 12)) * (rng.random((150, 12)) < 0.6)  # continuous, many zeros
    X[:, 3] = np.round(X[:, 3])  # heavy ties
    X[70:, 5] += 0.5
    X = X.astype(dtype)
    de = rank_genes_wilcoxon(sp.csr_matrix(X[:70]), sp.csr_matrix(X[70:]), [f"g{i}" for i in range(12)])
    de = de.table.set_index("gene")
    for j in range(12):
        ref = stats.mannwhitneyu(X[70:, j], X[:70, j], use_continuity=False, method="asymptotic")
        assert de.loc[f"g{j}", "pval"] == pytest.approx(ref.pvalue, rel=1e-6)
    assert de.loc["g5", "score"] > 4


def test_wilcoxon_constant_gene_and_errors(lognorm):
    X_a, X_b = _groups(lognorm, "condition", "normal", "disease")
    X_a, X_b = X_a.tolil(), X_b.tolil()
    X_a[:, 0] = 0
    X_b[:, 0] = 0
    de = rank_genes_wilcoxon(X_a.tocsr(), X_b.tocsr(), list(lognorm.var_names)).table.set_index("gene")
    assert de.loc["G0", "score"] == 0 and de.loc["G0", "pval"] == 1 and de.loc["G0", "log2fc"] == 0
    with pytest.raises(EmptySelectionError, match="Group A has no cells"):
        rank_genes_wilcoxon(X_a[:0], X_b, list(lognorm.var_names))
    with pytest.raises(InputError, match="gene labels"):
        rank_genes_wilcoxon(X_a, X_b, ["x"])
    with pytest.raises(InputError, match="negative values"):
        rank_genes_wilcoxon(-X_a.tocsr(), X_b, list(lognorm.var_names))
    bad = X_b.tocsr().copy()
    bad.data[0] = np.nan
    with pytest.raises(InputError, match="NaN or infinite"):
        rank_genes_wilcoxon(X_a, bad, list(lognorm.var_names))


def test_volcano_frame_categories():
    de = pd.DataFrame({"gene": list("abcde"), "log2fc": [2.0, -3.0, 0.5, 2.0, 1.0],
                       "padj": [1e-5, 0.0, 1e-9, 0.2, 0.01]})
    volcano = volcano_frame(de)
    out = volcano.table
    assert (volcano.lfc_threshold, volcano.padj_threshold) == (1.0, 0.05)
    assert list(out["category"]) == ["up", "down", "n.s.", "n.s.", "up"]
    np.testing.assert_allclose(out["neg_log10_padj"], [5, 300, 9, -np.log10(0.2), 2])
    assert "category" not in de.columns
    with pytest.raises(MissingKeyError, match="no 'padj' column"):
        volcano_frame(de.drop(columns="padj"))


# ----------------------------------------------------------------------------- real data
@pytest.mark.shared
def test_covid_critical_vs_healthy_interferon_genes():
    adata = _read_lognorm("covid_pbmc_combat_subset.h5ad")
    X_a, X_b = _groups(adata, "condition", "Healthy", "Covid_Critical")
    de = rank_genes_wilcoxon(X_a, X_b, list(adata.var_names)).table
    de["rank"] = np.arange(len(de))
    genes = de.set_index("gene").loc[["IFI27", "ISG15", "IFI6"]]
    assert (genes["log2fc"] > 0).all() and (genes["padj"] < 0.05).all()
    # over all cells (mixed cell types, 2 donors each), ISGs rank 108 / 601 / 178 of 25,456 genes
    assert (genes["rank"] < 1000).all()
    assert genes.loc["IFI27", "log2fc"] > 3
    # the earlier, milder disease shows the interferon response at the very top
    X_m = _groups(adata, "condition", "Healthy", "Covid_Mild")[1]
    mild = rank_genes_wilcoxon(X_a, X_m, list(adata.var_names)).table
    assert {"IFI6", "IFI44L", "MX1", "ISG15", "IFI27"} <= set(mild["gene"].head(50))


@pytest.mark.shared
def test_kang_stim_vs_ctrl_interferon_genes():
    adata = _read_lognorm("kang_ifnb_1k.h5ad")
    X_a, X_b = _groups(adata, "stim", "CTRL", "STIM")
    de = rank_genes_wilcoxon(X_a, X_b, list(adata.var_names)).table
    genes = de.set_index("gene").loc[["ISG15", "IFIT1", "MX1"]]
    assert (genes["log2fc"] > 3).all() and (genes["padj"] < 1e-50).all()
    assert {"ISG15", "IFIT1", "MX1"} <= set(de["gene"].head(10))
    volcano = volcano_frame(de).table
    assert set(volcano.set_index("gene").loc[["ISG15", "IFIT1", "MX1"], "category"]) == {"up"}


@pytest.mark.shared
def test_kang_donors_composition():
    obs = ad.read_h5ad(shared_file("kang_ifnb_donors.h5ad"), backed="r").obs
    keys = dict(cell_type_key="cluster_id", condition_key="group_id", donor_key="sample_id")
    long = composition(obs, **keys)
    assert len(long) == 4 * 5
    np.testing.assert_allclose(long.groupby("donor")["proportion"].sum(), 1.0)
    table = composition_shift(obs, "ctrl", "stim", **keys).table
    assert len(table) == 5 and (table["n_donors_a"] == 2).all() and (table["n_donors_b"] == 2).all()
    assert table["pval"].between(0, 1).all() and (table["note"] == "").all()
    assert table["n_cells_a"].sum() == 750 and table["n_cells_b"].sum() == 806


# ----------------------------------------------------------------------------- atlas wrapper
def test_compare_conditions_methods(small_bundle):
    from engine.bundle.atlas import read_atlas
    from engine.compare.pseudobulk import PSEUDOBULK_METHOD

    atlas = read_atlas(small_bundle)
    with pytest.raises(InputError, match="Unknown DE method 'deseq': use one of wilcoxon, pseudobulk"):
        compare.compare_conditions(atlas, "normal", "disease A", method="deseq")
    with pytest.raises(InputError, match="within one cell type: pick a cell type"):
        compare.compare_conditions(atlas, "normal", "disease A", method="pseudobulk")
    result = compare.compare_conditions(atlas, "normal", "disease A", cell_type="CD14+ Monocyte", method="pseudobulk")
    assert result.method == PSEUDOBULK_METHOD and not result.subsampled and result.composition is not None
    assert result.composition_method == "welch t-test on per-donor proportions" and not result.cached
    assert {"log2fc", "padj", "pct_a", "pct_b"} <= set(result.de.columns)
    assert any(note.startswith("Tested ") for note in result.warnings)
    wilcoxon = compare.compare_conditions(atlas, "normal", "disease A", cell_type="CD14+ Monocyte")
    assert wilcoxon.method == compare.WILCOXON_METHOD
