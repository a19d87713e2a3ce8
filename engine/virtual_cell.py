"""The virtual cell: counterfactual perturbation through a bundle's masked autoencoder.

For a population of cells, the target genes are clamped (:func:`~engine.perturb.clamp_targets`)
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
donors (at least :data:`~engine.perturb.MIN_DONORS_FOR_BOOTSTRAP`) or cells: ``shift ± 1.96 *
sqrt(se_mask² + sd_bootstrap²)``; a bundle built with ``--model-seeds`` adds the spread between
training seeds (:mod:`engine.virtual_cell_ensemble`). :func:`perturb_with_model` wraps it for an atlas, with the
no-change and ridge baselines on the same cells and genes and where the perturbed cells land
(:mod:`engine.virtual_cell_landing`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn

from engine.errors import BundleError, GeneNotFoundError, InputError, suggest
from engine.perturb import (
    MIN_DONORS_FOR_BOOTSTRAP, NO_CHANGE_METHOD, RIDGE_METHOD, PerturbationSpec, PerturbResult, shift_table,
    clamp_targets, describe_population, expressed_stats, no_change_baseline, ridge_perturbation,
)
from engine.progress import Progress, report, scaled

if TYPE_CHECKING:  # pragma: no cover
    from engine.atlas import Atlas
    from engine.virtual_cell_landing import Landing

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


def _resample_weights(n: int, n_boot: int, donors: np.ndarray | None,
                      rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """``(n, n_boot)`` bootstrap multiplicities over donors (whole donors) or cells."""
    if n_boot <= 0:
        return np.zeros((n, 0)), "none"
    if donors is not None:
        codes, uniques = pd.factorize(np.asarray(donors))
        draws = rng.integers(0, uniques.size, size=(n_boot, uniques.size))
        return np.stack([np.bincount(d, minlength=uniques.size) for d in draws], axis=1)[codes], "donors"
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).T.astype(np.float64), "cells"


@torch.no_grad()
def model_shift(model: nn.Module, x: np.ndarray | torch.Tensor, targets: Sequence[int], spec: PerturbationSpec, *,
                missing: np.ndarray | torch.Tensor | None = None, gene_labels: Sequence[str] | None = None,
                cap: np.ndarray | None = None, level: np.ndarray | None = None, n_masks: int = DEFAULT_MASKS,
                max_pairs: int | None | str = "auto", donors: np.ndarray | None = None, n_boot: int = 50,
                seed: int = 0, device: str | torch.device | None = None, batch_pairs: int = BATCH_PAIRS,
                progress: Progress | None = None) -> pd.DataFrame:
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
        Over-expression ceiling and silent-cell level per target (see :func:`~engine.perturb.clamp_targets`).
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
    pandas.DataFrame
        The table of :func:`~engine.perturb.ridge_perturbation` (``gene, mean_control, shift,
        ci_low, ci_high, mean_perturbed, is_target``, sorted by ``|shift|``); a target's shift
        is its clamp. ``attrs``: ``method``, ``warnings``, ``silent_targets``, ``bootstrap``,
        ``n_cells``, ``n_masks``, ``n_pairs``, ``device``, ``se_mask`` and ``sd_bootstrap``
        (lists, one value per table row).
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
    weights, bootstrap = _resample_weights(int(covered.sum()), n_boot, None if donors is None
                                           else np.asarray(donors)[covered], rng)
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
    table.attrs.update(method=MODEL_METHOD, warnings=warnings, silent_targets=silent, bootstrap=bootstrap,
                       n_cells=int(n), n_masks=n_masks, n_pairs=int(cell_idx.size), device=str(device),
                       se_mask=se_mask[row].tolist(), sd_bootstrap=sd_boot[row].tolist(),
                       spec=spec.describe([labels[t] for t in targets]))
    return table


# ----------------------------------------------------------------------------- atlas wrapper
@dataclass
class ModelPerturbResult(PerturbResult):
    """A model-based perturbation with its baselines side by side and where the cells land.

    ``table`` is the model's; ``baselines`` maps a method name (no-change, ridge) to a table of
    the same shape over the same cells and genes; ``landing`` is ``None`` with ``landing_note``
    saying why when the bundle's index is not the model's embedding.
    """

    baselines: dict[str, pd.DataFrame] = field(default_factory=dict)
    landing: Landing | None = None
    landing_note: str | None = None


def _load_checked(path: Path) -> tuple[nn.Module, list[str]]:
    """A checkpoint that must hold a masked autoencoder (else a :class:`~engine.errors.BundleError`)."""
    from engine.models.serialize import load_model

    model, genes = load_model(path)
    if not hasattr(model, "decode"):
        raise BundleError(f"This bundle's model is {model.config.get('method')}, not a masked autoencoder: the "
                          "virtual cell needs one (build with `vcell build INPUT --model mae`).")
    return model, genes


def load_mae(atlas: Atlas) -> tuple[nn.Module, list[str]]:
    """The bundle's masked autoencoder and its genes, or a :class:`~engine.errors.BundleError` saying how to get one."""
    method = atlas.manifest.get("model", {}).get("name")
    if method not in ("mae", "gp-mae"):
        raise BundleError(f"This bundle's embedding model is {method or 'none'}, not a masked autoencoder: the "
                          "virtual cell needs one (build with `vcell build INPUT --model mae`).")
    return _load_checked(atlas.path / "model")


