"""The virtual cell: counterfactual perturbation through a bundle's masked autoencoder.

For a population of cells, the target genes are clamped (:func:`~engine.perturb.spec.clamp_targets`)
and never masked; the *same* random masks hide genes of the control and of the perturbed input;
both are encoded and decoded, and the predicted shift of a gene is the decoded difference
averaged over masks and cells (log-normalised scale). Because control and perturbed inputs
differ only in the unmasked target columns, a knock-out of a gene no cell expresses changes
no input and predicts exactly no shift.

Two exact shortcuts keep it fast: the encoder's first layer is linear, so the perturbed
pre-activation is the control's plus ``W1[:, targets] @ delta``; and with a linear decoder
output the cell- and mask-averages are taken on the last hidden layer (the output layer is
applied to averages). On a CPU the number of (cell, mask) pairs evaluated is bounded by
``max_pairs``: each mask draw then covers a rotating share of the cells, so every cell is
used and the mean over cells (which dominates the variance) keeps all of them.

Intervals combine the mask Monte Carlo error (spread over mask draws) with a bootstrap over
donors (at least :data:`~engine.perturb.spec.MIN_DONORS_FOR_BOOTSTRAP`) or cells: ``shift ± 1.96 *
sqrt(se_mask² + sd_bootstrap²)``; a bundle built with ``--model-seeds`` adds the spread between
training seeds (:mod:`engine.perturb.ensemble`). :func:`engine.perturb.counterfactual.perturb_with_model` wraps it for an atlas, with the
no-change and ridge baselines on the same cells and genes and where the perturbed cells land.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from engine.errors import InputError
from engine.perturb.spec import PerturbationSpec, ShiftPrediction, clamp_targets, shift_table
from engine.progress import Progress, report
from engine.stats import bootstrap_weights

if TYPE_CHECKING:  # pragma: no cover
    pass

MODEL_METHOD = "masked-autoencoder virtual cell"
DEFAULT_MASKS = 16
CPU_MAX_PAIRS = 12_288
BATCH_PAIRS = 4096
Z_95 = 1.959964


def _split(model: nn.Module) -> tuple[nn.Module, nn.Sequential, nn.Module | None, nn.Linear | None]:
    """``(first encoder Linear, rest of encoder, decoder body, decoder output Linear)``.

    The last two are ``None`` unless the decoder ends in a plain linear output (MSE, ``linear``).
    """
    net = model.encoder.net
    if not isinstance(net[0], nn.Linear):  # pragma: no cover - every MLPEncoder starts with a Linear
        raise InputError("The model's encoder does not start with a linear layer: it cannot be perturbed here.")
    decoder = model.decoder
    if getattr(decoder, "output", None) == "linear" and isinstance(decoder.net[-1], nn.Linear):
        return net[0], net[1:], decoder.net[:-1], decoder.net[-1]
    return net[0], net[1:], None, None


def _pairs(n_cells: int, n_masks: int, max_pairs: int | None,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Cell and mask-draw index of every evaluated pair (all pairs, or a rotating share per draw)."""
    per_draw = n_cells if max_pairs is None else int(np.clip(max_pairs // n_masks, 1, n_cells))
    order = rng.permutation(n_cells)
    cells = np.concatenate([order[(d * per_draw + np.arange(per_draw)) % n_cells] for d in range(n_masks)])
    return cells, np.repeat(np.arange(n_masks), per_draw)


@dataclass
class ModelShift(ShiftPrediction):
    """A masked autoencoder's predicted shift (one model, or a seed ensemble pooled by
    :func:`~engine.perturb.ensemble.ensemble_shift`).

    The per-row arrays are aligned with ``table``'s rows; the interval half-width of a
    non-target gene is ``1.96 * sqrt(se_mask² + sd_bootstrap² + sd_seed²)``.

    Attributes
    ----------
    silent_targets
        Targets no cell of the population expresses.
    n_masks, n_pairs
        Random mask draws, and (cell, mask) pairs evaluated.
    device
        Where the model ran.
    se_mask
        Monte Carlo standard error over mask draws.
    sd_bootstrap
        Standard deviation over bootstrap resamples (of donors or cells).
    n_models
        Models pooled (training seeds); 1 for :func:`model_shift`.
    sd_seed
        Standard deviation between the models' shifts; zeros for one model.
    """

    silent_targets: list[str] = field(default_factory=list)
    n_masks: int = 0
    n_pairs: int = 0
    device: str = "cpu"
    se_mask: np.ndarray | None = None
    sd_bootstrap: np.ndarray | None = None
    n_models: int = 1
    sd_seed: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("se_mask", "sd_bootstrap", "sd_seed"):
            value = getattr(self, name)
            setattr(self, name, np.zeros(len(self.table)) if value is None else np.asarray(value, dtype=np.float64))


@torch.no_grad()
def model_shift(model: nn.Module, x: np.ndarray | torch.Tensor, targets: Sequence[int], spec: PerturbationSpec, *,
                missing: np.ndarray | torch.Tensor | None = None, gene_labels: Sequence[str] | None = None,
                cap: np.ndarray | None = None, level: np.ndarray | None = None, n_masks: int = DEFAULT_MASKS,
                max_pairs: int | None | str = "auto", donors: np.ndarray | None = None, n_boot: int = 50,
                seed: int = 0, device: str | torch.device | None = None, batch_pairs: int = BATCH_PAIRS,
                progress: Progress | None = None) -> ModelShift:
    """Predict a perturbation's mean expression shift with a masked autoencoder.

    Parameters
    ----------
    model
        A :class:`~engine.models.ssl.MaskedAutoencoder` (its own masker draws the masks).
    x
        Log-normalised input, cells x model genes (e.g. from :func:`~engine.models.serialize.align_block`).
    targets
        Model-gene columns of the perturbed genes, in ``spec.genes`` order.
    spec
        The perturbation.
    missing
        Boolean ``(n_genes,)``: genes the atlas lacks; always masked and left out of the table.
    gene_labels
        One label per model gene (default: the column numbers).
    cap, level
        Over-expression ceiling and silent-cell level per target (see :func:`~engine.perturb.spec.clamp_targets`).
    n_masks
        Random mask draws; each is applied identically to the control and the perturbed input.
    max_pairs
        Most (cell, mask) pairs evaluated: ``"auto"`` is :data:`CPU_MAX_PAIRS` on a CPU and all
        pairs on a GPU; ``None`` evaluates all pairs.
    donors
        Per-cell donor labels: bootstrap whole donors instead of cells.
    n_boot
        Bootstrap resamples (0: the interval is the mask Monte Carlo error only).
    seed
        Seeds the masks, the pair schedule and the bootstrap.
    device
        ``None``: CUDA when available, else CPU.
    batch_pairs
        Pairs per forward pass.
    progress
        Optional ``progress(fraction, message)`` callback.

    Returns
    -------
    ModelShift
        Its ``table`` is that of :func:`~engine.perturb.coexpression.ridge_perturbation` (``gene,
        mean_control, shift, ci_low, ci_high, mean_perturbed, is_target``, sorted by ``|shift|``);
        a target's shift is its clamp. ``se_mask`` and ``sd_bootstrap`` hold one value per table row.
    """
    if not hasattr(model, "decode") or not hasattr(model, "masker"):
        raise InputError("This model is not a masked autoencoder: the virtual cell needs one "
                         "(build the bundle with `vcell build INPUT --model mae`).")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise InputError("The population has no cells: pick a non-empty cell type and condition.")
    n, n_genes = x.shape
    if n_genes != model.n_genes:
        raise InputError(f"The model expects {model.n_genes} genes per cell, got {n_genes}: align the genes first.")
    targets = np.asarray(list(targets), dtype=np.int64)
    missing = np.zeros(n_genes, bool) if missing is None else np.asarray(missing, dtype=bool).copy()
    if targets.size != len(spec.genes) or np.unique(targets).size < targets.size:
        raise InputError(f"{targets.size} distinct target columns for {len(spec.genes)} genes: pass one per gene.")
    if targets.min() < 0 or targets.max() >= n_genes or missing[targets].any():
        raise InputError("A target gene is outside the model's genes or missing from the atlas: it cannot be clamped.")
    labels = [str(g) for g in gene_labels] if gene_labels is not None else [str(i) for i in range(n_genes)]
    n_masks = int(n_masks)
    if n_masks < 1:
        raise InputError(f"n_masks is {n_masks}: draw at least one mask.")
    if max_pairs == "auto":
        max_pairs = None if device.type == "cuda" else CPU_MAX_PAIRS

    x_t = x[:, targets].cpu().numpy().astype(np.float64)
    delta = clamp_targets(x_t, spec, cap=cap, level=level) - x_t  # cells x k
    silent = [labels[t] for j, t in enumerate(targets) if not np.any(x_t[:, j] > 0)]
    warnings = [f"{g} is expressed in 0 of {n:,} cells of this population: "
                + ("knocking it out or down changes no input, so the model predicts no shift."
                   if spec.mode != "oe" else "it is raised to its atlas-wide expressed level.") for g in silent]

    rng = np.random.default_rng([seed, 11])
    cell_idx, draw_idx = _pairs(n, n_masks, None if max_pairs is None else int(max_pairs), rng)
    first, encoder_rest, body, head = _split(model)
    was_training = model.training
    model.to(device).eval()
    generator = torch.Generator(device=device).manual_seed(int(seed))
    w_targets = first.weight[:, torch.as_tensor(targets, device=device)]  # hidden x k
    x_dev, delta_dev = x.to(device), torch.as_tensor(delta, dtype=torch.float32, device=device)
    missing_dev = torch.as_tensor(missing, device=device)
    target_dev = torch.as_tensor(targets, device=device)
    width = head.in_features if head is not None else n_genes
    cell_sum = torch.zeros(n, width, dtype=torch.float64, device=device)
    draw_sum = torch.zeros(n_masks, width, dtype=torch.float64, device=device)
    try:
        for start in range(0, cell_idx.size, batch_pairs):
            c = torch.as_tensor(cell_idx[start:start + batch_pairs], device=device)
            d = torch.as_tensor(draw_idx[start:start + batch_pairs], device=device)
            mask = model.masker(c.numel(), n_genes, generator=generator, device=device) | missing_dev
            mask[:, target_dev] = False  # targets are never masked
            pre = first(x_dev[c].masked_fill(mask, 0.0))
            z = encoder_rest(torch.cat([pre, pre + delta_dev[c] @ w_targets.T]))
            out = body(z) if body is not None else model.decode(z)
            diff = (out[c.numel():] - out[:c.numel()]).to(torch.float64)
            cell_sum.index_add_(0, c, diff)
            draw_sum.index_add_(0, d, diff)
            report(progress, min(start + batch_pairs, cell_idx.size) / cell_idx.size, "Decoding masked cells")
    finally:
        model.train(was_training)

    per_cell = np.bincount(cell_idx, minlength=n).astype(np.float64)
    covered = per_cell > 0
    cell_mean = (cell_sum.cpu().numpy()[covered] / per_cell[covered, None])
    draw_mean = draw_sum.cpu().numpy() / np.bincount(draw_idx, minlength=n_masks)[:, None]
    weights = bootstrap_weights(int(covered.sum()), n_boot, rng,
                                groups=None if donors is None else np.asarray(donors)[covered])
    bootstrap = "none" if n_boot <= 0 else "cells" if donors is None else "donors"
    columns = np.column_stack([np.full(covered.sum(), 1.0), weights])  # point, then bootstrap draws
    stacked = np.concatenate([(cell_mean.T @ columns / columns.sum(axis=0)), draw_mean.T], axis=1)
    if head is not None:  # apply the linear output layer to averages (its bias cancels)
        stacked = head.weight.detach().cpu().double().numpy() @ stacked
    point = stacked[:, 0]
    boots, draws = stacked[:, 1:1 + weights.shape[1]], stacked[:, 1 + weights.shape[1]:]
    sd_boot = boots.std(axis=1, ddof=1) if boots.shape[1] > 1 else np.zeros(n_genes)
    se_mask = draws.std(axis=1, ddof=1) / np.sqrt(n_masks) if n_masks > 1 else np.zeros(n_genes)
    half = Z_95 * np.sqrt(sd_boot**2 + se_mask**2)
    point[targets] = delta.mean(axis=0)
    half[targets] = 0.0

    keep = np.flatnonzero(~missing)
    kept = [labels[g] for g in keep]
    mean_control = x.cpu().numpy().astype(np.float64).mean(axis=0)
    table = shift_table(kept, mean_control[keep], point[keep], point[keep] - half[keep], point[keep] + half[keep],
                   np.searchsorted(keep, targets))
    row = keep[table["gene"].map({g: i for i, g in enumerate(kept)}).to_numpy()]  # table row -> model gene
    return ModelShift(table=table, method=MODEL_METHOD, spec=spec.describe([labels[t] for t in targets]),
                      n_cells=int(n), warnings=warnings, bootstrap=bootstrap, silent_targets=silent,
                      n_masks=n_masks, n_pairs=int(cell_idx.size), device=str(device), se_mask=se_mask[row],
                      sd_bootstrap=sd_boot[row])


