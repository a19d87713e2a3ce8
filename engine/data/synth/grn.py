"""The gene-regulatory network of the synthetic atlas: regulators → targets, a one-layer DAG.

Each regulator ``r`` has a per-cell activity ``a`` (log-normal with mean 1 and log-sd
``activity_sd[r]``) and, in a cell of type ``t`` and condition ``c``, a *level*
``x = kappa[c, t, r] * s_r * a``: its context expression relative to its reference-population
mean (``kappa``), times the perturbation multiplier ``s_r`` (1 unperturbed, 0 knock-out,
0.5 knock-down, 4 over-expression), times the activity. An edge ``r → g`` with weight ``w``
multiplies the target's mean by

    response(x, w) / N[t, e],   response(x, w) = ((1 + x) / 2) ** w,

where ``N[t, e] = E_a[response(kappa[ref, t, r] * a, w)]`` makes the reference condition's
population mean of the target equal its source profile. The regulator's own mean is
multiplied by ``s_r * a``. Targets are never regulators, so every effect is one step and
the population mean under any perturbation is a product of one-dimensional expectations,
computed by :func:`expected_response` (64-point Gauss–Hermite quadrature, exact to ~1e-12).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import numpy as np
from numpy.polynomial.hermite_e import hermegauss

from engine.data.shipped import SYNTH_PROGRAMMES, read_shipped_json


@functools.cache
def known_tfs() -> tuple[str, ...]:
    """Transcription factors preferred as regulators when present among the expressed genes.

    Read from ``data/synth_programmes.json`` (``known_tfs``).
    """
    return tuple(map(str, read_shipped_json(SYNTH_PROGRAMMES)["known_tfs"]))


_Z, _W = hermegauss(64)
_W = _W / _W.sum()


@dataclass
class Grn:
    """Regulators, edges and the precomputed context levels (see the module docstring).

    ``regulators`` are gene columns; ``edge_reg`` indexes ``regulators``; ``kappa`` has shape
    (C, T, R) and ``normaliser`` (T, E).
    """

    regulators: np.ndarray
    activity_sd: np.ndarray
    edge_reg: np.ndarray
    edge_target: np.ndarray
    edge_weight: np.ndarray
    kappa: np.ndarray
    normaliser: np.ndarray

    @property
    def n_regulators(self) -> int:
        return len(self.regulators)

    def arrays(self) -> dict[str, np.ndarray]:
        """The fields as a dict of arrays (for ``.npz``)."""
        return {f.name: np.asarray(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Grn:
        """Inverse of :meth:`arrays`."""
        return cls(**{f.name: arrays[f.name] for f in fields(cls)})

    def targets_of(self, r: int) -> np.ndarray:
        """Edge indices leaving regulator ``r`` (an index into ``regulators``)."""
        return np.flatnonzero(self.edge_reg == r)


def response(level: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The regulatory response ``((1 + level) / 2) ** weight`` (1 at level 1)."""
    return ((1.0 + level) / 2.0) ** weight