def load_mae_ensemble(atlas: Atlas) -> list[tuple[nn.Module, list[str]]]:
    """The bundle's masked autoencoder, then those of its extra training seeds (``--model-seeds``).

    The extra models are ``model_seeds/seed-<k>/`` for every seed ``k`` after the first in the
    manifest's ``model.seeds``; a bundle built without ``--model-seeds`` gives the main model only.

    Raises
    ------
    BundleError
        No masked autoencoder, a seed's checkpoint is missing or not a masked autoencoder, or
        its genes differ from the main model's.
    """
    main = load_mae(atlas)
    models = [main]
    for seed in (atlas.manifest["model"].get("seeds") or [])[1:]:
        path = atlas.path / "model_seeds" / f"seed-{seed}"
        if not path.is_dir():
            raise BundleError(f"The manifest lists model seed {seed} but {path} is missing: rebuild the bundle "
                              "with `vcell build INPUT --model mae --model-seeds N`.")
        model, genes = _load_checked(path)
        if list(genes) != list(main[1]):
            raise BundleError(f"The model of seed {seed} ({path}) was trained on other genes than the bundle's "
                              "model: its predictions cannot be pooled; rebuild the bundle.")
        models.append((model, genes))
    return models


def resolve_targets(atlas: Atlas, genes: Sequence[str], positions: np.ndarray,
                     model_labels: Sequence[str]) -> np.ndarray:
    """Model-gene column of each requested gene; unknown or non-model genes get close model names."""
    model_index = {int(p): i for i, p in enumerate(positions) if p >= 0}
    found, problems = [], []
    for gene in genes:
        try:
            column = atlas.genes.resolve(str(gene))
        except GeneNotFoundError:
            problems.append(f"'{gene}' is not in this atlas.{suggest(str(gene), model_labels, n=3)}")
            continue
        if column not in model_index:
            problems.append(f"'{gene}' is in the atlas but not among the model's {len(model_labels):,} input genes "
                            f"(its highly variable genes), so the model cannot perturb it."
                            f"{suggest(str(gene), model_labels, n=3)}")
            continue
        found.append(model_index[column])
    if problems:
        raise GeneNotFoundError(" ".join(problems))
    if len(set(found)) < len(found):
        raise InputError(f"{', '.join(map(str, genes))} name the same gene more than once: name each gene once.")
    return np.asarray(found, dtype=np.int64)


