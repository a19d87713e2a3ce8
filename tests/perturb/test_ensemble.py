"""Tests of engine.perturb.ensemble: pooling the virtual cell's predictions over models trained with different seeds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from vcell_testing import by_gene, toy_mae

from engine.errors import InputError
from engine.perturb.ensemble import ensemble_shift
from engine.perturb.spec import TABLE_COLUMNS, PerturbationSpec
from engine.perturb.virtual_cell import Z_95, ModelShift, model_shift

KWARGS = dict(n_masks=4, max_pairs=None, n_boot=10, device="cpu")


def _half(table: pd.DataFrame) -> pd.Series:
    return ((table["ci_high"] - table["ci_low"]) / 2).set_axis(table["gene"])


def _per_gene(result: ModelShift, field: str) -> pd.Series:
    return pd.Series(getattr(result, field), index=result.table["gene"])


@pytest.fixture(scope="module")
def two_models():
    """Two differently initialised masked autoencoders on the same data (seeds 0 and 1)."""
    (first, x, labels), (second, _, _) = toy_mae(seed=0), toy_mae(seed=1)
    return first, second, x, labels


def test_ensemble_of_one_model_is_model_shift():
    model, x, labels = toy_mae()
    kwargs = dict(KWARGS, gene_labels=labels, seed=3)
    spec = PerturbationSpec(["G0"], "kd", 0.3)
    single = model_shift(model, x, [0], spec, **kwargs)
    pooled = ensemble_shift([model], x, [0], spec, **kwargs)
    pd.testing.assert_frame_equal(pooled.table, single.table, check_exact=True)
    for field in ("method", "spec", "n_cells", "warnings", "bootstrap", "silent_targets", "n_masks", "n_pairs",
                  "device", "n_models"):
        assert getattr(pooled, field) == getattr(single, field), field
    for field in ("se_mask", "sd_bootstrap", "sd_seed"):
        np.testing.assert_array_equal(getattr(pooled, field), getattr(single, field))
    assert pooled.n_models == 1 and pooled.sd_seed.tolist() == [0.0] * len(single.table)


def test_ensemble_of_two_models_pools_points_and_widens_intervals(two_models):
    first, second, x, labels = two_models
    kwargs = dict(KWARGS, gene_labels=labels)
    spec = PerturbationSpec(["G0"], "oe")
    own = [model_shift(m, x, [0], spec, **kwargs) for m in (first, second)]
    pooled = ensemble_shift([first, second], x, [0], spec, **kwargs)
    table = pooled.table
    assert list(table.columns) == TABLE_COLUMNS and len(table) == len(own[0].table)
    assert pooled.n_models == 2
    shifts = [by_gene(r.table) for r in own]
    for gene, shift in by_gene(table).items():
        assert shift == pytest.approx((shifts[0][gene] + shifts[1][gene]) / 2, abs=1e-12), gene
    others = ~table.set_index("gene")["is_target"]
    half = _half(table)[others]
    for result in own:
        assert (half >= _half(result.table).reindex(half.index) - 1e-12).all()
    sd_seed = _per_gene(pooled, "sd_seed")
    assert sd_seed[others].min() > 0 and sd_seed["G0"] == 0.0 and half.min() > 0
    # the documented formula, with the per-row errors aligned to the rows
    se, sd = _per_gene(pooled, "se_mask"), _per_gene(pooled, "sd_bootstrap")
    np.testing.assert_allclose(half, Z_95 * np.sqrt(se**2 + sd**2 + sd_seed**2)[others], rtol=1e-9)
    assert by_gene(table, "ci_low")["G0"] == by_gene(table, "ci_high")["G0"] == by_gene(own[0].table)["G0"]


def test_pooled_errors_are_the_models_root_mean_square_and_between_model_spread(two_models):
    first, second, x, labels = two_models
    kwargs = dict(KWARGS, gene_labels=labels, seed=5)
    spec = PerturbationSpec(["G1", "G2"], "kd", 0.2)
    own = [model_shift(m, x, [1, 2], spec, **kwargs) for m in (first, second)]
    pooled = ensemble_shift([first, second], x, [1, 2], spec, **kwargs)
    genes = pooled.table["gene"]
    for field in ("se_mask", "sd_bootstrap"):
        parts = np.stack([_per_gene(r, field).reindex(genes).to_numpy() for r in own])
        np.testing.assert_allclose(getattr(pooled, field), np.sqrt((parts**2).mean(axis=0)), rtol=1e-12)
    shifts = np.stack([r.table.set_index("gene")["shift"].reindex(genes).to_numpy() for r in own])
    targets = pooled.table["is_target"].to_numpy()
    np.testing.assert_allclose(pooled.sd_seed[~targets], shifts.std(axis=0, ddof=1)[~targets], rtol=1e-12)
    assert set(genes[targets]) == {"G1", "G2"} and not pooled.sd_seed[targets].any()
    # every model clamps the targets the same way: their shift is the clamp, not an average
    np.testing.assert_array_equal(pooled.table.loc[targets, "shift"],
                                  own[0].table.set_index("gene").loc[genes[targets], "shift"])
    # the table stays sorted by |shift|, and the other fields are the first model's
    assert np.all(np.diff(pooled.table["shift"].abs()) <= 1e-12)
    assert (pooled.method, pooled.spec, pooled.n_pairs) == (own[0].method, own[0].spec, own[0].n_pairs)


def test_progress_is_shared_between_models_and_no_model_is_an_error(two_models):
    first, second, x, labels = two_models
    seen = []
    ensemble_shift([first, second], x, [0], PerturbationSpec(["G0"], "ko"), gene_labels=labels, n_masks=2,
                   n_boot=0, device="cpu", progress=lambda fraction, message: seen.append(fraction))
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)
    assert any(0.4 < f <= 0.5 for f in seen)  # the first model's share ends half-way
    with pytest.raises(InputError, match="at least one masked autoencoder"):
        ensemble_shift([], x, [0], PerturbationSpec(["G0"], "ko"))
