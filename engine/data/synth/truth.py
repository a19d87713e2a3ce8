"""Ground truth of a synthetic atlas, derived from the same formulas the sampler uses.

``log2fc`` columns are exact: log2 ratios of *model population means* (expectations over
the regulators' activity by Gauss–Hermite quadrature, donor and batch effects excluded).
``lognorm_shift`` columns are Monte Carlo averages over model cells with common random
numbers (see :func:`expected_effect`). :func:`write_truth` writes every table and a README.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from engine.data.synth.grn import edge_factors, mean_log2_regulation
from engine.data.synth.model import SynthModel
from engine.data.synth.sample import Sampler, nb_counts, strength_vector
from engine.progress import Progress, report

MODES = (("ko", 0.0), ("kd", 0.5), ("oe", 4.0))
_EPS = 1e-9


def model_log2_mean(model: SynthModel, strength: np.ndarray | None = None) -> np.ndarray:
    """log2 of the relative population mean of every gene, shape (C, T, G), under ``strength`` (G,)."""
    s = np.ones(model.n_genes) if strength is None else strength
    out = np.log2(model.base)[None] + model.lfc + mean_log2_regulation(model.grn, model.n_genes,
                                                                        s[model.grn.regulators])
    with np.errstate(divide="ignore"):
        return out + np.log2(s)[None, None, :]


def _cp10k(log2_mean: np.ndarray) -> np.ndarray:
    mean = 2.0 ** log2_mean
    return 1e4 * mean / mean.sum(-1, keepdims=True)


def de_table(model: SynthModel) -> pd.DataFrame:
    """Every (condition ≠ reference, cell type, gene) whose model mean differs from the reference's."""
    l2 = model_log2_mean(model)
    ref_cp10k = _cp10k(l2)[0]
    regulated = mean_log2_regulation(model.grn, model.n_genes)
    grn = model.grn
    rows = []
    for c in range(1, len(model.conditions)):
        total = l2[c] - l2[0]
        for t, g in zip(*np.nonzero(np.abs(total) > _EPS)):
            parts = []
            if model.lfc_shared[c, t, g]:
                parts.append(str(model.programmes[c]))
            if model.lfc_celltype[c, t, g]:
                parts.append("cell-type programme")
            if abs(regulated[c, t, g] - regulated[0, t, g]) > _EPS:
                regs = grn.regulators[grn.edge_reg[grn.edge_target == g]]
                moved = [model.genes[r] for r in regs if abs(model.lfc[c, t, r]) > 0]
                parts.append("regulated by " + ",".join(moved))
            rows.append((model.conditions[c], model.cell_types[t], model.genes[g], total[t, g],
                         model.lfc[c, t, g], " + ".join(parts), ref_cp10k[t, g]))
    return pd.DataFrame(rows, columns=["condition", "cell_type", "gene", "log2fc", "direct_log2fc",
                                       "source", "ref_cp10k"])


def composition_tables(model: SynthModel) -> dict[str, pd.DataFrame]:
    """``composition`` (per condition), ``donors`` and ``donor_composition`` tables."""
    comp = pd.DataFrame([(model.conditions[c], model.cell_types[t], model.composition[c, t],
                          model.comp_multiplier[c, t])
                         for c in range(len(model.conditions)) for t in range(len(model.cell_types))],
                        columns=["condition", "cell_type", "proportion", "multiplier"])
    donors = pd.DataFrame({"donor_id": model.donors, "condition": model.conditions[model.donor_condition],
                           "batch": model.batches[model.donor_batch], "cell_fraction": model.donor_weight})
    donor_comp = pd.DataFrame([(model.donors[d], model.conditions[model.donor_condition[d]],
                                model.batches[model.donor_batch[d]], model.cell_types[t],
                                model.donor_composition[d, t])
                               for d in range(len(model.donors)) for t in range(len(model.cell_types))],
                              columns=["donor_id", "condition", "batch", "cell_type", "proportion"])
    return {"composition": comp, "donors": donors, "donor_composition": donor_comp}


def gene_tables(model: SynthModel) -> dict[str, pd.DataFrame]:
    """``genes`` (per gene) and ``grn`` (per edge) tables."""
    grn = model.grn
    is_reg = np.zeros(model.n_genes, bool)
    is_reg[grn.regulators] = True
    pop = (model.composition[0][:, None] * _cp10k(model_log2_mean(model))[0]).sum(0)
    genes = pd.DataFrame({"gene": model.genes, "synthetic": model.synthetic, "regulator": is_reg,
                          "dispersion": model.dispersion, "ref_cp10k": pop})
    edges = pd.DataFrame({"regulator": model.genes[grn.regulators[grn.edge_reg]],
                          "target": model.genes[grn.edge_target], "weight": grn.edge_weight,
                          "activity_sd": grn.activity_sd[grn.edge_reg]})
    return {"genes": genes, "grn": edges}


