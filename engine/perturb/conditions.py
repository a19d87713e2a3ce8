"""The virtual cell across conditions (healthy A vs disease B).

:func:`compare_conditions_effect` (effects in A and B, their difference, a unit-permutation null) and
:func:`reversal_score` (does the perturbation move B toward A, against expression-matched control
genes); the combination and latent-transfer baselines are in :mod:`engine.perturb.baselines`. The predictor is the bundle's masked
autoencoder (``method="model"``, :func:`~engine.perturb.virtual_cell.model_shift`) or the ridge
co-expression baseline (``"ridge"``), on the model's input genes in both cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from math import comb
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from torch import nn

from engine.bundle.select import select_cells, subsample
from engine.errors import InputError
from engine.models.serialize import align_block, align_genes
from engine.perturb.coexpression import ridge_perturbation
from engine.perturb.counterfactual import load_mae, resolve_targets
from engine.perturb.spec import MIN_EXPRESSING_CELLS, PerturbationSpec, expressed_stats
from engine.perturb.virtual_cell import model_shift
from engine.stats import bh_with_nan

if TYPE_CHECKING:  # pragma: no cover
    from engine.bundle.atlas import Atlas

METHODS = ("model", "ridge")
CELL_BLOCKS = 10
MIN_DONORS_PER_CONDITION = 2


@dataclass
class PredictionContext:
    """The bundle's model, its genes aligned to the atlas, and the perturbation's clamp settings."""

    model: nn.Module
    labels: list[str]  # one per model gene
    positions: np.ndarray  # atlas column per model gene, -1 where missing
    missing: np.ndarray  # model genes the atlas lacks
    present: np.ndarray  # model-gene columns the atlas has
    spec: PerturbationSpec | None = None
    targets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def kept(self) -> list[str]:
        """Labels of the genes in every table (the model genes the atlas has)."""
        return [self.labels[g] for g in self.present]

    def read(self, atlas: Atlas, cells: np.ndarray) -> np.ndarray:
        """Model input of atlas rows ``cells`` (float32, 0 for missing genes)."""

        columns = np.unique(self.positions[self.present])
        block = atlas.expression(cells, columns)
        local = np.where(self.positions >= 0, np.searchsorted(columns, self.positions), -1)
        return align_block(block, local)[0].numpy()

    def clamp_stats(self, atlas: Atlas, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Atlas-wide over-expression cap and silent-cell level of model-gene columns ``targets``."""
        everywhere = np.stack([np.asarray(atlas.gene_values(int(self.positions[t])), dtype=np.float64)
                               for t in targets], axis=1)
        return expressed_stats(everywhere)


def prediction_context(atlas: Atlas, genes: Sequence[str] | None = None, mode: str = "ko",
                       strength: float | None = None, model: tuple[nn.Module, list[str]] | None = None
                       ) -> PredictionContext:
    """Align a model's genes to the atlas and resolve the targets (close names suggested when unknown).

    ``model`` is ``(masked autoencoder, its genes)``; default: the bundle's (:func:`load_mae`).
    """

    spec = PerturbationSpec(genes=list(genes), mode=mode, strength=strength) if genes is not None else None
    model, model_genes = load_mae(atlas) if model is None else model
    positions, _ = align_genes(model_genes, atlas.var)
    labels = [atlas.genes.label(int(p)) if p >= 0 else str(g) for p, g in zip(positions, model_genes)]
    ctx = PredictionContext(model, labels, positions, positions < 0, np.flatnonzero(positions >= 0), spec)
    if spec is not None:
        ctx.targets = resolve_targets(atlas, spec.genes, positions, labels)
        spec.genes = [labels[t] for t in ctx.targets]
    return ctx


