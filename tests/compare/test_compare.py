"""Tests of engine.compare.conditions: cell-level Wilcoxon DE, volcano frame, the atlas wrapper."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from scipy import stats
from vcell_testing import make_counts_adata, shared_file

import engine.compare.conditions as compare
from engine.compare.conditions import rank_genes_wilcoxon, volcano_frame
from engine.errors import EmptySelectionError, InputError, MissingKeyError

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
