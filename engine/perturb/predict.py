"""The virtual cell on an atlas: one entry point that picks the predictor (:func:`perturb`), and which
predictors a bundle offers (:func:`available_methods`, :func:`default_method`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from engine.bundle.atlas import Atlas
from engine.bundle.select import select_cells, subsample
from engine.errors import InputError
from engine.perturb.coexpression import ridge_perturbation
from engine.perturb.counterfactual import has_virtual_cell, perturb_with_model
from engine.perturb.spec import (
    MIN_DONORS_FOR_BOOTSTRAP,
    RIDGE_METHOD,
    PerturbationSpec,
    PerturbResult,
    describe_population,
    expressed_stats,
)
from engine.progress import Progress, report


def available_methods(atlas: Atlas) -> list[str]:
    """The predictors :func:`perturb` can use on ``atlas``, the default first.

    Parameters
    ----------
    atlas
        The bundle.

    Returns
    -------
    list of str
        ``["model", "ridge"]`` when the bundle's model is a masked autoencoder (the virtual cell,
        with its baselines), else ``["ridge"]`` (the co-expression baseline).
    """
    return ["model", "ridge"] if has_virtual_cell(atlas) else ["ridge"]


def default_method(atlas: Atlas) -> str:
    """The predictor to use on ``atlas`` when none is chosen.

    Parameters
    ----------
    atlas
        The bundle.

    Returns
    -------
    str
        ``"model"`` when the bundle has a masked autoencoder, else ``"ridge"``.
    """
    return available_methods(atlas)[0]


def perturb(atlas: Atlas, genes: Sequence[str], mode: str, *, strength: float | None = None,
            cell_type: str | None = None, condition: str | None = None, max_cells: int | None = 10_000,
            seed: int = 0, n_boot: int = 50, method: str = "ridge", progress: Progress | None = None) -> PerturbResult:
    """Predict a knock-out / knock-down / over-expression in a population of an atlas (ridge baseline).

    ``method="model"`` hands over to :func:`engine.perturb.counterfactual.perturb_with_model` (the bundle's
    masked autoencoder, with the baselines side by side); ``"ridge"`` is described below.

    The gene set is the atlas's highly variable genes (``atlas.var["highly_variable"]`` when
    present, otherwise all genes) plus the targets, further bounded to the 2,000 most variable
    in the population. Over-expression multiplies each cell's value (cells below the
    population's mean among expressing cells start from that mean) and is capped at the 99th
    percentile of the target among expressing cells of the whole atlas. The bootstrap resamples
    donors when the population has at least :data:`MIN_DONORS_FOR_BOOTSTRAP` of them, cells
    otherwise.

    Parameters
    ----------
    atlas
        The bundle.
    genes
        Target genes (symbols or Ensembl IDs; see :class:`~engine.perturb.spec.PerturbationSpec`).
    mode, strength
        ``"ko"``, ``"kd"`` (keep ``strength`` of the value, default 0.5) or ``"oe"`` (multiply by
        ``strength``, default 4.0).
    cell_type, condition
        The population (``None``: every cell type / condition).
    max_cells
        Subsample the population reproducibly to this many cells (``None``: all).
    seed
        Seed of the subsample and the bootstrap.
    n_boot
        Bootstrap resamples for the 95% intervals.
    method
        ``"ridge"`` (co-expression baseline) or ``"model"`` (the bundle's masked autoencoder).
    progress
        Progress callback.

    Returns
    -------
    PerturbResult
        The predicted shift per gene with intervals (``table``), the population and its size, and
        warnings; a :class:`~engine.perturb.counterfactual.ModelPerturbResult` for ``"model"``.

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

    prediction = ridge_perturbation(X, np.searchsorted(gene_set, target_ids), spec, n_boot=n_boot, seed=seed,
                                    gene_labels=[all_labels[g] for g in gene_set], donors=donors, cap=cap,
                                    progress=sub_progress)
    spec.genes = labels
    warnings = list(prediction.warnings)
    type_key = atlas.roles.get("cell_type")
    if cell_type is None and type_key is not None and type_key in atlas.obs.columns:
        n_types = pd.Series(atlas.obs[type_key].to_numpy()[chosen]).nunique()
        if n_types > 1:
            warnings.append(f"The population mixes {n_types} cell types, so differences between cell types drive "
                            "this co-expression baseline: pick one cell type for a sharper prediction.")
    method = f"{RIDGE_METHOD} (bootstrap over {prediction.bootstrap})"
    return PerturbResult(spec=spec, population=describe_population(cell_type, condition), n_cells=int(chosen.size),
                         table=prediction.table, warnings=warnings, method=method, cell_type=cell_type,
                         condition=condition, subsampled=chosen.size < cells.size, bootstrap=prediction.bootstrap)
