"""Baselines beside the virtual cell: the additive model for combinations and scGen-style latent transfer.

:func:`additive_combination` sums single-gene predicted shifts beside the joint prediction;
:func:`latent_transfer` adds a condition's mean latent difference to the other condition's cells and
decodes it (the latent-arithmetic prediction of a condition effect), beside the observed difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn

from engine.bundle.select import select_cells, subsample
from engine.errors import InputError
from engine.perturb.conditions import check_method, condition_populations, predict_shift, prediction_context
from engine.perturb.spec import PerturbationSpec
from engine.perturb.virtual_cell import DEFAULT_MASKS

if TYPE_CHECKING:  # pragma: no cover
    from engine.bundle.atlas import Atlas


@dataclass
class AdditiveResult:
    """A combination's joint prediction beside the additive model (the sum of single-gene predictions).

    ``table``: ``gene, joint, additive, difference (joint - additive), is_target`` sorted by
    ``|joint|``; ``pearson_r``: joint vs additive over non-target genes (NaN when either is
    constant); ``method``: the predictor (``"model"`` or ``"ridge"``); ``spec``: the combination
    in words; ``n_cells``: cells of the population.
    """

    table: pd.DataFrame
    pearson_r: float
    method: str
    spec: str
    n_cells: int


def additive_combination(atlas: Atlas, genes: Sequence[str], mode: str, *, cell_type: str | None = None,
                         condition: str | None = None, strength: float | None = None, method: str = "model",
                         max_cells: int | None = 2000, n_masks: int = DEFAULT_MASKS, seed: int = 0) -> AdditiveResult:
    """The additive model for a combination: the sum of single-gene predicted shifts beside the joint one.

    For one gene both columns are the same prediction; see :class:`AdditiveResult`.
    """
    check_method(method)
    cells = np.arange(atlas.n_cells)
    if cell_type is not None or condition is not None:
        cells = select_cells(atlas.obs, condition=condition, cell_type=cell_type, roles=atlas.roles)
    cells = subsample(cells, max_cells, seed)
    ctx = prediction_context(atlas, genes, mode, strength)
    cap, level = ctx.clamp_stats(atlas, ctx.targets)
    x = ctx.read(atlas, cells)
    kwargs = dict(seed=seed, n_masks=n_masks)
    joint = predict_shift(ctx, x, ctx.targets, ctx.spec, method, cap=cap, level=level, **kwargs)
    additive = np.zeros_like(joint)
    for j, target in enumerate(ctx.targets):
        single = PerturbationSpec([ctx.spec.genes[j]], ctx.spec.mode, ctx.spec.strength)
        additive += predict_shift(ctx, x, ctx.targets[j:j + 1], single, method, cap=cap[j:j + 1], level=level[j:j + 1],
                             **kwargs)
    is_target = np.isin(ctx.present, ctx.targets)
    table = pd.DataFrame({"gene": ctx.kept, "joint": joint, "additive": additive, "difference": joint - additive,
                          "is_target": is_target})
    rest = ~is_target & np.isfinite(joint) & np.isfinite(additive)
    r = np.nan if joint[rest].std() == 0 or additive[rest].std() == 0 else \
        float(np.corrcoef(joint[rest], additive[rest])[0, 1])
    table = table.iloc[np.argsort(-np.abs(joint), kind="stable")].reset_index(drop=True)
    return AdditiveResult(table=table, pearson_r=r, method=method, spec=ctx.spec.describe(), n_cells=int(cells.size))


@torch.no_grad()
def decode_shift(model: nn.Module, x: np.ndarray, missing: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Mean of ``decode(z + delta) - decode(z)`` over cells ``x`` (model input; ``missing`` genes unobserved)."""
    was_training = model.training
    model.eval()
    try:
        z = model.embed(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(missing))
        moved = z + torch.as_tensor(delta, dtype=z.dtype)
        return (model.decode(moved) - model.decode(z)).double().mean(dim=0).numpy()
    finally:
        model.train(was_training)


@dataclass
class LatentTransferResult:
    """scGen-style latent arithmetic beside expression-space arithmetic.

    ``table``: ``gene, predicted`` (latent arithmetic), ``expression_arithmetic`` (the source
    cells' mean expression difference added as is), ``observed``; ``r`` and ``r_arithmetic``
    are their Pearson correlations with ``observed``.
    """

    table: pd.DataFrame
    r: float
    r_arithmetic: float
    latent_delta: np.ndarray
    notes: list[str]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else np.nan


