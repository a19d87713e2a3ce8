"""The masked autoencoder's counterfactual on an atlas: load the bundle's model(s), predict, compare.

:func:`perturb_with_model` selects the population, aligns it to the model's genes, predicts the
shift with :func:`~engine.perturb.ensemble.ensemble_shift` (one model or the seed ensemble), puts the
no-change and ridge baselines on the same cells and genes beside it, and says where the perturbed
cells land (:mod:`engine.perturb.landing`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from engine.bundle.atlas import Atlas
from engine.bundle.select import select_cells, subsample
from engine.errors import BundleError, GeneNotFoundError, InputError, suggest
from engine.models.serialize import align_block, align_genes, load_model
from engine.perturb.coexpression import no_change_baseline, ridge_perturbation
from engine.perturb.ensemble import ensemble_shift
from engine.perturb.landing import Landing, where_cells_go
from engine.perturb.spec import (
    MIN_DONORS_FOR_BOOTSTRAP,
    NO_CHANGE_METHOD,
    RIDGE_METHOD,
    PerturbationSpec,
    PerturbResult,
    describe_population,
    expressed_stats,
)
from engine.perturb.virtual_cell import DEFAULT_MASKS, MODEL_METHOD
from engine.progress import Progress, report, scaled


# ----------------------------------------------------------------------------- atlas wrapper
@dataclass
class ModelPerturbResult(PerturbResult):
    """A model-based perturbation with its baselines side by side and where the cells land.

    ``table`` is the model's; ``baselines`` maps a method name (no-change, ridge) to a table of
    the same shape over the same cells and genes; ``landing`` is ``None`` with ``landing_note``
    saying why when the bundle's index is not the model's embedding. ``n_models`` (training
    seeds pooled), ``n_masks``, ``n_pairs``, ``device``, and the interval's parts ``se_mask``,
    ``sd_bootstrap`` and ``sd_seed`` (aligned with ``table``'s rows) are those of the model's
    :class:`~engine.perturb.virtual_cell.ModelShift`.
    """

    baselines: dict[str, pd.DataFrame] = field(default_factory=dict)
    landing: Landing | None = None
    landing_note: str | None = None
    n_models: int = 1
    n_masks: int = 0
    n_pairs: int = 0
    device: str = "cpu"
    se_mask: np.ndarray | None = None
    sd_bootstrap: np.ndarray | None = None
    sd_seed: np.ndarray | None = None


def _load_checked(path: Path) -> tuple[nn.Module, list[str]]:
    """A checkpoint that must hold a masked autoencoder (else a :class:`~engine.errors.BundleError`)."""

    model, genes = load_model(path)
    if not hasattr(model, "decode"):
        raise BundleError(f"This bundle's model is {model.config.get('method')}, not a masked autoencoder: the "
                          "virtual cell needs one (build with `vcell build INPUT --model mae`).")
    return model, genes


def has_virtual_cell(atlas: Atlas) -> bool:
    """Whether the bundle's embedding model is a masked autoencoder, the model of the virtual cell.

    Parameters
    ----------
    atlas
        The bundle.

    Returns
    -------
    bool
        ``True`` for a bundle built with ``--model mae`` or ``gp-mae``.
    """
    return atlas.manifest.model.name in ("mae", "gp-mae")


def load_mae(atlas: Atlas) -> tuple[nn.Module, list[str]]:
    """The bundle's masked autoencoder and its genes, or a :class:`~engine.errors.BundleError` saying how to get one."""
    if not has_virtual_cell(atlas):
        method = atlas.manifest.model.name
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
    for seed in (atlas.manifest.model.seeds or ())[1:]:
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
    spread between training seeds (:func:`~engine.perturb.ensemble.ensemble_shift`;
    ``n_models``). The no-change and ridge baselines run on the same cells,
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
    prediction = ensemble_shift([m for m, _ in models], x, targets, spec, missing=missing.numpy(),
                                gene_labels=labels, cap=cap, level=level, n_masks=n_masks, max_pairs=max_pairs,
                                donors=donors, n_boot=n_boot, seed=seed, device=device,
                                progress=scaled(progress, 0.1, 0.7))
    report(progress, 0.7, "Baselines")
    present = np.flatnonzero(~missing.numpy())
    X = x.numpy()[:, present]
    local = np.searchsorted(present, targets)
    kept = [labels[g] for g in present]
    baselines = {NO_CHANGE_METHOD: no_change_baseline(X, local, spec, gene_labels=kept, max_genes=None,
                                                      cap=cap, level=level).table,
                 RIDGE_METHOD: ridge_perturbation(X, local, spec, gene_labels=kept, max_genes=None, donors=donors,
                                                  n_boot=n_boot, seed=seed, cap=cap, level=level).table}
    report(progress, 0.85, "Where the cells go")
    landing, note = where_cells_go(atlas, model, x, missing, targets, spec, cap=cap, level=level,
                                   cells=chosen, k=k_neighbours, seed=seed, device=device)
    report(progress, 1.0, "Perturbation predicted")
    seeds = f", {len(models)} model seeds" if len(models) > 1 else ""
    method = f"{MODEL_METHOD} ({prediction.n_masks} masks, bootstrap over {prediction.bootstrap}{seeds})"
    return ModelPerturbResult(spec=spec, population=describe_population(cell_type, condition),
                              n_cells=int(chosen.size), table=prediction.table, warnings=list(prediction.warnings),
                              method=method, cell_type=cell_type, condition=condition,
                              subsampled=chosen.size < cells.size, bootstrap=prediction.bootstrap,
                              baselines=baselines, landing=landing, landing_note=note, n_models=prediction.n_models,
                              n_masks=prediction.n_masks, n_pairs=prediction.n_pairs, device=prediction.device,
                              se_mask=prediction.se_mask, sd_bootstrap=prediction.sd_bootstrap,
                              sd_seed=prediction.sd_seed)
