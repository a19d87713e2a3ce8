"""Cell-type composition per donor and its shift between conditions (engine.compare.composition).

The first four tests and the Kang one moved from tests/compare/test_compare.py.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from vcell_testing import make_counts_adata, shared_file

from engine.compare.composition import COMPOSITION_METHOD, composition, composition_shift
from engine.errors import EmptySelectionError, InputError, MissingKeyError


@pytest.fixture(scope="module")
def adata() -> ad.AnnData:
    """Cells of three types, two conditions and four donors (composition reads only their obs)."""
    return make_counts_adata()


def test_composition_per_donor_includes_zeros(adata):
    obs = adata.obs.copy()
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


def test_composition_without_donors_is_per_condition(adata):
    long = composition(adata.obs, cell_type_key="cell_label", condition_key="condition", donor_key=None)
    assert set(long["donor"]) == {"normal", "disease"}
    assert (long["donor"] == long["condition"]).all()
    assert long["n_cells"].sum() == adata.n_obs
    with pytest.raises(MissingKeyError, match="No obs column 'donor_id'"):
        composition(adata.obs, cell_type_key="cell_label", condition_key="condition")


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


def test_per_donor_proportions_sum_to_one_and_count_every_cell(adata):
    long = composition(adata.obs, cell_type_key="cell_label", condition_key="condition", donor_key="sample")
    assert long[["condition", "donor", "cell_type"]].dtypes.eq(object).all() and long["n_cells"].dtype == np.int64
    np.testing.assert_allclose(long.groupby(["condition", "donor"])["proportion"].sum(), 1.0)
    expected = pd.crosstab(adata.obs["sample"], adata.obs["cell_label"]).stack()
    got = long.set_index(["donor", "cell_type"])["n_cells"]
    assert got.sort_index().tolist() == expected.sort_index().tolist()
    assert dict(zip(long["donor"], long["condition"])) == {"d1": "normal", "d2": "normal", "d3": "disease",
                                                            "d4": "disease"}


def test_welch_test_on_donor_shares_has_the_sign_of_the_change():
    obs = _shifted_obs()
    table = composition_shift(obs, "A", "B").table.set_index("cell_type")
    long = composition(obs)
    for cell_type, row in table.iterrows():
        share = {c: long[(long["condition"] == c) & (long["cell_type"] == cell_type)]["proportion"].to_numpy()
                 for c in ("A", "B")}
        expected = stats.ttest_ind(share["B"], share["A"], equal_var=False)
        assert row["statistic"] == pytest.approx(expected.statistic) and row["pval"] == pytest.approx(expected.pvalue)
        assert np.sign(row["statistic"]) == np.sign(row["log2_ratio"]) == np.sign(share["B"].mean() - share["A"].mean())
    assert table.loc["common1", "statistic"] < 0 and table.loc["common2", "statistic"] < 0  # they make room for 'rare'
    # A and B swapped: the same test, the other sign
    swapped = composition_shift(obs, "B", "A").table.set_index("cell_type")
    np.testing.assert_allclose(swapped["statistic"], -table.loc[swapped.index, "statistic"])
    np.testing.assert_allclose(swapped["pval"], table.loc[swapped.index, "pval"])
    assert swapped.index[0] != "rare" and swapped.index[-1] == "rare"
    assert composition_shift(obs, "A", "B").method == COMPOSITION_METHOD


def test_a_share_without_donor_to_donor_variation_is_not_tested():
    rows = [(c, f"{c}{d}", t) for c in "AB" for d in range(3) for t in ["x"] * 3 + ["y"]]  # every donor 75% x
    obs = pd.DataFrame(rows, columns=["disease", "donor_id", "cell_type"])
    table = composition_shift(obs, "A", "B").table
    assert table["pval"].isna().all() and table["statistic"].isna().all()
    assert table["note"].str.startswith("No donor-to-donor variation").all()
    assert table["log2_ratio"].abs().max() == 0


def test_missing_columns_and_unlabelled_cells_are_refused_with_the_valid_names(adata):
    with pytest.raises(MissingKeyError, match=r"No obs column 'samples' for the donor: pass one of cell_label, "
                                              r"condition, sample\. Did you mean: sample\?"):
        composition(adata.obs, cell_type_key="cell_label", condition_key="condition", donor_key="samples")
    with pytest.raises(MissingKeyError, match="No obs column 'cell_type' for the cell type"):
        composition_shift(adata.obs, "normal", "disease", condition_key="condition", donor_key="sample")
    obs = adata.obs.assign(cell_label=pd.Categorical([None] * adata.n_obs, categories=["T cell"]))
    with pytest.raises(EmptySelectionError, match="No cell has both a condition and a cell type"):
        composition(obs, cell_type_key="cell_label", condition_key="condition", donor_key="sample")