def other_type_cells(atlas: Atlas, cell_type: str, condition_a: str, condition_b: str, max_cells: int | None,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of every other cell type in condition A and in B (each subsampled to ``max_cells``)."""
    other = atlas.obs[atlas.roles["cell_type"]].astype(str).to_numpy() != str(cell_type)
    pops = [np.intersect1d(select_cells(atlas.obs, condition=c, roles=atlas.roles), np.flatnonzero(other))
            for c in (condition_a, condition_b)]
    if min(p.size for p in pops) == 0:
        raise InputError(f"No cell type other than '{cell_type}' has cells in both '{condition_a}' and "
                         f"'{condition_b}', so there is no other cell type's response to transfer.")
    return subsample(pops[0], max_cells, seed, 2), subsample(pops[1], max_cells, seed, 3)


def latent_transfer(atlas: Atlas, *, cell_type: str, condition_a: str, condition_b: str, source: str = "same",
                    model: tuple[nn.Module, list[str]] | None = None, max_cells: int | None = 2000,
                    seed: int = 0) -> LatentTransferResult:
    """Predict the B-vs-A expression shift of a cell type by latent arithmetic (scGen-style).

    The condition effect is the mean latent difference (B - A) of the embeddings: of the cell
    type's own cells (``source="same"``) or of all other cell types (``"others"``, scGen's
    leave-one-out). It is added to the A cells' embeddings; the predicted shift is the mean
    decoded difference (:func:`decode_shift`), compared with the observed ``mean(B) - mean(A)``.
    The same source cells' mean expression difference, taken as the prediction, is the
    expression-arithmetic baseline (with ``"same"`` it equals the observed shift).

    Parameters
    ----------
    model
        ``(masked autoencoder, its genes)``; default the bundle's. Pass one trained without the
        held-out cells for an honest leave-one-out (:mod:`engine.perturb.evaluation`).

    Raises
    ------
    InputError, EmptySelectionError
        As :func:`~engine.perturb.conditions.compare_conditions_effect`, or a bad ``source``.
    """
    if source not in ("same", "others"):
        raise InputError(f"Unknown latent source '{source}': use same (this cell type) or others.")
    cells_a, cells_b = condition_populations(atlas, cell_type, condition_a, condition_b, max_cells, seed)
    ctx = prediction_context(atlas, model=model)
    x_a, x_b = ctx.read(atlas, cells_a), ctx.read(atlas, cells_b)
    missing = torch.as_tensor(ctx.missing)
    if source == "same":
        src_a, src_b = x_a, x_b
    else:
        src_a, src_b = (ctx.read(atlas, c) for c in other_type_cells(atlas, cell_type, condition_a, condition_b,
                                                                      max_cells, seed))
    with torch.no_grad():
        z = [ctx.model.eval().embed(torch.as_tensor(v), missing).double().mean(dim=0).numpy() for v in (src_a, src_b)]
    latent_delta = z[1] - z[0]
    predicted = decode_shift(ctx.model, x_a, ctx.missing, latent_delta)[ctx.present]
    arithmetic = (src_b.mean(axis=0) - src_a.mean(axis=0)).astype(np.float64)[ctx.present]
    observed = (x_b.mean(axis=0) - x_a.mean(axis=0)).astype(np.float64)[ctx.present]
    table = pd.DataFrame({"gene": ctx.kept, "predicted": predicted, "expression_arithmetic": arithmetic,
                          "observed": observed})
    table = table.iloc[np.argsort(-np.abs(observed), kind="stable")].reset_index(drop=True)
    notes = [f"Latent condition effect from {'this cell type' if source == 'same' else 'the other cell types'}: "
             f"'{condition_b}' minus '{condition_a}' mean embedding, added to {cells_a.size:,} '{cell_type}' cells "
             f"in '{condition_a}'; Pearson r over {ctx.present.size:,} model genes."]
    return LatentTransferResult(table=table, r=_pearson(predicted, observed),
                                r_arithmetic=_pearson(arithmetic, observed), latent_delta=latent_delta, notes=notes)