@dataclass
class _Context:
    """Monte Carlo model cells of one (condition, cell type), unperturbed."""

    cells: object
    mu: np.ndarray
    total: np.ndarray
    ln_mean: np.ndarray
    counts: np.ndarray
    rate: np.ndarray
    count_total: np.ndarray
    ln_count_mean: np.ndarray


def _context(sampler: Sampler, c: int, t: int, n_cells: int, seed: int) -> _Context:
    rng = np.random.default_rng([seed, 2, c, t])
    cells = sampler.draw_cells(rng, n_cells, condition=c, cell_type=t)
    mu = sampler.relative_means(cells, perturbed=False)
    total = mu.sum(1)
    counts, rate = nb_counts(rng, mu * cells.library[:, None], sampler.model.dispersion, return_rate=True)
    count_total = np.maximum(counts.sum(1), 1)
    return _Context(cells, mu, total, np.log1p(1e4 * mu / total[:, None]).mean(0), counts, rate,
                    count_total, np.log1p(1e4 * counts / count_total[:, None]).mean(0))


def _shifts(ctx: _Context, cols: np.ndarray, factor: np.ndarray,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mean log-normalised shifts of ``cols`` when their means are multiplied by ``factor`` (n, k).

    Expected-fraction scale: exact per cell. Count scale: coupled draws (Poisson thinning for
    ``factor < 1``, an added independent Poisson for ``factor > 1``) give the exact marginal.
    """
    mu = ctx.mu[:, cols]
    new_mu = mu * factor
    total = ctx.total + (new_mu - mu).sum(1)
    shift = np.log1p(1e4 * new_mu / total[:, None]).mean(0) - ctx.ln_mean[cols]
    x = ctx.counts[:, cols]
    new_x = x.copy()
    down, up = factor < 1.0, factor > 1.0
    new_x[down] = rng.binomial(x[down], factor[down])
    new_x[up] += rng.poisson((factor[up] - 1.0) * ctx.rate[:, cols][up])
    count_total = np.maximum(ctx.count_total + (new_x - x).sum(1), 1)
    shift_counts = np.log1p(1e4 * new_x / count_total[:, None]).mean(0) - ctx.ln_count_mean[cols]
    return shift, shift_counts


def perturbation_table(model: SynthModel, n_cells: int = 4000, seed: int = 0,
                       progress: Progress | None = None) -> pd.DataFrame:
    """Every regulator × mode (:data:`MODES`) × cell type × condition: the regulator and its targets."""
    grn, sampler = model.grn, Sampler(model)
    base_l2 = model_log2_mean(model)
    lfcs = {}
    for r in range(grn.n_regulators):
        for m, (_, s) in enumerate(MODES):
            strength = np.ones(model.n_genes)
            strength[grn.regulators[r]] = s
            with np.errstate(invalid="ignore"):
                lfcs[r, m] = model_log2_mean(model, strength) - base_l2
    rows = []
    contexts = [(c, t) for c in range(len(model.conditions)) for t in range(len(model.cell_types))]
    for k, (c, t) in enumerate(contexts):
        report(progress, k / len(contexts), "ground truth: perturbation effects")
        ctx = _context(sampler, c, t, n_cells, seed)
        cp10k = 1e4 * ctx.mu.mean(0) / ctx.total.mean()
        for r in range(grn.n_regulators):
            edges = grn.targets_of(r)
            cols = np.r_[grn.regulators[r], grn.edge_target[edges]]
            ctrl = edge_factors(grn, edges, ctx.cells.cell_type, ctx.cells.condition, ctx.cells.activity)
            for m, (mode, s) in enumerate(MODES):
                reg_s = np.ones(grn.n_regulators)
                reg_s[r] = s
                pert = edge_factors(grn, edges, ctx.cells.cell_type, ctx.cells.condition, ctx.cells.activity, reg_s)
                factor = np.hstack([np.full((len(ctx.cells.donor), 1), s), pert / ctrl])
                shift, shift_counts = _shifts(ctx, cols, factor, np.random.default_rng([seed, 3, c, t, r, m]))
                for j, g in enumerate(cols):
                    rows.append((model.genes[grn.regulators[r]], mode, s, model.cell_types[t], model.conditions[c],
                                 model.genes[g], "regulator" if j == 0 else "target",
                                 0.0 if j == 0 else grn.edge_weight[edges[j - 1]], lfcs[r, m][c, t, g],
                                 shift[j], shift_counts[j], cp10k[g]))
    report(progress, 1.0, "ground truth: perturbation effects")
    return pd.DataFrame(rows, columns=["regulator", "mode", "strength", "cell_type", "condition", "gene", "role",
                                       "weight", "log2fc", "lognorm_shift", "lognorm_shift_counts",
                                       "control_cp10k"])


def expected_effect(model: SynthModel, perturbation: Mapping[str, float], cell_type: str, condition: str,
                    n_cells: int = 4000, seed: int = 0) -> pd.DataFrame:
    """True effect of any perturbation (several genes at once allowed) on every gene of one population.

    Parameters
    ----------
    model
        The model (``load_model(out / "truth" / "model.npz")``).
    perturbation
        Gene → multiplier of its mean (0 knock-out, 0.5 knock-down, 4 over-expression, ...).
    cell_type, condition
        The population.
    n_cells, seed
        Monte Carlo cells for the log-normalised shifts (same cells for control and perturbed).

    Returns
    -------
    One row per gene: ``log2fc`` (exact, ``-inf`` for a knocked-out gene), ``lognorm_shift``
    and ``lognorm_shift_counts`` (see the truth README), ``control_cp10k``.
    """
    c = int(np.flatnonzero(model.conditions == condition)[0])
    t = int(np.flatnonzero(model.cell_types == cell_type)[0])
    strength = strength_vector(model, perturbation)
    with np.errstate(invalid="ignore"):
        lfc = (model_log2_mean(model, strength) - model_log2_mean(model))[c, t]
    sampler = Sampler(model, perturbation)
    ctx = _context(sampler, c, t, n_cells, seed)
    pert = sampler.relative_means(ctx.cells, perturbed=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        factor = np.where(ctx.mu > 0, pert / ctx.mu, 1.0)
    cols = np.arange(model.n_genes)
    shift, shift_counts = _shifts(ctx, cols, factor, np.random.default_rng([seed, 4, c, t]))
    return pd.DataFrame({"gene": model.genes, "log2fc": lfc, "lognorm_shift": shift,
                         "lognorm_shift_counts": shift_counts,
                         "control_cp10k": 1e4 * ctx.mu.mean(0) / ctx.total.mean()})


def write_truth(model: SynthModel, truth_dir: Path, n_cells: int = 4000, seed: int = 0,
                progress: Progress | None = None) -> None:
    """Write every truth table (CSV), ``model.npz`` and ``README.md`` into ``truth_dir``."""
    truth_dir.mkdir(parents=True, exist_ok=True)
    tables = {"de": de_table(model), **composition_tables(model), **gene_tables(model),
              "perturbations": perturbation_table(model, n_cells, seed, progress)}
    for name, df in tables.items():
        df.to_csv(truth_dir / f"{name}.csv", index=False)
    model.save(truth_dir / "model.npz")
    reference = model.conditions[0]
    (truth_dir / "README.md").write_text(README.format(
        reference=reference, n_mc=n_cells, modes=", ".join(f"{m} (x{s:g})" for m, s in MODES),
        programmes="; ".join(f"{c}: {p}" for c, p in zip(model.conditions[1:], model.programmes[1:]))))


README = """# Ground truth of a GENERATED atlas

Synthetic cells, not measurements. Every number here follows from `model.npz` (all parameters;
`engine.data.synth.model.load_model`) by the formulas below, which are the sampler's own
(`engine/data/synth_sample.py`, `engine/data/synth_grn.py`).

## Model
Cell `i` of donor `d` (condition `c`, batch `b`) and cell type `t`; gene `g`:

    mu[i,g] = L_i * base[t,g] * 2**lfc[c,t,g] * exp(eta[d,g] + beta[b,g]) * R[i,g] * s_g
    X[i,g]  ~ Poisson(mu[i,g] * G[i,g]),  G[i,g] ~ Gamma(shape=1/phi_g, scale=phi_g)   (negative binomial)

- `base[t]`: relative profile of cell type `t` (sums to 1): the mean of expm1(raw.X) of scanpy's
  `pbmc68k_reduced` per `bulk_labels`, shrunk toward the global mean (10 pseudo-cells); synthetic
  genes `GEN-*` copy a random real gene's profile with log-normal jitter.
- `lfc[c,t,g]`: direct log2 fold change of condition `c` vs the reference `{reference}` (zero there):
  a shared programme applied to ~70% of cell types ({programmes}) plus a cell-type programme
  (65% up, 35% down among the type's expressed genes).
- `eta[d]` donor noise (log-sd 0.06), `beta[b]` batch factors (log-sd 0.1), both mean-one
  (`exp` has mean 1); the batch also scales the library size.
- `L_i = median_umis * depth[t] * batch_depth[b] * LogNormal(0, 0.4)`.
- `s_g` is 1 in the atlas. An atlas generated with a `perturbation` (see `generated.json`) has
  `s_g` = the given multipliers in every cell, but these tables describe the *unperturbed* model.
- Cells are i.i.d. draws in random order (donor by its cell share, cell type by the donor's
  composition), so any prefix of the atlas is a representative sample.
- Regulation `R`: regulator `r` has activity `a ~ LogNormal` with mean 1 (log-sd `activity_sd`) in each
  cell and level `x = kappa[c,t,r] * s_r * a`, `kappa` = the regulator's `base * 2**lfc` in (c, t) over
  its reference-population mean. The regulator's own `R = a`. A target's `R` is the product over its
  incoming edges `r -> g` (weight `w`) of `((1 + x) / 2)**w / N[t,e]`, with
  `N[t,e] = E_a[((1 + kappa[ref,t,r] * a) / 2)**w]` (so the reference population mean is `base`).
  Targets are never regulators (a one-step DAG), so effects are exact. Knocking out a regulator
  that is silent in a cell type (`kappa` ~ 0) changes nothing there.

Population mean of (c, t): `M[c,t,g] = base[t,g] * 2**lfc[c,t,g] * prod_e E_a[...] / N[t,e] * s_g`
(the expectation over the regulators' activity by 64-point Gauss-Hermite quadrature, exact to
~1e-12; donor and batch effects excluded: they average to one over donors).

## Files
- `de.csv`: condition, cell_type, gene, **log2fc** = log2 M[c,t,g] / M[ref,t,g] (every gene with a
  nonzero value, including genes moved only through the network), direct_log2fc = `lfc[c,t,g]`,
  source (the programme(s), "regulated by X" for network-propagated changes), ref_cp10k = the gene's
  expected counts per 10,000 in the reference population of that cell type (detectability).
- `composition.csv`: condition, cell_type, proportion (expected, the Dirichlet mean), multiplier
  (relative to the reference before renormalising). `donor_composition.csv`: the proportions drawn
  per donor (Dirichlet, concentration 150): observed proportions follow these. `donors.csv`:
  donor_id, condition, batch, cell_fraction (expected share of all cells).
- `grn.csv`: regulator, target, weight `w` = log2 of the target's response at regulator level x = 1
  over level x = 0 (`-w` is the knock-out log2fc of a cell whose `kappa * a` is 1; positive
  activates, negative represses), activity_sd of the regulator.
- `genes.csv`: gene, synthetic, regulator, dispersion `phi`, ref_cp10k (reference population).
- `perturbations.csv`: for every regulator, mode in {modes}, cell_type and condition, the regulator
  (role "regulator") and each of its targets (role "target", with the edge weight):
  - **log2fc** = log2 M'[c,t,g] / M[c,t,g], M' the population mean with `s_r` = strength; exact.
    The regulator's own value is log2(strength): `-inf` for a knock-out.
  - **lognorm_shift** = mean over cells of log1p(1e4 * p'[i,g]) - log1p(1e4 * p[i,g]), `p[i] = mu[i] /
    sum(mu[i])` the cell's expected expression fraction (no count noise); Monte Carlo over {n_mc}
    model cells of that population with the same cells, activities, donors and batches on both sides
    (common random numbers), so the estimate is precise (~1e-3).
  - **lognorm_shift_counts** = the same shift of the *observed* log-normalised value
    log1p(1e4 * X / sum(X)) with count noise: what an experiment with this generator shows on average;
    Monte Carlo over the same cells with coupled draws (Poisson thinning / an added Poisson), ~1e-2.
  - control_cp10k: the gene's expected counts per 10,000 in that population.
  Genes not listed have log2fc exactly 0; their log-normalised values shift only through the total
  (the denominator), by at most the relative change of the cell's total (usually < 0.01).
  `engine.data.synth.truth.expected_effect(model, {{gene: strength, ...}}, cell_type, condition)`
  gives these columns for every gene and any perturbation, combinations included.
"""
