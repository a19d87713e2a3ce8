"""Tests of engine.perturb.conditions: the virtual cell across conditions (its baselines: test_perturb_baselines)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from engine.bundle.atlas import Atlas
from engine.errors import EmptySelectionError, GeneNotFoundError, InputError
from engine.perturb.conditions import (compare_conditions_effect, condition_populations, matched_controls,
                                       permutation_null, prediction_context, reversal_score)
from vcell_testing import cell_type_in_both

A, B = "CTRL", "STIM"


@pytest.fixture(scope="module")
def kang(mae_bundle):
    """The learned Kang bundle, a cell type with >= 20 cells in both conditions, and a gene silent in it."""
    atlas = Atlas(mae_bundle)
    cell_type = cell_type_in_both(atlas, A, B)
    ctx = prediction_context(atlas)
    cells_a, cells_b = condition_populations(atlas, cell_type, A, B, None, 0)
    expressed = (ctx.read(atlas, np.r_[cells_a, cells_b])[:, ctx.present] > 0).any(axis=0)
    silent = [ctx.labels[g] for g in ctx.present[~expressed]]
    return atlas, cell_type, silent


# ----------------------------------------------------------------------------- permutation null
def test_permutation_null_is_exact_for_few_units_and_detects_a_difference():
    rng = np.random.default_rng(0)
    effects = np.column_stack([np.r_[np.zeros(4), np.ones(4)] + rng.normal(0, 0.01, 8),  # B units differ
                               np.zeros(8)])  # no effect anywhere
    difference, pvals, used = permutation_null(effects, np.full(8, 10.0), 4, 1000, rng)
    assert used == 70  # C(8, 4) relabellings, all enumerated
    assert difference[0] == pytest.approx(1.0, abs=0.02) and difference[1] == 0.0
    assert pvals[0] == pytest.approx(2 / 70) and pvals[1] == 1.0  # two-sided: the observed split and its mirror
    _, sampled, used = permutation_null(effects, np.full(8, 10.0), 4, 20, rng)
    assert used == 20 and sampled[0] <= 4 / 21 and sampled[1] == 1.0  # (1 + random hits of the 2 extreme splits) / 21


def test_matched_controls_are_close_in_expression_and_never_targets():
    means = np.linspace(0, 5, 200)
    sets = matched_controls(means, np.array([10, 150]), 25, np.random.default_rng(1), n_bins=20)
    assert len(sets) == 25 and all(s.size == 2 for s in sets)
    chosen = np.stack(sets)
    assert not np.isin(chosen, [10, 150]).any()
    assert np.abs(chosen[:, 0] - 10).max() <= 10 and np.abs(chosen[:, 1] - 150).max() <= 10
    assert np.unique(chosen[:, 1]).size > 3  # random, not one fixed neighbour


# ----------------------------------------------------------------------------- across conditions
def test_effect_in_two_conditions_on_a_learned_bundle(kang):
    atlas, cell_type, _ = kang
    result = compare_conditions_effect(atlas, ["ISG15"], "ko", cell_type=cell_type, condition_a=A, condition_b=B,
                                       n_permutations=100)
    table = result.table
    assert list(table.columns) == ["gene", "effect_a", "effect_b", "difference", "pval", "padj", "is_target"]
    assert len(table) > 100 and not table.isna().any().any()
    assert result.units == "cell blocks" and any("optimistic" in n for n in result.notes)  # Kang 1k has no donors
    np.testing.assert_allclose(table["difference"], table["effect_b"] - table["effect_a"], atol=1e-9)
    assert ((table["pval"] > 0) & (table["pval"] <= 1) & (table["padj"] >= table["pval"] - 1e-12)).all()
    target = table.set_index("gene").loc["ISG15"]
    # ISG15 is strongly induced by interferon: knocking it out removes far more in STIM than in CTRL
    assert target["is_target"] and target["effect_b"] < target["effect_a"] < 0 and target["pval"] < 0.05


def test_silent_gene_knockout_has_no_effect_in_either_condition(kang):
    atlas, cell_type, silent = kang
    if not silent:
        pytest.skip("every model gene is expressed in this cell type")
    for method in ("model", "ridge"):
        table = compare_conditions_effect(atlas, [silent[0]], "ko", cell_type=cell_type, condition_a=A,
                                          condition_b=B, method=method, n_permutations=50).table
        assert np.abs(table[["effect_a", "effect_b", "difference"]].to_numpy()).max() < 1e-9
        assert table["pval"].min() == 1.0


def test_reversal_score_against_matched_controls(kang):
    atlas, cell_type, silent = kang
    result = reversal_score(atlas, ["ISG15"], "ko", cell_type=cell_type, condition_a=A, condition_b=B, n_controls=8)
    assert -1 <= result.score <= 1 and result.score != 0 and 0 <= result.percentile <= 1
    assert result.control_scores.shape == (8,) and np.isfinite(result.control_scores).all()
    assert 1 / 9 <= result.pval <= 1 and all("ISG15" not in s for s in result.control_genes)
    if silent:  # a silent knock-out moves nothing: score 0, and its matched (silent) controls too
        quiet = reversal_score(atlas, [silent[0]], "ko", cell_type=cell_type, condition_a=A, condition_b=B,
                               n_controls=5)
        assert quiet.score == 0.0 and quiet.pval > 0.5 and any("not expressed" in n for n in quiet.notes)


# ----------------------------------------------------------------------------- bad input
def test_bad_input(kang):
    atlas, cell_type, _ = kang
    with pytest.raises(InputError, match="both 'CTRL'"):
        compare_conditions_effect(atlas, ["ISG15"], "ko", cell_type=cell_type, condition_a=A, condition_b=A)
    with pytest.raises(GeneNotFoundError, match="Did you mean.*ISG15"):
        compare_conditions_effect(atlas, ["ISG1S"], "ko", cell_type=cell_type, condition_a=A, condition_b=B)
    with pytest.raises(InputError, match="Unknown condition .FLU."):
        reversal_score(atlas, ["ISG15"], "ko", cell_type=cell_type, condition_a=A, condition_b="FLU")
    with pytest.raises(InputError, match="Unknown perturbation method"):
        compare_conditions_effect(atlas, ["ISG15"], "ko", cell_type=cell_type, condition_a=A, condition_b=B,
                                  method="deep")
    # a cell type absent from (or rare in) one condition, checked before any model is loaded
    obs = pd.DataFrame({"ct": ["T"] * 30 + ["B"] * 25 + ["B"] * 5, "cond": ["h"] * 30 + ["h"] * 25 + ["d"] * 5})
    toy = SimpleNamespace(obs=obs, roles={"cell_type": "ct", "condition": "cond"})
    with pytest.raises(EmptySelectionError, match="No 'T' cells in condition 'd'"):
        compare_conditions_effect(toy, ["X"], "ko", cell_type="T", condition_a="h", condition_b="d")
    with pytest.raises(InputError, match="Only 5 'B' cells in condition 'd'"):
        condition_populations(toy, "B", "h", "d", None, 0)
