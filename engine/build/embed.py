"""A learned embedding for a bundle: pretrain (or load) an encoder, embed every cell, and
make that embedding the one the map, the index and the neighbours use.

:func:`embed_atlas` embeds a bundle's cells with any model (genes aligned by name);
:func:`add_embedding` adds a saved model's embedding to a bundle beside the default one.

Called by ``vcell build --model mae|gp-mae|byol|barlow|PATH`` on the bundle being built
(inside its temporary directory, so the whole build stays atomic). The PCA embedding stays
in the bundle as the baseline (``obsm/X_pca.npy``, checkpoint in ``baselines/pca/``).
With ``--model-seeds N`` (mae / gp-mae only) N-1 more masked autoencoders are trained with
seeds ``seed+1 .. seed+N-1`` on the same genes and cells and kept as ``model_seeds/seed-<k>/``
(``k`` the training seed), for the virtual cell's model-seed uncertainty
(:func:`engine.perturb.virtual_cell.load_mae_ensemble`).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.build.model_genes import model_gene_columns
from engine.build.pretrain import pretrain
from engine.bundle.atlas import Atlas, read_atlas
from engine.bundle.manifest import (
    BaselineModel,
    ExtraModel,
    IndexEntry,
    LayoutInfo,
    Manifest,
    ModelInfo,
    write_manifest,
)
from engine.errors import InputError
from engine.evaluate.metrics import knn_label_agreement
from engine.fileio import write_npy
from engine.models.checkpoint import load_checkpoint
from engine.models.inference import embed_store
from engine.models.serialize import load_model
from engine.models.ssl import METHODS
from engine.progress import Progress, report, scaled
from engine.space.index import build_index, save_index
from engine.space.layout import umap_layout

SEEDED_METHODS = ("mae", "gp-mae")
PRETRAIN_SHARE = 0.6  # of the progress bar, for all trainings together


def check_model_seeds(model: str | None, n_seeds: int) -> None:
    """Raise an :class:`~engine.errors.InputError` unless ``n_seeds`` models can be trained for ``model``.

    More than one seed is only meaningful for a masked autoencoder trained here (``mae``,
    ``gp-mae``): the extra seeds feed the virtual cell's model-seed uncertainty.
    """
    if n_seeds < 1:
        raise InputError(f"--model-seeds is {n_seeds}: train at least one model (1 is the default).")
    if n_seeds > 1 and model not in SEEDED_METHODS:
        raise InputError(f"--model-seeds {n_seeds} trains extra masked autoencoders for the virtual cell's "
                         f"model-seed uncertainty, so it needs --model mae or --model gp-mae"
                         f"{f', not {model}' if model else ''}.")


def embedding_name(method: str) -> str:
    """The obsm key of a method's embedding: ``mae`` -> ``X_mae``, ``gp-mae`` -> ``X_gp_mae``."""
    return "X_" + method.replace("-", "_")


def embed_atlas(atlas: Atlas | str | Path, model: nn.Module, genes: Sequence, batch_size: int = 4096,
                progress: Progress | None = None, device: str | torch.device | None = None,
                min_overlap: float = 0.5, cells: tuple[int, int] | None = None) -> np.ndarray:
    """Embed every cell of ``atlas`` (or the rows ``cells``) with ``model``, streaming the store in row order.

    Gene names are aligned to the atlas by Ensembl ID or symbol; model genes the atlas lacks
    are filled with 0 and passed to ``model.embed`` as unobserved (masked) genes. Fewer than
    ``min_overlap`` of the model's genes in the atlas is refused with the overlap stated.

    Parameters
    ----------
    atlas
        An :class:`~engine.bundle.atlas.Atlas` (or bundle path).
    model
        A model with ``.embed(x)``.
    genes
        The model's input genes in order: positions, or gene ids / symbols of the atlas.
    batch_size
        Cells per forward pass (and per store read).
    progress
        An engine progress callback.
    device
        ``None``: CUDA when present, else CPU.
    min_overlap
        Least fraction of the model's genes the atlas must have.
    cells
        ``(start, stop)``: embed only rows ``start .. stop - 1`` (one shard of a sharded run,
        :mod:`engine.scale.shards`); ``None``: every cell.

    Returns
    -------
    numpy.ndarray
        float32 ``(n_cells, latent)`` (``(stop - start, latent)`` with ``cells``).
    """
    atlas = atlas if isinstance(atlas, Atlas) else read_atlas(atlas)
    start, stop = (0, atlas.n_cells) if cells is None else (int(cells[0]), int(cells[1]))
    if not 0 <= start <= stop <= atlas.n_cells:
        raise InputError(f"cells {start}..{stop} is not a row range of the atlas's {atlas.n_cells:,} cells.")
    read, columns = model_gene_columns(atlas, genes, min_overlap)
    return embed_store(model, atlas.store, read, columns, start, stop, batch_size=batch_size, device=device,
                       progress=progress)


