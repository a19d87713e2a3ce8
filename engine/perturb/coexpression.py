"""Co-expression baselines of the virtual cell: no change, and ridge regression on the targets.

- :func:`no_change_baseline`: nothing but the targets moves.
- :func:`ridge_perturbation`: a linear co-expression baseline. In the population, every gene
  is regressed on the (standardised) target genes by ridge regression; the predicted mean
  shift of gene g is ``beta_g . mean(z_perturbed - z_control)``. It knows co-expression, not
  causation, and is labelled as such.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from engine.errors import InputError
from engine.perturb.spec import (
    EXTRAPOLATION_SD,
    MIN_EXPRESSING_CELLS,
    MIN_EXPRESSING_FRACTION,
    NO_CHANGE_METHOD,
    RIDGE_METHOD,
    PerturbationSpec,
    ShiftPrediction,
    clamp_targets,
    shift_table,
)
from engine.progress import Progress, report
from engine.stats import bootstrap_weights


def _dense_columns(X: sp.spmatrix | np.ndarray, columns: Sequence[int]) -> np.ndarray:
    sub = X[:, list(columns)]
    return (sub.toarray() if sp.issparse(sub) else np.asarray(sub)).astype(np.float64)


def _expression_warnings(x_t: np.ndarray, labels: Sequence[str], spec: PerturbationSpec) -> list[str]:
    n = x_t.shape[0]
    verb = {"ko": "knocking it out", "kd": "knocking it down", "oe": "over-expressing it"}[spec.mode]
    warnings = []
    for j, label in enumerate(labels):
        expressing = int(np.count_nonzero(x_t[:, j] > 0))
        if expressing == 0:
            if spec.mode == "oe":
                raise InputError(
                    f"{label} is expressed in 0 of {n:,} cells: over-expression has no level to scale and no "
                    "co-expression to learn from; pick a population that expresses it.")
            warnings.append(f"{label} is expressed in 0 of {n:,} cells: {verb} changes nothing in this baseline.")
        elif expressing < max(MIN_EXPRESSING_CELLS, MIN_EXPRESSING_FRACTION * n):
            warnings.append(f"{label} is expressed in only {expressing:,} of {n:,} cells: the co-expression "
                            "behind this prediction is unreliable.")
    return warnings


def _extrapolation_warnings(dz: np.ndarray, labels: Sequence[str], spec: PerturbationSpec) -> list[str]:
    """Warn when a clamp moves a target far outside the spread the baseline was fitted on."""
    verb = {"ko": "Knocking out", "kd": "Knocking down", "oe": "Over-expressing"}[spec.mode]
    return [f"{verb} {label} moves it {abs(d):.1f} standard deviations from its mean in this population, "
            "beyond the data the linear baseline was fitted on: read the shifts as rough directions (they are "
            "bounded to the observed range)."
            for d, label in zip(dz, labels) if abs(d) > EXTRAPOLATION_SD]


def _select_genes(X: sp.spmatrix | np.ndarray, targets: np.ndarray, max_genes: int | None) -> np.ndarray:
    """All columns, or the ``max_genes`` most variable plus the targets (sorted)."""
    n_genes = X.shape[1]
    if max_genes is None or n_genes <= max_genes:
        return np.arange(n_genes)
    if sp.issparse(X):
        mean = np.asarray(X.mean(axis=0)).ravel()
        var = np.asarray(X.multiply(X).mean(axis=0)).ravel() - mean**2
    else:
        var = np.asarray(X).var(axis=0)
    keep = np.argsort(-var, kind="stable")[:max_genes]
    return np.union1d(keep, targets)


def _check_inputs(X: sp.spmatrix | np.ndarray, targets: Sequence[int], spec: PerturbationSpec,
                  gene_labels: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    if X.ndim != 2 or X.shape[0] == 0:
        raise InputError("The population has no cells: pick a non-empty cell type and condition.")
    targets = np.asarray(list(targets), dtype=np.int64)
    if targets.size != len(spec.genes):
        raise InputError(f"{targets.size} target columns for {len(spec.genes)} genes: pass one column per gene.")
    if targets.size and (targets.min() < 0 or targets.max() >= X.shape[1]):
        raise InputError(f"A target column is outside 0..{X.shape[1] - 1}: pass column positions of X.")
    if np.unique(targets).size < targets.size:
        raise InputError("A target column is listed twice: pass each gene once.")
    labels = [str(g) for g in gene_labels] if gene_labels is not None else [str(i) for i in range(X.shape[1])]
    if len(labels) != X.shape[1]:
        raise InputError(f"{len(labels)} gene labels for {X.shape[1]} genes: pass one label per column.")
    return targets, labels


def no_change_baseline(X: sp.spmatrix | np.ndarray, targets: Sequence[int], spec: PerturbationSpec, *,
                       gene_labels: Sequence[str] | None = None, max_genes: int | None = 2000,
                       cap: np.ndarray | None = None, level: np.ndarray | None = None) -> ShiftPrediction:
    """The null prediction: no gene moves except the clamped targets themselves.

    Same result as :func:`ridge_perturbation` (``ci_low = ci_high = shift``), ``method`` "no-change baseline".
    """
    targets, labels = _check_inputs(X, targets, spec, gene_labels)
    genes = _select_genes(X, targets, max_genes)
    local = np.searchsorted(genes, targets)
    Xg = X[:, genes]
    mean_control = np.asarray(Xg.mean(axis=0)).ravel().astype(np.float64)
    x_t = _dense_columns(X, targets)
    shift = np.zeros(genes.size)
    shift[local] = (clamp_targets(x_t, spec, cap=cap, level=level) - x_t).mean(axis=0)
    table = shift_table([labels[g] for g in genes], mean_control, shift, shift.copy(), shift.copy(), local)
    return ShiftPrediction(table=table, method=NO_CHANGE_METHOD, spec=spec.describe([labels[t] for t in targets]),
                           n_cells=int(X.shape[0]))


def ridge_perturbation(X: sp.spmatrix | np.ndarray, targets: Sequence[int], spec: PerturbationSpec, *,
                       alpha: float = 1.0, n_boot: int = 50, seed: int = 0,
                       gene_labels: Sequence[str] | None = None, max_genes: int | None = 2000,
                       donors: np.ndarray | None = None, cap: np.ndarray | None = None,
                       level: np.ndarray | None = None, progress: Progress | None = None) -> ShiftPrediction:
    """Predict a perturbation's mean expression shift from co-expression (ridge regression).

    In the given cells, every gene y is regressed on the standardised target genes z
    (``beta = (Z'Z + alpha I)^-1 Z'y``, a k x k solve for k targets, computed from sparse
    moments so X is never densified). The targets are clamped (:func:`clamp_targets`) and the
    predicted shift of gene g is ``beta_g . mean(z_perturbed - z_control)``, i.e. the mean over
    cells on the log-normalised scale; a target's own shift is its direct clamp. A knock-out of
    a gene no cell expresses predicts exactly 0. A linear model extrapolates, so each predicted
    mean is kept within ``[0, max of the gene in X]`` and a warning is added when the clamp
    moves a target more than :data:`EXTRAPOLATION_SD` standard deviations. This is a
    co-expression baseline, not a causal model: it cannot tell regulators from co-regulated
    genes, and in a population mixing cell types it mostly learns cell-type differences.

    Parameters
    ----------
    X
        Log-normalised values of the population, cells x genes (sparse or dense).
    targets
        Column positions of the perturbed genes, in ``spec.genes`` order.
    spec
        The perturbation.
    alpha
        Ridge penalty on standardised coefficients (comparable to a number of cells).
    n_boot
        Bootstrap resamples for the 95% percentile interval, widened to contain the point
        estimate (0: the interval is the point).
    seed
        Seed of the bootstrap.
    gene_labels
        One label per column of X (default: the column numbers).
    max_genes
        Keep only the ``max_genes`` most variable genes of the population (plus the targets);
        ``None`` keeps all.
    donors
        Per-cell donor labels: resample donors (all their cells together) instead of cells.
    cap, level
        Over-expression ceiling and silent-cell level per target (see :func:`clamp_targets`).
    progress
        Optional ``progress(fraction, message)`` callback.

    Returns
    -------
    ShiftPrediction
        ``table``: ``gene, mean_control, shift, ci_low, ci_high, mean_perturbed, is_target`` sorted
        by ``|shift|`` descending; ``method`` "ridge co-expression baseline", ``warnings`` (plain
        sentences, e.g. a target no cell expresses), ``bootstrap`` ("cells", "donors" or "none").

    Raises
    ------
    InputError
        Bad targets or labels, or over-expression of a target no cell of X expresses.
    """
    targets, labels = _check_inputs(X, targets, spec, gene_labels)
    n = X.shape[0]
    x_t = _dense_columns(X, targets)
    warnings = _expression_warnings(x_t, [labels[t] for t in targets], spec)
    report(progress, 0.05, "Selecting genes")
    genes = _select_genes(X, targets, max_genes)
    local = np.searchsorted(genes, targets)
    Xg = X[:, genes]
    Xg = Xg.tocsr().astype(np.float64) if sp.issparse(Xg) else np.asarray(Xg, dtype=np.float64)
    delta = clamp_targets(x_t, spec, cap=cap, level=level) - x_t  # cells x k

    if donors is not None and np.asarray(donors).shape[0] != n:
        raise InputError(f"{np.asarray(donors).shape[0]} donor labels for {n} cells: pass one label per cell.")
    # resampling weights: column 0 is the data itself, then one column per bootstrap draw
    weights = np.ones((n, 1 + max(int(n_boot), 0)))
    weights[:, 1:] = bootstrap_weights(n, n_boot, seed, groups=donors)
    bootstrap = "none" if n_boot <= 0 else "cells" if donors is None else "donors"
    total = weights.sum(axis=0)  # (B,)
    k, B = targets.size, weights.shape[1]
    report(progress, 0.15, "Fitting co-expression")
    mu_g = np.asarray(Xg.T @ weights) / total  # genes x B
    mu_t = (x_t.T @ weights) / total  # k x B
    s_tt = np.einsum("nb,nj,nl->bjl", weights, x_t, x_t) / total[:, None, None]
    cov_tt = s_tt - np.einsum("jb,lb->bjl", mu_t, mu_t)  # B x k x k
    cov_tg = np.empty((B, k, genes.size))
    for j in range(k):
        s_tg = np.asarray(Xg.T @ (weights * x_t[:, j:j + 1])) / total  # genes x B
        cov_tg[:, j, :] = (s_tg - mu_t[j][None, :] * mu_g).T
        report(progress, 0.15 + 0.7 * (j + 1) / k, "Fitting co-expression")
    sd = np.sqrt(np.clip(np.einsum("bjj->bj", cov_tt), 0.0, None))  # B x k
    active = sd > 1e-8 * (1.0 + np.abs(mu_t.T))
    sd_safe = np.where(active, sd, 1.0)
    gram = total[:, None, None] * cov_tt / (sd_safe[:, :, None] * sd_safe[:, None, :])
    gram = gram * (active[:, :, None] & active[:, None, :]) + alpha * np.eye(k)[None]
    rhs = total[:, None, None] * cov_tg / sd_safe[:, :, None] * active[:, :, None]
    beta = np.linalg.solve(gram, rhs)  # B x k x genes (standardised coefficients)
    mean_delta = (delta.T @ weights / total).T  # B x k
    dz = np.where(active, mean_delta / sd_safe, 0.0)
    shift = np.einsum("bj,bjg->bg", dz, beta)
    # a linear model extrapolates: keep each predicted mean inside [0, the population's maximum]
    top = Xg.max(axis=0)
    top = top.toarray().ravel() if sp.issparse(top) else np.asarray(top).ravel()
    shift = np.clip(shift, -mu_g.T, top[None, :] - mu_g.T)
    shift[:, local] = mean_delta
    warnings += _extrapolation_warnings(dz[0], [labels[t] for t in targets], spec)
    point = shift[0]
    if B > 1:
        low, high = np.percentile(shift[1:], [2.5, 97.5], axis=0)
        low, high = np.minimum(low, point), np.maximum(high, point)
    else:
        low, high = point.copy(), point.copy()
    report(progress, 1.0, "Perturbation predicted")
    table = shift_table([labels[g] for g in genes], mu_g[:, 0], point, low, high, local)
    return ShiftPrediction(table=table, method=RIDGE_METHOD, spec=spec.describe([labels[t] for t in targets]),
                           n_cells=int(n), warnings=warnings, bootstrap=bootstrap)
