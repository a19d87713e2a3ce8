"""In-silico perturbation: specification, clamping and the baseline virtual cells.

A perturbation knocks out (``ko``), knocks down (``kd``) or over-expresses (``oe``) up to
:data:`MAX_GENES` genes in a population of cells. :func:`clamp_targets` turns control values
of the target genes into perturbed ones; predictors then say how every other gene moves:

- :func:`no_change_baseline`: nothing but the targets moves.
- :func:`ridge_perturbation`: a linear co-expression baseline. In the population, every gene
  is regressed on the (standardised) target genes by ridge regression; the predicted mean
  shift of gene g is ``beta_g . mean(z_perturbed - z_control)``. It knows co-expression, not
  causation, and is labelled as such.

The model-based virtual cell (masked autoencoder) reuses the spec, the clamp and the table
shape. :func:`perturb` is the thin wrapper over an :class:`~engine.atlas.Atlas`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

from engine.compare import select_cells, subsample
from engine.errors import InputError
from engine.progress import Progress, report

if TYPE_CHECKING:  # pragma: no cover
    from engine.atlas import Atlas

MAX_GENES = 10
MODES = {"ko": "knock-out", "kd": "knock-down", "oe": "over-expression"}
_ALIASES = {"knockout": "ko", "knock-out": "ko", "knockdown": "kd", "knock-down": "kd",
            "overexpression": "oe", "over-expression": "oe"}
DEFAULT_STRENGTH = {"ko": 0.0, "kd": 0.5, "oe": 4.0}
RIDGE_METHOD = "ridge co-expression baseline"
NO_CHANGE_METHOD = "no-change baseline"
OE_CAP_PERCENTILE = 99.0
MIN_EXPRESSING_FRACTION = 0.01
MIN_EXPRESSING_CELLS = 10
MIN_DONORS_FOR_BOOTSTRAP = 3
EXTRAPOLATION_SD = 3.0
TABLE_COLUMNS = ["gene", "mean_control", "shift", "ci_low", "ci_high", "mean_perturbed", "is_target"]


@dataclass
class PerturbationSpec:
    """What to do to which genes.

    Parameters
    ----------
    genes
        Gene labels or indices (1 to :data:`MAX_GENES`, no repeats).
    mode
        ``"ko"`` (set to 0), ``"kd"`` (keep ``strength`` of the value, default 0.5) or ``"oe"``
        (multiply by ``strength``, default 4.0); long names such as ``"knockout"`` are accepted.
    strength
        ``kd``: remaining fraction in ``[0, 1)``; ``oe``: multiple in ``(1, 100]``; ignored for ``ko``.
    """

    genes: list[str | int]
    mode: str
    strength: float | None = None

    def __post_init__(self) -> None:
        mode = _ALIASES.get(str(self.mode).strip().lower(), str(self.mode).strip().lower())
        if mode not in MODES:
            raise InputError(f"Unknown perturbation mode '{self.mode}': use ko (knock-out), kd (knock-down) or oe (over-expression).")
        self.mode = mode
        if isinstance(self.genes, (str, int, np.integer)):
            self.genes = [self.genes]
        self.genes = list(self.genes)
        if not self.genes:
            raise InputError("No gene to perturb: name at least one gene.")
        if len(self.genes) > MAX_GENES:
            raise InputError(f"{len(self.genes)} genes were given: perturb at most {MAX_GENES} at once.")
        seen: set[str] = set()
        for gene in self.genes:
            if str(gene).upper() in seen:
                raise InputError(f"{gene} is listed twice: name each gene once.")
            seen.add(str(gene).upper())
        if self.strength is None or mode == "ko":
            self.strength = DEFAULT_STRENGTH[mode]
        strength = float(self.strength)
        if mode == "kd" and not 0.0 <= strength < 1.0:
            raise InputError(f"Knock-down strength {strength:g} is not a remaining fraction: use a value from 0 to below 1.")
        if mode == "oe" and not 1.0 < strength <= 100.0:
            raise InputError(f"Over-expression strength {strength:g} is not a multiple above 1: use a value from above 1 to 100.")
        self.strength = strength

    def describe(self, labels: Sequence[str] | None = None) -> str:
        """A short phrase such as ``"knock-out of STAT1, IRF1"`` or ``"knock-down to 50% of ISG15"``."""
        names = ", ".join(str(g) for g in (labels if labels is not None else self.genes))
        if self.mode == "kd":
            return f"knock-down to {self.strength:.0%} of {names}"
        if self.mode == "oe":
            return f"over-expression ({self.strength:g}x) of {names}"
        return f"knock-out of {names}"


def _dense_columns(X: sp.spmatrix | np.ndarray, columns: Sequence[int]) -> np.ndarray:
    sub = X[:, list(columns)]
    return (sub.toarray() if sp.issparse(sub) else np.asarray(sub)).astype(np.float64)


def clamp_targets(values: np.ndarray, spec: PerturbationSpec, *, cap: np.ndarray | None = None,
                  level: np.ndarray | None = None) -> np.ndarray:
    """Perturbed log-normalised values of the target genes.

    ``ko`` sets 0. ``kd`` keeps ``strength`` of each value on the linear scale:
    ``log1p(strength * expm1(x))``. ``oe`` multiplies on the linear scale, raising cells below
    the typical expressed level (silent ones included) to it first, caps at a high percentile
    and never lowers a value:
    ``max(x, log1p(min(strength * max(expm1(x), level), cap)))``.

    Parameters
    ----------
    values
        Control values, cells x targets (log1p of counts per 10,000).
    spec
        The perturbation.
    cap, level
        Per target, on the linear scale: the over-expression ceiling (default: the
        :data:`OE_CAP_PERCENTILE` th percentile among expressing cells of ``values``) and the
        level silent cells are raised from (default: the mean among expressing cells). Pass
        atlas-wide values to make the population's own distribution irrelevant.
    """
    x = np.asarray(values, dtype=np.float64)
    if spec.mode == "ko":
        return np.zeros_like(x)
    linear = np.expm1(x)
    if spec.mode == "kd":
        return np.log1p(spec.strength * linear)
    if cap is None or level is None:
        cap_est, level_est = expressed_stats(x)
        cap = cap_est if cap is None else cap
        level = level_est if level is None else level
    cap = np.asarray(cap, dtype=np.float64)
    level = np.asarray(level, dtype=np.float64)
    raised = np.minimum(spec.strength * np.maximum(linear, level), cap)
    return np.maximum(x, np.log1p(raised))


def expressed_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of log values: (cap, level) on the linear scale among expressing cells.

    ``cap`` is the :data:`OE_CAP_PERCENTILE` th percentile and ``level`` the mean of
    ``expm1(x)`` over cells with ``x > 0``; both are 0 for a column with no expressing cell.
    """
    x = np.atleast_2d(np.asarray(values, dtype=np.float64))
    cap, level = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for j in range(x.shape[1]):
        on = np.expm1(x[x[:, j] > 0, j])
        if on.size:
            cap[j], level[j] = np.percentile(on, OE_CAP_PERCENTILE), on.mean()
    return cap, level


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