def add_learned_embedding(bundle: str | Path, manifest: Manifest, model: str, *, epochs: int = 10, seed: int = 0,
                          n_seeds: int = 1, n_landmarks: int = 15_000, progress: Progress | None = None) -> Manifest:
    """Pretrain ``model`` (a method name) or load it (a checkpoint directory), embed the bundle's
    cells, and rebuild index and layout on that embedding.

    Parameters
    ----------
    bundle
        A complete bundle directory (typically the temporary one of a build).
    manifest
        Its manifest, as written; the returned copy describes the new default embedding.
    model
        ``mae``, ``gp-mae``, ``byol``, ``barlow`` or the path of a saved model checkpoint.
    epochs, seed
        Training settings (ignored for a checkpoint).
    n_seeds
        Masked autoencoders to train (``mae``, ``gp-mae`` only when above 1): the first with
        ``seed`` becomes the bundle's model, the others (seeds ``seed+1 ..``) are kept in
        ``model_seeds/seed-<k>/``; the manifest's model entry lists all seeds.
    n_landmarks
        Layout landmarks.

    Returns
    -------
    The updated manifest (the caller writes it).

    Raises
    ------
    InputError
        ``model`` is neither a method nor a checkpoint, is ``supervised``, or ``n_seeds > 1``
        for a method other than ``mae`` / ``gp-mae``.
    """

    check_model_seeds(model, n_seeds)
    bundle = Path(bundle)
    atlas = Atlas(bundle)
    seeds: list[int] = []
    if model in METHODS:
        if model == "supervised":
            raise InputError("--model supervised is a baseline for evaluation, not a self-supervised embedding: "
                             "use mae, gp-mae, byol or barlow.")
        seeds = [seed + k for k in range(n_seeds)]
        for i, run_seed in enumerate(seeds):
            run = bundle / ("training" if i == 0 else f"training-seed-{run_seed}")
            share = scaled(progress, PRETRAIN_SHARE * i / n_seeds, PRETRAIN_SHARE * (i + 1) / n_seeds)
            report(share, 0.0, f"pretraining {model} for {epochs} epochs"
                   + (f" (seed {run_seed}, {i + 1} of {n_seeds})" if n_seeds > 1 else ""))
            pretrain(atlas, model, epochs=epochs, seed=run_seed, out=run, progress=share)
            if i > 0:
                _store_run(run, bundle / "model_seeds" / f"seed-{run_seed}")
        checkpoint = bundle / "training" / "model"
        method = model
    else:
        checkpoint = Path(model)
        if not checkpoint.exists():
            raise InputError(f"--model {model} is neither a method ({', '.join(m for m in METHODS if m != 'supervised')}) "
                             "nor an existing model checkpoint directory.")
        method = None
    encoder, genes = load_model(checkpoint)
    method = method or encoder.config.get("method", "model")
    report(progress, PRETRAIN_SHARE, "embedding every cell")
    embedding = embed_atlas(atlas, encoder, genes, progress=scaled(progress, PRETRAIN_SHARE, 0.75))
    name = embedding_name(method)
    write_npy(bundle / "obsm" / f"{name}.npy", embedding.astype(np.float32))

    report(progress, 0.75, "building the FAISS index of the learned embedding")
    index, index_info = build_index(embedding, seed=seed)
    save_index(index, bundle / "index" / f"{name}.faiss")
    (bundle / "index" / "X_pca.faiss").unlink()
    report(progress, 0.8, "computing the UMAP layout of the learned embedding")
    coords, layout_params = umap_layout(embedding, n_landmarks=n_landmarks, seed=seed,
                                        progress=scaled(progress, 0.8, 0.98))
    write_npy(bundle / "obsm" / "X_umap.npy", coords)

    (bundle / "baselines").mkdir(exist_ok=True)
    (bundle / "model").rename(bundle / "baselines" / "pca")
    if seeds:  # trained here: keep the run's record, drop Lightning's checkpoints
        _store_run(bundle / "training", bundle / "model")
    else:
        shutil.copytree(checkpoint, bundle / "model")

    quality = dict(manifest.quality)
    if "knn_label_agreement" in quality and not manifest.harmonisation.cell_types_are_clusters:
        quality["pca_knn_label_agreement"] = quality.pop("knn_label_agreement")
        quality.pop("knn_label_agreement_macro", None)
        quality.update(knn_label_agreement(index, embedding, atlas.obs["cell_type"], seed=seed))
    quality["index_recall_at_10"] = index_info.recall_at_10 if index_info.recall_at_10 is not None else 1.0
    config = {k: v for k, v in encoder.config.items() if isinstance(v, (str, int, float, bool, list))}
    record = load_checkpoint(bundle / "model").config.get("training") or {}
    training = {k: record[k] for k in ("epochs", "seed", "lr", "batch_size", "best_epoch", "best_val_loss",
                                       "n_train_cells", "n_val_cells", "val_donors", "split") if k in record}
    hvg = list(atlas.var.index[atlas.var["highly_variable"].to_numpy()])
    baseline = BaselineModel(name="pca", path="baselines/pca", n_components=manifest.model.n_components,
                             explained_variance=manifest.model.explained_variance)
    return manifest.with_default_embedding(
        name, model=ModelInfo(name=method, n_components=int(embedding.shape[1]),
                              genes="highly_variable" if list(genes) == hvg else "custom", n_genes=len(genes),
                              source=str(model), config=config, training=training, seeds=tuple(seeds) or None,
                              baseline=baseline),
        index=IndexEntry.of(name, index_info), layout=LayoutInfo(embedding=name, **layout_params), quality=quality)