def perturb_with_model(atlas: Atlas, genes: Sequence[str], mode: str, *, strength: float | None = None,
                       cell_type: str | None = None, condition: str | None = None, max_cells: int | None = 10_000,
                       n_masks: int = DEFAULT_MASKS, max_pairs: int | None | str = "auto", n_boot: int = 50,
                       seed: int = 0, k_neighbours: int = 15, device: str | torch.device | None = None,
                       progress: Progress | None = None) -> ModelPerturbResult:
    """Predict a perturbation in a population of an atlas with its masked autoencoder, beside the baselines.

    The genes are the model's input genes present in the atlas. Over-expression is capped at
    the 99th percentile of the target among expressing cells of the whole atlas, and silent
    cells start from the atlas-wide expressed mean. When the bundle was built with
    ``--model-seeds N``, the N models' predictions are pooled and the intervals include the
    spread between training seeds (:func:`~engine.virtual_cell_ensemble.ensemble_shift`;
    ``table.attrs["n_models"]``). The no-change and ridge baselines run on the same cells,
    genes and clamp; where the perturbed cells land is computed (with the bundle's main model)
    when the bundle's index is the model's embedding.

    Raises
    ------
    GeneNotFoundError
        A gene is not in the atlas or not among the model's genes (close model genes are suggested).
    BundleError
        The bundle has no masked-autoencoder model (build with ``--model mae``).
    InputError
        Bad mode, strength or gene count, or over-expression of a gene the atlas never expresses.
    EmptySelectionError
        The population has no cells.
    """
    from engine.compare import select_cells, subsample
    from engine.models.serialize import align_block, align_genes
    from engine.virtual_cell_ensemble import ensemble_shift
    from engine.virtual_cell_landing import where_cells_go

    spec = PerturbationSpec(genes=list(genes), mode=mode, strength=strength)
    models = load_mae_ensemble(atlas)
    model, model_genes = models[0]
    positions, _ = align_genes(model_genes, atlas.var)
    labels = [atlas.genes.label(int(p)) if p >= 0 else str(g) for p, g in zip(positions, model_genes)]
    targets = resolve_targets(atlas, spec.genes, positions, labels)
    spec.genes = [labels[t] for t in targets]
    report(progress, 0.0, "Selecting cells")
    cells = np.arange(atlas.n_cells)
    if cell_type is not None or condition is not None:
        cells = select_cells(atlas.obs, condition=condition, cell_type=cell_type, roles=atlas.roles)
    chosen = subsample(cells, max_cells, seed)
    everywhere = np.stack([np.asarray(atlas.gene_values(int(positions[t])), dtype=np.float64) for t in targets], 1)
    if spec.mode == "oe":
        for j, label in enumerate(spec.genes):
            if not np.any(everywhere[:, j] > 0):
                raise InputError(f"{label} is never expressed in this atlas: over-expression has no level to "
                                 "scale; pick another gene.")
    cap, level = expressed_stats(everywhere)
    columns = np.unique(positions[positions >= 0])
    report(progress, 0.05, "Reading expression")
    block = atlas.expression(chosen, columns)
    x, missing = align_block(block, np.where(positions >= 0, np.searchsorted(columns, positions), -1))
    donors = None
    donor_key = atlas.roles.get("donor")
    if donor_key is not None and donor_key in atlas.obs.columns:
        values = atlas.obs[donor_key].to_numpy()[chosen]
        donors = values if pd.Series(values).nunique() >= MIN_DONORS_FOR_BOOTSTRAP else None
    table = ensemble_shift([m for m, _ in models], x, targets, spec, missing=missing.numpy(), gene_labels=labels,
                           cap=cap, level=level, n_masks=n_masks, max_pairs=max_pairs, donors=donors, n_boot=n_boot,
                           seed=seed, device=device, progress=scaled(progress, 0.1, 0.7))
    report(progress, 0.7, "Baselines")
    present = np.flatnonzero(~missing.numpy())
    X = x.numpy()[:, present]
    local = np.searchsorted(present, targets)
    kept = [labels[g] for g in present]
    baselines = {NO_CHANGE_METHOD: no_change_baseline(X, local, spec, gene_labels=kept, max_genes=None,
                                                      cap=cap, level=level),
                 RIDGE_METHOD: ridge_perturbation(X, local, spec, gene_labels=kept, max_genes=None, donors=donors,
                                                  n_boot=n_boot, seed=seed, cap=cap, level=level)}
    report(progress, 0.85, "Where the cells go")
    landing, note = where_cells_go(atlas, model, x, missing, targets, spec, cap=cap, level=level,
                                   cells=chosen, k=k_neighbours, seed=seed, device=device)
    report(progress, 1.0, "Perturbation predicted")
    warnings = list(table.attrs["warnings"])
    seeds = f", {len(models)} model seeds" if len(models) > 1 else ""
    method = f"{MODEL_METHOD} ({table.attrs['n_masks']} masks, bootstrap over {table.attrs['bootstrap']}{seeds})"
    return ModelPerturbResult(spec=spec, population=describe_population(cell_type, condition),
                              n_cells=int(chosen.size), table=table, warnings=warnings, method=method,
                              cell_type=cell_type, condition=condition, subsampled=chosen.size < cells.size,
                              baselines=baselines, landing=landing, landing_note=note)