def shift_table(labels: Sequence[str], mean_control: np.ndarray, shift: np.ndarray, low: np.ndarray,
           high: np.ndarray, targets: np.ndarray) -> pd.DataFrame:
    is_target = np.zeros(len(labels), dtype=bool)
    is_target[targets] = True
    table = pd.DataFrame({"gene": [str(g) for g in labels], "mean_control": mean_control, "shift": shift,
                          "ci_low": low, "ci_high": high, "mean_perturbed": mean_control + shift,
                          "is_target": is_target})
    order = np.argsort(-np.abs(table["shift"].to_numpy()), kind="stable")
    return table.iloc[order].reset_index(drop=True)


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
                       cap: np.ndarray | None = None, level: np.ndarray | None = None) -> pd.DataFrame:
    """The null prediction: no gene moves except the clamped targets themselves.

    Same table as :func:`ridge_perturbation` (``ci_low = ci_high = shift``);
    ``attrs["method"] = "no-change baseline"``.
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
    table.attrs.update(method=NO_CHANGE_METHOD, warnings=[], n_cells=int(X.shape[0]))
    return table


def ridge_perturbation(X: sp.spmatrix | np.ndarray, targets: Sequence[int], spec: PerturbationSpec, *,
                       alpha: float = 1.0, n_boot: int = 50, seed: int = 0,
                       gene_labels: Sequence[str] | None = None, max_genes: int | None = 2000,
                       donors: np.ndarray | None = None, cap: np.ndarray | None = None,
                       level: np.ndarray | None = None, progress: Progress | None = None) -> pd.DataFrame:
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
    pandas.DataFrame
        ``gene, mean_control, shift, ci_low, ci_high, mean_perturbed, is_target`` sorted by
        ``|shift|`` descending; ``attrs``: ``method`` ("ridge co-expression baseline"),
        ``warnings`` (plain sentences, e.g. a target no cell expresses), ``bootstrap``
        ("cells", "donors" or "none"), ``n_cells``.

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

    # resampling weights: column 0 is the data itself, then one column per bootstrap draw
    rng = np.random.default_rng(seed)
    weights = np.ones((n, 1 + max(int(n_boot), 0)))
    bootstrap = "none"
    if n_boot > 0:
        if donors is not None:
            donors = np.asarray(donors)
            if donors.shape[0] != n:
                raise InputError(f"{donors.shape[0]} donor labels for {n} cells: pass one label per cell.")
            codes, uniques = pd.factorize(donors)
            draws = rng.integers(0, uniques.size, size=(n_boot, uniques.size))
            per_donor = np.stack([np.bincount(d, minlength=uniques.size) for d in draws], axis=1)
            weights[:, 1:] = per_donor[codes]
            bootstrap = "donors"
        else:
            weights[:, 1:] = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).T
            bootstrap = "cells"
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
    table.attrs.update(method=RIDGE_METHOD, warnings=warnings, bootstrap=bootstrap, n_cells=int(n),
                       alpha=alpha, n_boot=int(n_boot), spec=spec.describe([labels[t] for t in targets]))
    return table


# ----------------------------------------------------------------------------- atlas wrapper
@dataclass
class PerturbResult:
    """A predicted perturbation in one population of an atlas."""

    spec: PerturbationSpec
    population: str
    n_cells: int
    table: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    method: str = RIDGE_METHOD
    cell_type: str | None = None
    condition: str | None = None
    subsampled: bool = False


def describe_population(cell_type: str | None, condition: str | None) -> str:
    """``"'CD14 Mono' cells in 'STIM'"``, ``"all cells in 'STIM'"``, ``"all cells"``…"""
    who = f"'{cell_type}' cells" if cell_type is not None else "all cells"
    return who + (f" in '{condition}'" if condition is not None else "")


def perturb(atlas: Atlas, genes: Sequence[str], mode: str, *, strength: float | None = None,
            cell_type: str | None = None, condition: str | None = None, max_cells: int | None = 10_000,
            seed: int = 0, n_boot: int = 50, method: str = "ridge", progress: Progress | None = None) -> PerturbResult:
    """Predict a knock-out / knock-down / over-expression in a population of an atlas (ridge baseline).

    ``method="model"`` hands over to :func:`engine.virtual_cell.perturb_with_model` (the bundle's
    masked autoencoder, with the baselines side by side); ``"ridge"`` is described below.

    The gene set is the atlas's highly variable genes (``atlas.var["highly_variable"]`` when
    present, otherwise all genes) plus the targets, further bounded to the 2,000 most variable
    in the population. Over-expression multiplies each cell's value (cells below the
    population's mean among expressing cells start from that mean) and is capped at the 99th
    percentile of the target among expressing cells of the whole atlas. The bootstrap resamples
    donors when the population has at least :data:`MIN_DONORS_FOR_BOOTSTRAP` of them, cells
    otherwise.

    Raises
    ------
    GeneNotFoundError
        A gene is not in the atlas (close names are suggested).
    InputError
        Bad mode/strength/gene count, or over-expression of a gene the atlas never expresses.
    EmptySelectionError
        The population has no cells.
    """
    if method == "model":
        from engine.virtual_cell import perturb_with_model

        return perturb_with_model(atlas, genes, mode, strength=strength, cell_type=cell_type, condition=condition,
                                  max_cells=max_cells, seed=seed, n_boot=n_boot, progress=progress)
    if method != "ridge":
        raise InputError(f"Unknown perturbation method '{method}': use model (masked autoencoder) or ridge.")
    spec = PerturbationSpec(genes=list(genes), mode=mode, strength=strength)
    target_ids = np.asarray(atlas.genes.resolve_many([str(g) for g in spec.genes]), dtype=np.int64)
    labels = [atlas.genes.label(int(i)) for i in target_ids]
    if np.unique(target_ids).size < target_ids.size:
        raise InputError(f"{', '.join(map(str, spec.genes))} name the same gene more than once: name each gene once.")
    report(progress, 0.0, "Selecting cells")
    cells = np.arange(atlas.n_cells)
    if cell_type is not None or condition is not None:
        cells = select_cells(atlas.obs, condition=condition, cell_type=cell_type, roles=atlas.roles)
    chosen = subsample(cells, max_cells, seed)
    cap = None
    if spec.mode == "oe":
        everywhere = np.stack([np.asarray(atlas.gene_values(int(i)), dtype=np.float64) for i in target_ids], axis=1)
        for j, label in enumerate(labels):
            if not np.any(everywhere[:, j] > 0):
                raise InputError(f"{label} is never expressed in this atlas: over-expression has no level to "
                                 "scale; pick another gene.")
        cap = expressed_stats(everywhere)[0]
    var = getattr(atlas, "var", None)
    if var is not None and "highly_variable" in var.columns:
        gene_set = np.union1d(np.flatnonzero(var["highly_variable"].to_numpy(dtype=bool)), target_ids)
    else:
        gene_set = np.arange(atlas.n_genes)
    report(progress, 0.1, "Reading expression")
    X = atlas.expression(chosen, gene_set)
    all_labels = atlas.genes.labels
    donors = None
    donor_key = atlas.roles.get("donor")
    if donor_key is not None and donor_key in atlas.obs.columns:
        donor_values = atlas.obs[donor_key].to_numpy()[chosen]
        if pd.Series(donor_values).nunique() >= MIN_DONORS_FOR_BOOTSTRAP:
            donors = donor_values

    def sub_progress(fraction: float, message: str) -> None:
        report(progress, 0.2 + 0.8 * fraction, message)

    table = ridge_perturbation(X, np.searchsorted(gene_set, target_ids), spec, n_boot=n_boot, seed=seed,
                               gene_labels=[all_labels[g] for g in gene_set], donors=donors, cap=cap,
                               progress=sub_progress)
    spec.genes = labels
    warnings = list(table.attrs["warnings"])
    type_key = atlas.roles.get("cell_type")
    if cell_type is None and type_key is not None and type_key in atlas.obs.columns:
        n_types = pd.Series(atlas.obs[type_key].to_numpy()[chosen]).nunique()
        if n_types > 1:
            warnings.append(f"The population mixes {n_types} cell types, so differences between cell types drive "
                            "this co-expression baseline: pick one cell type for a sharper prediction.")
    method = f"{RIDGE_METHOD} (bootstrap over {table.attrs['bootstrap']})"
    return PerturbResult(spec=spec, population=describe_population(cell_type, condition), n_cells=int(chosen.size),
                         table=table, warnings=warnings, method=method, cell_type=cell_type,
                         condition=condition, subsampled=chosen.size < cells.size)