def condition_populations(atlas: Atlas, cell_type: str, condition_a: str, condition_b: str, max_cells: int | None,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Atlas rows of the cell type in A and in B (each subsampled to ``max_cells``)."""
    if str(condition_a) == str(condition_b):
        raise InputError(f"Condition A and B are both '{condition_a}': pick two different conditions.")
    cells = []
    for stream, condition in enumerate((condition_a, condition_b)):
        chosen = select_cells(atlas.obs, cell_type=cell_type, condition=condition, roles=atlas.roles)
        if chosen.size < MIN_EXPRESSING_CELLS:
            raise InputError(f"Only {chosen.size} '{cell_type}' cells in condition '{condition}': at least "
                             f"{MIN_EXPRESSING_CELLS} are needed; pick a more common cell type.")
        cells.append(subsample(chosen, max_cells, seed, stream))
    return cells[0], cells[1]


def predict_shift(ctx: PredictionContext, x: np.ndarray, targets: np.ndarray, spec: PerturbationSpec, method: str, *,
             cap: np.ndarray, level: np.ndarray, seed: int, n_masks: int) -> np.ndarray:
    """Predicted mean shift of every kept gene (``ctx.present`` order) in the cells ``x``."""
    if method == "model":
        prediction = model_shift(ctx.model, x, targets, spec, missing=ctx.missing, gene_labels=ctx.labels, cap=cap,
                                 level=level, n_masks=n_masks, n_boot=0, seed=seed)
    else:
        prediction = ridge_perturbation(x[:, ctx.present], np.searchsorted(ctx.present, targets), spec, n_boot=0,
                                        gene_labels=ctx.kept, max_genes=None, cap=cap, level=level, seed=seed)
    return prediction.table.set_index("gene")["shift"].reindex(ctx.kept).to_numpy(dtype=np.float64)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise InputError(f"Unknown perturbation method '{method}': use model (masked autoencoder) or ridge.")


# ----------------------------------------------------------------------------- across conditions
@dataclass
class ConditionEffectResult:
    """The same perturbation in condition A and B of one cell type.

    ``table``: ``gene, effect_a, effect_b, difference, pval, padj, is_target`` sorted by
    ``|difference|``; ``units``: ``"donors"`` or ``"cell blocks"``, the units permuted.
    """

    table: pd.DataFrame
    notes: list[str]
    units: str
    n_units: tuple[int, int]
    n_cells: tuple[int, int]
    n_permutations: int
    description: str


def _units(atlas: Atlas, cells: np.ndarray, blocks: int, rng: np.random.Generator) -> list[np.ndarray] | None:
    """Row groups of ``cells`` by donor (``None`` with fewer than two donors), or random blocks if ``blocks``."""
    if blocks:
        order = rng.permutation(cells.size)
        return [np.sort(part) for part in np.array_split(order, min(blocks, cells.size)) if part.size]
    key = atlas.roles.get("donor")
    if key is None or key not in atlas.obs.columns:
        return None
    codes, uniques = pd.factorize(atlas.obs[key].to_numpy()[cells])
    if uniques.size < MIN_DONORS_PER_CONDITION:
        return None
    return [np.flatnonzero(codes == d) for d in range(uniques.size)]


def permutation_null(effects: np.ndarray, weights: np.ndarray, n_a: int, n_permutations: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """Two-sided permutation p-values of the cell-weighted difference of unit effects (B - A).

    ``effects`` is ``(units, genes)`` with the ``n_a`` A units first, ``weights`` the cells per
    unit. With at most ``n_permutations`` distinct relabellings all are enumerated (an exact
    test); otherwise ``n_permutations`` are drawn from ``rng``. Returns ``(difference, pvals, n_used)``.
    """
    n_units = effects.shape[0]
    total = comb(n_units, n_a)
    if total <= n_permutations:
        labels = np.ones((total, n_units), bool)
        for row, a_units in enumerate(combinations(range(n_units), n_a)):
            labels[row, list(a_units)] = False
        exact = True
    else:
        labels = np.stack([rng.permutation(n_units) >= n_a for _ in range(n_permutations)])
        exact = False
    observed = np.r_[np.zeros(n_a, bool), np.ones(n_units - n_a, bool)]

    def diff(is_b: np.ndarray) -> np.ndarray:
        wb, wa = is_b * weights, ~is_b * weights
        return (wb @ effects) / wb.sum(axis=-1, keepdims=True) - (wa @ effects) / wa.sum(axis=-1, keepdims=True)

    difference = diff(observed[None])[0]
    null = diff(labels)
    beyond = (np.abs(null) >= np.abs(difference) - 1e-12 - 1e-9 * np.abs(difference)).sum(axis=0)
    pvals = beyond / total if exact else (1.0 + beyond) / (n_permutations + 1.0)
    return difference, pvals, int(labels.shape[0])


def compare_conditions_effect(atlas: Atlas, genes: Sequence[str], mode: str, *, cell_type: str, condition_a: str,
                              condition_b: str, strength: float | None = None, method: str = "model",
                              n_permutations: int = 200, cell_blocks: int = CELL_BLOCKS,
                              max_cells: int | None = 2000, n_masks: int = 8, seed: int = 0
                              ) -> ConditionEffectResult:
    """The same perturbation in one cell type in condition A (healthy) and B (disease), with a permutation null.

    Each unit (a donor when both conditions have at least two donors of the cell type; otherwise
    one of ``cell_blocks`` random blocks of cells per condition) gets its predicted effect once;
    ``effect_a`` and ``effect_b`` are the cell-weighted means over the units of each condition
    and ``pval`` is the two-sided permutation p-value of ``difference = effect_b - effect_a``
    from relabelling units between conditions (Benjamini-Hochberg ``padj``).

    Parameters
    ----------
    atlas
        A bundle with a masked-autoencoder model.
    genes, mode, strength
        The perturbation (:class:`~engine.perturb.spec.PerturbationSpec`).
    cell_type, condition_a, condition_b
        The population, and the healthy (A) and disease (B) conditions.
    method
        ``"model"`` (masked autoencoder) or ``"ridge"`` (co-expression baseline, fitted per unit).
    n_permutations, cell_blocks, max_cells, n_masks, seed
        Relabellings (an exact test when fewer exist), cell blocks per condition without donors,
        cells per condition at most, mask draws per prediction, and the seed of all of them.

    Raises
    ------
    InputError
        Same condition twice, an unknown condition or cell type, fewer than 10 cells in a condition,
        or a bad perturbation.
    EmptySelectionError
        The cell type has no cells in one condition.
    GeneNotFoundError
        A gene is not among the model's genes (close names are suggested).
    """
    check_method(method)
    rng = np.random.default_rng([seed, 17])
    cells_a, cells_b = condition_populations(atlas, cell_type, condition_a, condition_b, max_cells, seed)
    ctx = prediction_context(atlas, genes, mode, strength)
    cap, level = ctx.clamp_stats(atlas, ctx.targets)
    units_a, units_b = _units(atlas, cells_a, 0, rng), _units(atlas, cells_b, 0, rng)
    notes = []
    kind = "donors"
    if units_a is None or units_b is None:
        kind = "cell blocks"
        units_a, units_b = _units(atlas, cells_a, cell_blocks, rng), _units(atlas, cells_b, cell_blocks, rng)
        notes.append(f"Fewer than {MIN_DONORS_PER_CONDITION} donors in a condition: cells were split into random "
                     "blocks and blocks permuted between conditions. Cells are not independent replicates, so "
                     "these p-values are optimistic.")
    effects, weights = [], []
    for cells, units in ((cells_a, units_a), (cells_b, units_b)):
        x = ctx.read(atlas, cells)
        for unit in units:
            effects.append(predict_shift(ctx, x[unit], ctx.targets, ctx.spec, method, cap=cap, level=level, seed=seed,
                                    n_masks=n_masks))
            weights.append(unit.size)
    effects_arr, weights_arr = np.nan_to_num(np.stack(effects)), np.asarray(weights, dtype=np.float64)
    difference, pvals, used = permutation_null(effects_arr, weights_arr, len(units_a), n_permutations, rng)
    if used < n_permutations:
        notes.append(f"Only {used} distinct relabellings of {len(units_a)} + {len(units_b)} {kind} exist: the "
                     f"test is exact and its smallest possible p-value is {2 / used:.2g}.")
    n_a = len(units_a)
    effect_a = weights_arr[:n_a] @ effects_arr[:n_a] / weights_arr[:n_a].sum()
    effect_b = weights_arr[n_a:] @ effects_arr[n_a:] / weights_arr[n_a:].sum()
    is_target = np.isin(ctx.present, ctx.targets)
    table = pd.DataFrame({"gene": ctx.kept, "effect_a": effect_a, "effect_b": effect_b, "difference": difference,
                          "pval": pvals, "padj": bh_with_nan(pvals), "is_target": is_target})
    table = table.iloc[np.argsort(-np.abs(difference), kind="stable")].reset_index(drop=True)
    description = (f"{ctx.spec.describe()} in '{cell_type}' cells: '{condition_b}' vs '{condition_a}' "
                   f"({'masked autoencoder' if method == 'model' else 'ridge co-expression baseline'})")
    return ConditionEffectResult(table=table, notes=notes, units=kind, n_units=(n_a, len(units_b)),
                                 n_cells=(int(cells_a.size), int(cells_b.size)), n_permutations=used,
                                 description=description)


# ----------------------------------------------------------------------------- reversal
@dataclass
class ReversalResult:
    """How far a perturbation moves disease (B) cells toward healthy (A) ones, against control genes.

    ``score`` is the cosine between the predicted shift in B and ``mean(A) - mean(B)`` (targets
    left out); ``percentile`` the share of control scores below it and ``pval`` the one-sided
    empirical p-value ``(1 + #controls >= score) / (1 + n)``.
    """

    score: float
    control_scores: np.ndarray
    percentile: float
    pval: float
    control_genes: list[list[str]]
    notes: list[str]


def _cosine(u: np.ndarray, v: np.ndarray) -> float:
    norm = float(np.linalg.norm(u) * np.linalg.norm(v))
    return float(u @ v / norm) if norm > 0 else 0.0


def matched_controls(means: np.ndarray, targets: np.ndarray, n_sets: int, rng: np.random.Generator,
                     n_bins: int = 20) -> list[np.ndarray]:
    """Random gene sets matched to ``targets`` on mean expression.

    Each target is matched by a gene (never a target) drawn among the genes closest to it in
    mean-expression rank: a window of ``len(means) / n_bins`` ranks (at least 10 genes).
    """
    order = np.argsort(means, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    half = max(5, order.size // (2 * n_bins))
    sets = []
    for _ in range(n_sets):
        chosen: list[int] = []
        for t in targets:
            lo = int(np.clip(rank[t] - half, 0, max(order.size - 2 * half - 1, 0)))
            pool = [g for g in order[lo:lo + 2 * half + 1] if g not in targets and g not in chosen]
            chosen.append(int(rng.choice(pool)))
        sets.append(np.asarray(chosen, dtype=np.int64))
    return sets


def reversal_score(atlas: Atlas, genes: Sequence[str], mode: str, *, cell_type: str, condition_a: str,
                   condition_b: str, strength: float | None = None, method: str = "model", n_controls: int = 30,
                   n_bins: int = 20, max_cells: int | None = 1000, n_masks: int = 8, seed: int = 0
                   ) -> ReversalResult:
    """Does the perturbation move disease (B) cells of a cell type toward healthy (A) ones?

    The predicted shift in B (the targets' own clamp left out) is compared with the observed
    ``mean(A) - mean(B)`` by their cosine; the same score for ``n_controls`` random gene sets
    matched on mean expression in B (:func:`matched_controls`) gives the empirical null.

    Parameters are those of :func:`compare_conditions_effect`; ``n_bins`` sets the matching window.

    Raises
    ------
    InputError, EmptySelectionError, GeneNotFoundError
        As :func:`compare_conditions_effect`.
    """
    check_method(method)
    cells_a, cells_b = condition_populations(atlas, cell_type, condition_a, condition_b, max_cells, seed)
    ctx = prediction_context(atlas, genes, mode, strength)
    x_a, x_b = ctx.read(atlas, cells_a), ctx.read(atlas, cells_b)
    toward = (x_a.mean(axis=0) - x_b.mean(axis=0)).astype(np.float64)[ctx.present]

    def score(targets: np.ndarray) -> float:
        cap, level = ctx.clamp_stats(atlas, targets)
        spec = PerturbationSpec([ctx.labels[t] for t in targets], ctx.spec.mode, ctx.spec.strength)
        shift = np.nan_to_num(predict_shift(ctx, x_b, targets, spec, method, cap=cap, level=level, seed=seed,
                                       n_masks=n_masks))
        others = ~np.isin(ctx.present, targets)
        return _cosine(shift[others], toward[others])

    rng = np.random.default_rng([seed, 19])
    local = np.searchsorted(ctx.present, ctx.targets)
    sets = [ctx.present[s] for s in matched_controls(x_b.mean(axis=0)[ctx.present], local, n_controls, rng, n_bins)]
    observed = score(ctx.targets)
    controls = np.asarray([score(s) for s in sets])
    notes = [f"Score: cosine between the predicted shift of '{cell_type}' cells in '{condition_b}' and the observed "
             f"'{condition_a}' minus '{condition_b}' mean difference ({ctx.present.size - ctx.targets.size:,} genes, "
             f"targets left out); null: {n_controls} random gene sets matched on mean expression."]
    if ctx.spec.mode != "oe" and not np.any(x_b[:, ctx.targets] > 0):
        notes.append("The targets are not expressed in the disease cells: the perturbation changes nothing there.")
    return ReversalResult(score=observed, control_scores=controls, percentile=float(np.mean(controls < observed)),
                          pval=float((1 + np.sum(controls >= observed)) / (1 + controls.size)),
                          control_genes=[[ctx.labels[g] for g in s] for s in sets], notes=notes)
