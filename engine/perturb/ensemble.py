"""Model-seed uncertainty for the virtual cell: pool the predictions of masked autoencoders
trained with different seeds (``vcell build --model mae --model-seeds N``).

Each model runs :func:`~engine.perturb.virtual_cell.model_shift` with the same seed (so the same mask
schedule and bootstrap draws); the point is the mean of the models' shifts and the interval
adds the between-model spread to the average within-model variance (see :func:`ensemble_shift`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from engine.errors import InputError
from engine.perturb.spec import PerturbationSpec, shift_table
from engine.perturb.virtual_cell import Z_95, ModelShift, model_shift
from engine.progress import Progress, scaled


def ensemble_shift(models: Sequence[nn.Module], x: np.ndarray | torch.Tensor, targets: Sequence[int],
                   spec: PerturbationSpec, *, progress: Progress | None = None,
                   **model_shift_kwargs: Any) -> ModelShift:
    """Predict a perturbation's shift with several masked autoencoders (training seeds) and pool them.

    Every model runs :func:`~engine.perturb.virtual_cell.model_shift` with the same arguments, seed
    included, so all see the same masks schedule and bootstrap resamples. The point is the mean
    of the models' shifts and the interval is

    ``point ± 1.96 * sqrt(mean_m(se_mask_m² + sd_bootstrap_m²) + sd_seed²)``

    where ``sd_seed`` is the standard deviation of the shifts between models (``ddof=1``).
    ``sd_seed`` is deliberately *not* divided by the number of models: the interval should
    cover what another training run would predict, not only the uncertainty of the ensemble
    mean. Targets keep their clamp and a zero-width interval.

    Parameters
    ----------
    models
        Masked autoencoders on the same genes, the bundle's main model first
        (:func:`~engine.perturb.virtual_cell.load_mae_ensemble`).
    x, targets, spec
        As for :func:`~engine.perturb.virtual_cell.model_shift`.
    progress
        Optional ``progress(fraction, message)`` callback, shared evenly between the models.
    **model_shift_kwargs
        Passed to every :func:`~engine.perturb.virtual_cell.model_shift` call (``missing``,
        ``gene_labels``, ``n_masks``, ``n_boot``, ``seed``, ...).

    Returns
    -------
    ModelShift
        As :func:`~engine.perturb.virtual_cell.model_shift` returns it (same table columns, sorted by
        ``|shift|``); with one model exactly its result. With several, the fields are the first
        model's with ``se_mask`` and ``sd_bootstrap`` replaced by their root mean square over models,
        ``n_models`` the number of models and ``sd_seed`` the spread between them (aligned with the rows).

    Raises
    ------
    InputError
        No models, or any error of :func:`~engine.perturb.virtual_cell.model_shift`.
    """
    if len(models) == 0:
        raise InputError("No model to predict with: pass at least one masked autoencoder.")
    n = len(models)
    predictions = [model_shift(model, x, targets, spec, progress=scaled(progress, i / n, (i + 1) / n),
                               **model_shift_kwargs) for i, model in enumerate(models)]
    return predictions[0] if n == 1 else _pool(predictions)


def _by_gene(prediction: ModelShift, genes: pd.Index) -> pd.DataFrame:
    """A model's table with its per-row errors as columns, in the order of ``genes``."""
    return (prediction.table.assign(se_mask=prediction.se_mask, sd_bootstrap=prediction.sd_bootstrap)
            .set_index("gene").reindex(genes))


def _pool(predictions: Sequence[ModelShift]) -> ModelShift:
    """Combine the predictions of several models (see :func:`ensemble_shift`) into one of the same shape."""
    genes = pd.Index(predictions[0].table["gene"])
    aligned = [_by_gene(p, genes) for p in predictions]
    shifts = np.stack([a["shift"].to_numpy(np.float64) for a in aligned])
    within = np.mean([a["se_mask"].to_numpy() ** 2 + a["sd_bootstrap"].to_numpy() ** 2 for a in aligned], axis=0)
    is_target = aligned[0]["is_target"].to_numpy(bool)
    point, sd_seed = shifts.mean(axis=0), shifts.std(axis=0, ddof=1)
    point[is_target], sd_seed[is_target] = shifts[0, is_target], 0.0  # the clamp, identical in every model
    half = np.where(is_target, 0.0, Z_95 * np.sqrt(within + sd_seed**2))
    table = shift_table(genes, aligned[0]["mean_control"].to_numpy(), point, point - half, point + half,
                   np.flatnonzero(is_target))
    row = genes.get_indexer(table["gene"])

    def rms(column: str) -> np.ndarray:
        return np.sqrt(np.mean([a[column].to_numpy() ** 2 for a in aligned], axis=0))[row]

    return replace(predictions[0], table=table, se_mask=rms("se_mask"), sd_bootstrap=rms("sd_bootstrap"),
                   sd_seed=sd_seed[row], n_models=len(predictions))