def expected_response(level: np.ndarray, weight: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """``E_a[response(level * a, weight)]`` for log-normal ``a`` with mean 1 and log-sd ``sd``.

    Arguments broadcast together; the expectation is a 64-node Gauss–Hermite sum.
    """
    level, weight, sd = np.broadcast_arrays(np.asarray(level, float), np.asarray(weight, float),
                                            np.asarray(sd, float))
    a = np.exp(sd[..., None] * _Z - sd[..., None] ** 2 / 2)
    return (response(level[..., None] * a, weight[..., None]) * _W).sum(-1)


def build_grn(rng: np.random.Generator, base: np.ndarray, comp_ref: np.ndarray, lfc: np.ndarray,
              n_regulators: int, genes: np.ndarray) -> Grn:
    """Pick regulators among expressed genes, give each 3–10 targets with signed weights.

    Parameters
    ----------
    rng
        Random generator (the model's stream).
    base
        Reference profiles (T, G).
    comp_ref
        Reference-condition composition (T,), to define each regulator's population mean.
    lfc
        Direct programme log2 fold changes (C, T, G): a regulator switched by a condition
        changes its level ``kappa`` and so its targets.
    n_regulators
        How many regulators (0 for no network).
    genes
        Gene names (known transcription factors are preferred as regulators).
    """
    n_g = base.shape[1]
    pop_mean = comp_ref @ base
    expressed = np.flatnonzero(pop_mean >= np.quantile(pop_mean, 0.6))
    tfs = known_tfs()
    tf = [i for i in rng.permutation(expressed) if genes[i] in tfs][: n_regulators // 2]
    rest = [i for i in rng.permutation(expressed) if i not in tf]
    regulators = np.array((tf + rest)[:n_regulators], dtype=np.int64)
    if len(regulators) < n_regulators:
        others = [i for i in rng.permutation(n_g) if i not in set(regulators.tolist())]
        regulators = np.r_[regulators, others[: n_regulators - len(regulators)]].astype(np.int64)
    pool = np.setdiff1d(np.flatnonzero(pop_mean >= np.quantile(pop_mean, 0.25)), regulators)
    if len(pool) == 0:
        pool = np.setdiff1d(np.arange(n_g), regulators)
    edge_reg, edge_target, edge_weight = [], [], []
    for r in range(len(regulators)):
        k = int(min(3 + rng.poisson(2.0), 10, len(pool)))
        targets = rng.choice(pool, size=k, replace=False)
        signs = np.where(rng.random(k) < 0.65, 1.0, -1.0)
        edge_reg += [r] * k
        edge_target += targets.tolist()
        edge_weight += (signs * rng.uniform(0.5, 1.5, k)).tolist()
    activity_sd = rng.uniform(0.4, 0.7, len(regulators))
    edge_reg_a = np.asarray(edge_reg, dtype=np.int64)
    edge_weight_a = np.asarray(edge_weight, dtype=float)
    # kappa[c, t, r]: the regulator's context mean relative to its reference-population mean
    kappa = base[None, :, regulators] * 2.0 ** lfc[:, :, regulators] / pop_mean[regulators]
    normaliser = expected_response(kappa[0][:, edge_reg_a], edge_weight_a[None, :], activity_sd[edge_reg_a][None, :])
    return Grn(regulators=regulators, activity_sd=activity_sd, edge_reg=edge_reg_a,
               edge_target=np.asarray(edge_target, dtype=np.int64), edge_weight=edge_weight_a,
               kappa=kappa, normaliser=normaliser)


def edge_factors(grn: Grn, edges: np.ndarray, cell_type: np.ndarray, condition: np.ndarray,
                 activity: np.ndarray, reg_strength: np.ndarray | None = None) -> np.ndarray:
    """Per-cell multiplicative factors of the given edges on their targets, shape (n, len(edges)).

    Parameters
    ----------
    grn
        The network.
    edges
        Edge indices.
    cell_type, condition
        Per-cell codes (n,).
    activity
        Per-cell regulator activities (n, R).
    reg_strength
        Perturbation multiplier per regulator (R,); ``None`` means unperturbed.
    """
    r = grn.edge_reg[edges]
    level = grn.kappa[condition[:, None], cell_type[:, None], r[None, :]] * activity[:, r]
    if reg_strength is not None:
        level = level * reg_strength[r][None, :]
    return response(level, grn.edge_weight[edges][None, :]) / grn.normaliser[cell_type[:, None], edges[None, :]]


def mean_log2_regulation(grn: Grn, n_genes: int, reg_strength: np.ndarray | None = None) -> np.ndarray:
    """log2 of the population-mean regulation factor of every gene, shape (C, T, G).

    A target gets ``sum_e log2(E_a[response(kappa * s * a, w)] / N[t, e])`` over its incoming
    edges ``e``; every other gene 0 (a regulator's own ``E[s * a] = s`` is left to the caller).
    """
    n_cond, n_types, _ = grn.kappa.shape
    out = np.zeros((n_cond, n_types, n_genes))
    if grn.n_regulators == 0:
        return out
    s = np.ones(grn.n_regulators) if reg_strength is None else np.asarray(reg_strength, float)
    level = grn.kappa[:, :, grn.edge_reg] * s[grn.edge_reg]
    expect = expected_response(level, grn.edge_weight, grn.activity_sd[grn.edge_reg])
    np.add.at(out, (slice(None), slice(None), grn.edge_target), np.log2(expect / grn.normaliser[None]))
    return out
