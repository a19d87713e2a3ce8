"""Drawing cells from a :class:`~engine.data.synth.model.SynthModel`, one block at a time.

A cell ``i`` of donor ``d`` (condition ``c``, batch ``b``) and type ``t`` has expected counts

    mu[i, g] = L_i * base[t, g] * 2**lfc[c, t, g] * exp(donor_log_noise[d, g] + batch_log_factor[b, g])
               * R[i, g] * s_g

with library size ``L_i = median_umis * depth[t] * batch_depth[b] * LogNormal(0, library_sdlog)``,
regulation ``R`` from :mod:`engine.data.synth.grn` (the regulator's own activity, or the product
of its incoming edges' factors) and the perturbation multiplier ``s_g`` (1 unless perturbed).
Counts are negative binomial: ``X ~ Poisson(mu * G)``, ``G ~ Gamma(1/phi_g, phi_g)``.

Cells are i.i.d.: block ``k`` of :func:`block_size` cells is drawn from its own random stream
``default_rng([seed, 1, k])``, so the output does not depend on how blocks are grouped into
written chunks, and any prefix of the atlas is a representative sample.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from engine.data.synth.grn import edge_factors
from engine.data.synth.model import SynthModel


def block_size(n_genes: int) -> int:
    """Cells per random-stream block: a power of two near 2M matrix entries, within [256, 8192]."""
    target = (1 << 21) // max(int(n_genes), 1)
    return int(min(8192, max(256, 1 << max(target.bit_length() - 1, 0))))


@dataclass
class Cells:
    """Per-cell draws: codes into the model's donors/cell types/conditions/batches."""

    donor: np.ndarray
    cell_type: np.ndarray
    condition: np.ndarray
    batch: np.ndarray
    library: np.ndarray
    activity: np.ndarray

    def __len__(self) -> int:
        return len(self.donor)


@dataclass
class Block:
    """Sampled cells: obs codes and their counts as CSR parts (``indptr`` starts at 0)."""

    donor: np.ndarray
    cell_type: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    n_genes: int

    def __len__(self) -> int:
        return len(self.donor)

    def slice(self, lo: int, hi: int) -> Block:
        """Rows ``lo:hi`` (views of this block's arrays)."""
        a, b = self.indptr[lo], self.indptr[hi]
        return Block(self.donor[lo:hi], self.cell_type[lo:hi], self.indptr[lo:hi + 1] - a,
                     self.indices[a:b], self.data[a:b], self.n_genes)

    def csr(self) -> sp.csr_matrix:
        """The counts as a float32 CSR matrix."""
        return sp.csr_matrix((self.data, self.indices, self.indptr), shape=(len(self), self.n_genes))


class Sampler:
    """Precomputed context factors of a model, optionally under a perturbation.

    Parameters
    ----------
    model
        The generative model.
    perturbation
        Gene → multiplier of its mean in every cell (0 knock-out, 0.5 knock-down, 4
        over-expression); a perturbed regulator also changes its targets (same formula as
        the truth). ``None`` for the unperturbed atlas.
    """

    def __init__(self, model: SynthModel, perturbation: Mapping[str, float] | None = None):
        self.model = model
        self.strength = strength_vector(model, perturbation)
        self.reg_strength = self.strength[model.grn.regulators]
        log_f = (np.log(model.base)[None] + np.log(2.0) * model.lfc[model.donor_condition]
                 + model.donor_log_noise[:, None, :]
                 + model.batch_log_factor[model.donor_batch][:, None, :])
        self.context = np.exp(log_f)  # (D, T, G)
        self.cum_donor = np.cumsum(model.donor_weight)
        self.cum_type = np.cumsum(model.donor_composition, axis=1)

    def draw_cells(self, rng: np.random.Generator, n: int, condition: int | None = None,
                   cell_type: int | None = None) -> Cells:
        """Draw ``n`` cells (donor, type, library size, activities); optionally fix condition/type."""
        m = self.model
        if condition is None:
            donor = _categorical(rng.random(n), self.cum_donor)
        else:
            mine = np.flatnonzero(m.donor_condition == condition)
            donor = mine[_categorical(rng.random(n), np.cumsum(m.donor_weight[mine]))]
        if cell_type is None:
            u = rng.random(n)
            ct = (u[:, None] * self.cum_type[donor, -1:] > self.cum_type[donor]).sum(1)
            ct = np.minimum(ct, len(m.cell_types) - 1)
        else:
            ct = np.full(n, cell_type, dtype=np.int64)
        batch = m.donor_batch[donor]
        library = m.median_umis * m.depth[ct] * m.batch_depth[batch] * np.exp(m.library_sdlog * rng.standard_normal(n))
        sd = m.grn.activity_sd
        activity = np.exp(sd * rng.standard_normal((n, m.grn.n_regulators)) - sd**2 / 2)
        return Cells(donor=donor, cell_type=ct, condition=m.donor_condition[donor], batch=batch,
                     library=library, activity=activity)

    def relative_means(self, cells: Cells, perturbed: bool = True) -> np.ndarray:
        """Expected expression without the library size, shape (n, G) (see the module docstring)."""
        grn = self.model.grn
        mu = self.context[cells.donor, cells.cell_type]
        s_reg = self.reg_strength if perturbed else None
        if grn.n_regulators:
            mu[:, grn.regulators] *= cells.activity
            factors = edge_factors(grn, np.arange(len(grn.edge_target)), cells.cell_type, cells.condition,
                                   cells.activity, s_reg)
            for e, g in enumerate(grn.edge_target):
                mu[:, g] *= factors[:, e]
        if perturbed:
            changed = np.flatnonzero(self.strength != 1.0)
            mu[:, changed] *= self.strength[changed]
        return mu

    def sample_block(self, seed: int, block: int, n: int) -> Block:
        """Draw block number ``block`` (``n`` cells) from its own random stream."""
        rng = np.random.default_rng([seed, 1, block])
        cells = self.draw_cells(rng, n)
        mu = self.relative_means(cells)
        mu *= cells.library[:, None]
        counts = nb_counts(rng, mu, self.model.dispersion)
        mask = counts > 0
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(mask.sum(1), out=indptr[1:])
        return Block(cells.donor, cells.cell_type, indptr, np.nonzero(mask)[1].astype(np.int32),
                     counts[mask].astype(np.float32), self.model.n_genes)


def strength_vector(model: SynthModel, perturbation: Mapping[str, float] | None) -> np.ndarray:
    """Per-gene multipliers (G,) from a ``{gene: multiplier}`` mapping (names already validated)."""
    s = np.ones(model.n_genes)
    if perturbation:
        index = model.gene_index()
        for gene, value in perturbation.items():
            s[index[gene]] = float(value)
    return s


def nb_counts(rng: np.random.Generator, mu: np.ndarray, dispersion: np.ndarray,
              return_rate: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Negative-binomial counts with means ``mu`` (n, G) and gene dispersions (G,), as gamma–Poisson.

    With ``return_rate`` also return the Poisson rates ``mu * G`` (to couple perturbed draws).
    """
    shape = np.broadcast_to((1.0 / dispersion).astype(np.float32), mu.shape)
    rate = rng.standard_gamma(shape, dtype=np.float32) * (mu * dispersion)
    counts = rng.poisson(rate)
    return (counts, rate) if return_rate else counts


def _categorical(u: np.ndarray, cumulative: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(cumulative / cumulative[-1], u, side="right")
    return np.minimum(idx, len(cumulative) - 1)