def add_embedding(bundle: str | Path, checkpoint: str | Path, *, progress: Progress | None = None) -> str:
    """Embed a bundle's cells with a saved model and register the embedding (not as default).

    The embedding is written atomically, then the manifest (the commit point) lists it; the
    map, index and default stay as they are.

    Parameters
    ----------
    bundle
        The bundle directory (changed in place).
    checkpoint
        A saved model directory (e.g. ``RUN/model`` from :func:`~engine.build.pretrain.pretrain`).
    progress
        Progress callback.

    Returns
    -------
    str
        The embedding's name, ``X_<method>`` (``obsm/X_<method>.npy``).
    """

    atlas = Atlas(bundle)
    model, genes = load_model(checkpoint)
    name = embedding_name(model.config.get("method", "model"))
    embedding = embed_atlas(atlas, model, genes, progress=progress)
    write_npy(atlas.path / "obsm" / f"{name}.npy", embedding.astype(np.float32))
    config = {k: v for k, v in model.config.items() if isinstance(v, (str, int, float, bool))}
    write_manifest(atlas.path, atlas.manifest.with_embedding(
        name, ExtraModel(source=str(checkpoint), n_genes=len(genes), config=config)))
    return name


def _store_run(run: Path, model_dir: Path) -> None:
    """Copy a pretraining run's checkpoint to ``model_dir`` with its training record, then drop the run."""
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(run / "model", model_dir)
    _keep_training_record(run, model_dir)
    shutil.rmtree(run)


def _keep_training_record(run: Path, model_dir: Path) -> None:
    """Keep the small training history beside the checkpoint; Lightning's checkpoints are dropped."""
    for record in run.glob("*.json"):
        shutil.copy(record, model_dir / f"training_{record.name}")
