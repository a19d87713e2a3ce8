"""Shared statistics: Benjamini-Hochberg and bootstrap resampling weights (engine.stats)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from engine.errors import InputError
from engine.stats import benjamini_hochberg, bh_with_nan, bootstrap_weights


# ----------------------------------------------------------------------------- Benjamini-Hochberg
def test_benjamini_hochberg_matches_definition():
    p = np.array([0.01, 0.04, 0.03, 0.5, 0.02])
    # sorted: .01 .02 .03 .04 .5 -> *5/rank: .05 .05 .05 .05 .5
    np.testing.assert_allclose(benjamini_hochberg(p), [0.05, 0.05, 0.05, 0.5, 0.05])


def test_benjamini_hochberg_matches_scipy():
    rng = np.random.default_rng(0)
    p = np.r_[rng.uniform(size=500), rng.uniform(0, 1e-4, size=50), [0.0, 1.0, 0.3, 0.3]]
    np.testing.assert_allclose(benjamini_hochberg(p), stats.false_discovery_control(p, method="bh"), rtol=1e-12)
    assert benjamini_hochberg(np.array([])).size == 0


def test_bh_with_nan_leaves_nan_and_adjusts_the_rest():
    p = np.array([0.01, np.nan, 0.04, 0.03, np.nan])
    out = bh_with_nan(p)
    assert np.isnan(out[[1, 4]]).all()
    np.testing.assert_allclose(out[[0, 2, 3]], stats.false_discovery_control([0.01, 0.04, 0.03]))


# ----------------------------------------------------------------------------- bootstrap weights
def test_cell_bootstrap_draws_n_items_per_column_reproducibly():
    weights = bootstrap_weights(40, 25, 7)
    assert weights.shape == (40, 25) and weights.dtype == np.float64
    np.testing.assert_array_equal(weights.sum(axis=0), 40)  # every draw takes n items
    assert (weights >= 0).all() and np.array_equal(weights, np.round(weights))
    np.testing.assert_array_equal(bootstrap_weights(40, 25, 7), weights)
    np.testing.assert_array_equal(bootstrap_weights(40, 25, np.random.default_rng(7)), weights)
    assert not np.array_equal(bootstrap_weights(40, 25, 8), weights)
    assert (weights == 0).any() and (weights > 1).any()  # with replacement: some left out, some repeated


def test_donor_bootstrap_resamples_donors_as_units():
    donors = np.array(["d2", "d0", "d1", "d0", "d2", "d2", "d1", "d3"])
    weights = bootstrap_weights(donors.size, 200, 0, groups=donors)
    assert weights.shape == (8, 200)
    for donor in np.unique(donors):  # all cells of a donor move together
        rows = weights[donors == donor]
        assert (rows == rows[0]).all(), donor
    # each draw takes 4 donors with replacement: per column, the donors' multiplicities sum to 4
    first = [np.flatnonzero(donors == d)[0] for d in np.unique(donors)]
    np.testing.assert_array_equal(weights[first].sum(axis=0), 4)
    assert (weights[first] == 0).any() and (weights[first] >= 2).any()
    np.testing.assert_array_equal(bootstrap_weights(donors.size, 200, 0, groups=donors), weights)


def test_bootstrap_continues_the_callers_random_stream():
    rng = np.random.default_rng(3)
    rng.integers(0, 10, 5)  # the caller drew before
    ours = bootstrap_weights(30, 6, rng)
    reference = np.random.default_rng(3)
    reference.integers(0, 10, 5)
    expected = reference.multinomial(30, np.full(30, 1 / 30), size=6).T
    np.testing.assert_array_equal(ours, expected)
    assert rng.integers(0, 1 << 30) == reference.integers(0, 1 << 30)  # the stream goes on in step


def test_no_draws_and_bad_groups():
    assert bootstrap_weights(5, 0, 0).shape == (5, 0) and bootstrap_weights(5, -3, 0).shape == (5, 0)
    with pytest.raises(InputError, match="3 group labels for 5 items"):
        bootstrap_weights(5, 4, 0, groups=np.array(["a", "b", "a"]))
