"""The synthetic atlas's gene-regulatory network (engine.data.synth.grn): responses, the seeded network, its means."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, stats

from engine.data.synth.grn import (
    Grn,
    build_grn,
    edge_factors,
    expected_response,
    known_tfs,
    mean_log2_regulation,
    response,
)

N_TYPES, N_GENES = 3, 80
COMP_REF = np.array([0.5, 0.3, 0.2])


def _network(seed: int = 0, n_regulators: int = 8) -> tuple[Grn, np.ndarray, np.ndarray]:
    """A network on 80 genes of 3 cell types, 6 well-expressed known TFs among them; condition 1 moves genes 0-19."""
    rng = np.random.default_rng(123)
    base = rng.gamma(2.0, 1.0, (N_TYPES, N_GENES))
    genes = np.array([f"GENE{i}" for i in range(N_GENES)], dtype=object)
    genes[70:76] = known_tfs()[:6]
    base[:, 70:76] += 20.0  # expressed, so they can be regulators
    lfc = np.zeros((2, N_TYPES, N_GENES))
    lfc[1, :, :20] = rng.normal(0, 1.5, (N_TYPES, 20))
    lfc[1, :, 70:76] = 1.0  # condition 1 raises the TFs
    grn = build_grn(np.random.default_rng(seed), base, COMP_REF, lfc, n_regulators, genes)
    return grn, base, genes


def test_known_tfs_come_from_the_shipped_programmes():
    tfs = known_tfs()
    assert isinstance(tfs, tuple) and len(tfs) >= 10 and all(isinstance(t, str) and t for t in tfs)
    assert {"SPI1", "IRF7", "GATA3"} <= set(tfs) and known_tfs() is tfs  # read once


def test_response_is_one_at_level_one_and_follows_the_sign_of_the_weight():
    np.testing.assert_array_equal(response(np.ones(3), np.array([-1.5, 0.0, 0.7])), 1.0)
    assert response(np.array(3.0), np.array(1.0)) == 2.0 and response(np.array(0.0), np.array(1.0)) == 0.5
    levels = np.linspace(0, 4, 9)
    assert np.all(np.diff(response(levels, 1.2)) > 0) and np.all(np.diff(response(levels, -0.8)) < 0)


@pytest.mark.parametrize("level, weight, sd", [(1.0, 1.0, 0.5), (0.3, -1.2, 0.7), (2.5, 0.6, 0.4), (0.0, 1.5, 0.6)])
def test_expected_response_is_the_log_normal_expectation(level, weight, sd):
    def integrand(z):
        return response(level * np.exp(sd * z - sd ** 2 / 2), weight) * stats.norm.pdf(z)

    exact, _ = integrate.quad(integrand, -12, 12, epsabs=1e-13)
    assert expected_response(level, weight, sd) == pytest.approx(exact, rel=1e-9)
    assert expected_response(level, weight, 0.0) == pytest.approx(float(response(np.array(level), weight)))


def test_expected_response_broadcasts():
    out = expected_response(np.array([[0.5], [1.0], [2.0]]), np.array([1.0, -1.0]), 0.5)
    assert out.shape == (3, 2)
    assert out[0, 0] == pytest.approx(float(expected_response(0.5, 1.0, 0.5)))


def test_the_network_is_seeded_one_layer_and_prefers_known_tfs():
    grn, _, genes = _network()
    again, _, _ = _network()
    for name, value in grn.arrays().items():
        np.testing.assert_array_equal(value, again.arrays()[name], err_msg=name)
    assert not np.array_equal(_network(seed=1)[0].edge_target, grn.edge_target)
    assert grn.n_regulators == 8 and len(set(grn.regulators.tolist())) == 8
    assert set(genes[grn.regulators[:4]]) <= set(known_tfs())  # half the regulators are TFs when there are enough
    assert not set(grn.edge_target.tolist()) & set(grn.regulators.tolist())  # targets never regulate: one step
    for r in range(grn.n_regulators):
        targets = grn.edge_target[grn.targets_of(r)]
        assert 3 <= len(targets) <= 10 and len(set(targets.tolist())) == len(targets)
    assert np.all((np.abs(grn.edge_weight) >= 0.5) & (np.abs(grn.edge_weight) <= 1.5))
    assert np.all((grn.activity_sd >= 0.4) & (grn.activity_sd <= 0.7))
    assert grn.kappa.shape == (2, N_TYPES, 8) and grn.normaliser.shape == (N_TYPES, len(grn.edge_reg))
    # kappa is relative to the reference population's mean: weighted by its composition, it is 1
    np.testing.assert_allclose(COMP_REF @ grn.kappa[0], 1.0)


def test_arrays_round_trip_through_an_npz_file(tmp_path):
    grn, _, _ = _network()
    np.savez(tmp_path / "grn.npz", **grn.arrays())
    with np.load(tmp_path / "grn.npz") as saved:
        back = Grn.from_arrays(dict(saved))
    for name, value in grn.arrays().items():
        np.testing.assert_array_equal(getattr(back, name), value)


def test_the_reference_condition_keeps_its_source_means_and_a_knockout_scales_single_targets():
    grn, _, _ = _network()
    regulation = mean_log2_regulation(grn, N_GENES)
    assert regulation.shape == (2, N_TYPES, N_GENES)
    np.testing.assert_allclose(regulation[0], 0.0, atol=1e-12)  # the normaliser makes the reference mean exact
    assert np.abs(regulation[1]).max() > 0.05  # condition 1 moves regulators, so their targets
    untouched = np.setdiff1d(np.arange(N_GENES), grn.edge_target)
    assert not regulation[:, :, untouched].any()

    r = 0
    strength = np.ones(grn.n_regulators)
    strength[r] = 0.0  # knock-out: the response no longer depends on the activity
    knocked = mean_log2_regulation(grn, N_GENES, strength)
    single = [e for e in grn.targets_of(r) if np.sum(grn.edge_target == grn.edge_target[e]) == 1]
    assert single  # targets regulated by r alone
    for e in single:
        expected = np.log2(0.5 ** grn.edge_weight[e] / grn.normaliser[:, e])
        np.testing.assert_allclose(knocked[:, :, grn.edge_target[e]], np.broadcast_to(expected, (2, N_TYPES)),
                                   rtol=1e-12)


def test_per_cell_factors_average_to_one_in_the_reference_condition():
    grn, _, _ = _network()
    n = 200_000
    edges = np.arange(4)
    rng = np.random.default_rng(0)
    sd = grn.activity_sd
    activity = np.exp(rng.standard_normal((n, grn.n_regulators)) * sd - sd ** 2 / 2)
    cell_type, condition = np.full(n, 1), np.zeros(n, dtype=np.int64)
    factors = edge_factors(grn, edges, cell_type, condition, activity)
    assert factors.shape == (n, 4) and (factors > 0).all()
    np.testing.assert_allclose(factors.mean(axis=0), 1.0, rtol=0.01)
    # at unit activity each factor is the response at the context level, over the normaliser
    r = grn.edge_reg[edges]
    single = edge_factors(grn, edges, cell_type[:1], condition[:1], np.ones((1, grn.n_regulators)))
    expected = response(grn.kappa[0, 1, r], grn.edge_weight[edges]) / grn.normaliser[1, edges]
    np.testing.assert_allclose(single[0], expected)
    off = np.zeros(grn.n_regulators)
    silenced = edge_factors(grn, edges, cell_type[:1], condition[:1], activity[:1], reg_strength=off)
    np.testing.assert_allclose(silenced[0], 0.5 ** grn.edge_weight[edges] / grn.normaliser[1, edges])


def test_no_regulators_means_no_network():
    grn, _, _ = _network(n_regulators=0)
    assert grn.n_regulators == 0 and len(grn.edge_reg) == 0 and grn.kappa.shape == (2, N_TYPES, 0)
    assert not mean_log2_regulation(grn, N_GENES).any()
