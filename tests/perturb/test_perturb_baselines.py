"""Tests of engine.perturb.baselines: the additive model of a combination and scGen-style latent transfer."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from vcell_testing import cell_type_in_both, toy_mae

from engine.bundle.atlas import Atlas
from engine.errors import InputError
from engine.perturb.baselines import (
    AdditiveResult,
    additive_combination,
    decode_shift,
    latent_transfer,
    other_type_cells,
)
from engine.perturb.conditions import condition_populations, prediction_context

A, B = "CTRL", "STIM"


@pytest.fixture(scope="module")
def kang(mae_bundle):
    """The learned Kang bundle and a cell type with >= 20 cells in both conditions."""
    atlas = Atlas(mae_bundle)
    return atlas, cell_type_in_both(atlas, A, B)


# ----------------------------------------------------------------------------- small models and tables
def test_decode_shift_is_the_mean_decoded_difference():
    model, x, _ = toy_mae(n=50)
    missing = np.zeros(x.shape[1], bool)
    missing[[5, 6]] = True
    model.train()
    assert not decode_shift(model, x, missing, np.zeros(8)).any()  # no latent move, no shift
    delta = np.linspace(-0.5, 0.5, 8)
    shift = decode_shift(model, x, missing, delta)
    assert model.training  # the model's mode is restored
    with torch.no_grad():
        model.eval()
        z = model.embed(torch.as_tensor(x), torch.as_tensor(missing))
        expected = (model.decode(z + torch.as_tensor(delta, dtype=z.dtype)) - model.decode(z)).double().mean(0)
    assert shift.shape == (x.shape[1],) and np.abs(shift).max() > 1e-4
    np.testing.assert_allclose(shift, expected.numpy(), atol=1e-6)


def test_other_type_cells_takes_every_other_cell_type_in_each_condition():
    obs = pd.DataFrame({"ct": ["T"] * 10 + ["B"] * 10 + ["NK"] * 10,
                        "cond": (["h"] * 5 + ["d"] * 5) * 3})
    toy = SimpleNamespace(obs=obs, roles={"cell_type": "ct", "condition": "cond"})
    cells_a, cells_b = other_type_cells(toy, "T", "h", "d", None, 0)
    np.testing.assert_array_equal(cells_a, np.r_[10:15, 20:25])
    np.testing.assert_array_equal(cells_b, np.r_[15:20, 25:30])
    few_a, few_b = other_type_cells(toy, "T", "h", "d", 4, 0)
    assert few_a.size == few_b.size == 4 and set(few_a) <= set(cells_a) and set(few_b) <= set(cells_b)
    np.testing.assert_array_equal(other_type_cells(toy, "T", "h", "d", 4, 0)[0], few_a)  # reproducible
    alone = SimpleNamespace(obs=obs[obs["ct"] != "NK"].assign(cond=["h"] * 10 + ["h"] * 5 + ["d"] * 5),
                            roles=toy.roles)
    with pytest.raises(InputError, match="No cell type other than 'B' has cells in both 'h' and 'd'"):
        other_type_cells(alone, "B", "h", "d", None, 0)


# ----------------------------------------------------------------------------- on a learned bundle
def test_additive_baseline_of_one_gene_is_the_single_prediction(kang):
    atlas, cell_type = kang
    for method in ("model", "ridge"):
        single = additive_combination(atlas, ["ISG15"], "kd", cell_type=cell_type, condition=B, method=method,
                                      n_masks=4)
        assert isinstance(single, AdditiveResult) and single.method == method
        np.testing.assert_array_equal(single.table["joint"], single.table["additive"])
        assert single.table["joint"].abs().max() > 0
        assert single.spec == "knock-down to 50% of ISG15" and single.n_cells > 20
    pair = additive_combination(atlas, ["ISG15", "IFIT3"], "ko", cell_type=cell_type, condition=B, n_masks=4)
    table = pair.table
    assert list(table.columns) == ["gene", "joint", "additive", "difference", "is_target"]
    assert set(table.loc[table["is_target"], "gene"]) == {"ISG15", "IFIT3"}
    assert -1 <= pair.pearson_r <= 1 and not table[["joint", "additive"]].isna().any().any()
    np.testing.assert_allclose(table["difference"], table["joint"] - table["additive"])
    rest = table[~table["is_target"]]
    assert pair.pearson_r == pytest.approx(np.corrcoef(rest["joint"], rest["additive"])[0, 1])
    assert np.all(np.diff(table["joint"].abs()) <= 1e-12)  # sorted by |joint|


def test_latent_transfer_recovers_the_interferon_response(kang):
    atlas, cell_type = kang
    result = latent_transfer(atlas, cell_type=cell_type, condition_a=A, condition_b=B)
    assert -1 <= result.r <= 1
    assert list(result.table.columns) == ["gene", "predicted", "expression_arithmetic", "observed"]
    # from the cell type's own cells, expression arithmetic is the observed shift itself
    np.testing.assert_allclose(result.table["expression_arithmetic"], result.table["observed"])
    assert result.r > 0.15  # about 0.26 for CD14 monocytes with the 2-epoch model
    np.testing.assert_allclose(np.corrcoef(result.table["predicted"], result.table["observed"])[0, 1], result.r)
    # a broken latent effect (its coordinates shuffled) loses the response
    ctx = prediction_context(atlas)
    cells_a, _ = condition_populations(atlas, cell_type, A, B, 2000, 0)
    x_a = ctx.read(atlas, cells_a)
    observed = result.table.set_index("gene").loc[ctx.kept, "observed"].to_numpy()
    rng = np.random.default_rng(0)
    shuffled = [np.corrcoef(decode_shift(ctx.model, x_a, ctx.missing, rng.permutation(result.latent_delta))
                            [ctx.present], observed)[0, 1] for _ in range(5)]
    assert np.mean(shuffled) < result.r - 0.1
    others = latent_transfer(atlas, cell_type=cell_type, condition_a=A, condition_b=B, source="others")
    assert others.r > 0.1  # scGen's leave-one-out: the effect learned on the other cell types transfers
    assert others.r_arithmetic > 0.5  # the interferon response is shared: other types' mean difference predicts it


def test_bad_input(kang):
    atlas, cell_type = kang
    with pytest.raises(InputError, match="latent source"):
        latent_transfer(atlas, cell_type=cell_type, condition_a=A, condition_b=B, source="all")
    with pytest.raises(InputError, match="Unknown perturbation method"):
        additive_combination(atlas, ["ISG15"], "ko", cell_type=cell_type, method="deep")
    # a cell type rare in one condition, checked before any model is loaded
    obs = pd.DataFrame({"ct": ["T"] * 30 + ["B"] * 25 + ["B"] * 5, "cond": ["h"] * 30 + ["h"] * 25 + ["d"] * 5})
    toy = SimpleNamespace(obs=obs, roles={"cell_type": "ct", "condition": "cond"})
    with pytest.raises(InputError, match="Only 5 'B' cells"):
        latent_transfer(toy, cell_type="B", condition_a="h", condition_b="d")
