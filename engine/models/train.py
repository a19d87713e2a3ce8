"""Pretraining encoders with PyTorch Lightning, and embedding an atlas with a trained model.

:func:`pretrain` streams mini-batches from a bundle's store (:class:`~engine.data.loader.CellBatches`),
validates on held-out donors, keeps the best Lightning checkpoint, resumes an interrupted run
from ``out/lightning/last.ckpt``, and finally writes our checkpoint format
(:func:`engine.models.serialize.save_model`) to ``out/model`` atomically. CPU or GPU is chosen
automatically; several processes (DDP) work under ``torchrun``::

    torchrun --standalone --nproc_per_node=2 -m engine.models.train BUNDLE --method mae --epochs 2 --out RUN
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from engine.data.loader import CellBatches, split_by_donor
from engine.errors import InputError, VCellError
from engine.progress import Progress, report

__all__ = ["SSLTask", "CellDataModule", "pretrain", "embed_atlas", "model_gene_columns", "model_input", "embed_input",
           "embed_rows", "resolve_genes", "TrainingDiverged"]


class TrainingDiverged(VCellError):
    """The loss became NaN or infinite."""


class SSLTask(L.LightningModule):
    """A LightningModule around any model of the contract (``training_loss(batch) -> {"loss": ...}``).

    Parameters
    ----------
    model
        The ``nn.Module`` to train.
    lr, weight_decay
        AdamW settings.
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, weight_decay: float = 1e-2):
        super().__init__()
        self.model = model
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        x = batch["x"]
        if not torch.isfinite(x).all():
            raise InputError("A training batch contains NaN or infinite expression values: rebuild the bundle "
                             "from clean counts.")
        losses = self.model.training_loss(batch)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"The {stage} loss became {loss.item()} at epoch {self.current_epoch}: "
                                   "lower the learning rate (lr) and train again.")
        for key, value in losses.items():
            self.log(f"{stage}/{key}", value.detach().float(), prog_bar=key == "loss", on_step=stage == "train",
                     on_epoch=True, batch_size=len(x), sync_dist=stage == "val")
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        hook = getattr(self.model, "on_after_optimizer_step", None)
        if callable(hook):  # models needing a post-step update; BYOL moves its EMA target in training_loss
            hook()

    def on_train_epoch_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if isinstance(datamodule, CellDataModule):
            datamodule.set_epoch(self.current_epoch)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)


class CellDataModule(L.LightningDataModule):
    """Training and validation :class:`CellBatches`, sharded by the trainer's rank.

    ``counts``: include raw counts in batches (``None``: when the store has them; ``False``
    skips reading them, which halves the store reads for models that do not use them).
    """

    def __init__(self, store_path: Path, train_cells: np.ndarray, val_cells: np.ndarray, genes: np.ndarray, *,
                 batch_size: int, seed: int, num_workers: int = 0, labels: np.ndarray | None = None,
                 counts: bool | None = None):
        super().__init__()
        self.counts = counts
        self.store_path, self.genes, self.labels = Path(store_path), genes, labels
        self.train_cells, self.val_cells = train_cells, val_cells
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self._train: CellBatches | None = None

    def _loader(self, cells: np.ndarray, shuffle: bool) -> DataLoader:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        data = CellBatches(self.store_path, cells, self.genes, batch_size=self.batch_size, shuffle=shuffle,
                           seed=self.seed, labels=self.labels, counts=self.counts, rank=rank, world_size=world,
                           drop_last=shuffle and len(cells) >= 2 * self.batch_size * world)
        # spawn, not fork: forking after TileDB has started its threads can deadlock
        extra = {"multiprocessing_context": "spawn", "persistent_workers": False} if self.num_workers else {}
        loader = DataLoader(data, batch_size=None, num_workers=self.num_workers,
                            pin_memory=torch.cuda.is_available(), **extra)
        if shuffle:
            self._train = data
        return loader

    def set_epoch(self, epoch: int) -> None:
        if self._train is not None:
            self._train.set_epoch(epoch)

    def train_dataloader(self):
        return self._loader(self.train_cells, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.val_cells, shuffle=False)


class _History(L.Callback):
    """Per-epoch metrics, kept in Lightning's checkpoint so a resumed run has the whole history."""

    def __init__(self):
        self.epochs: list[dict[str, float]] = []

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith("val/") or k.endswith("_epoch")}
        self._record(trainer, metrics)

    def on_train_epoch_end(self, trainer, pl_module):
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.endswith("_epoch")}
        self._record(trainer, metrics)

    def _record(self, trainer, metrics):
        entry = next((e for e in self.epochs if e["epoch"] == trainer.current_epoch), None)
        if entry is None:
            entry = {"epoch": trainer.current_epoch}
            self.epochs.append(entry)
        entry.update({k.replace("_epoch", ""): v for k, v in metrics.items()})

    def state_dict(self):
        return {"epochs": json.dumps(self.epochs)}

    def load_state_dict(self, state_dict):
        self.epochs = json.loads(state_dict["epochs"])


class _ProgressHook(L.Callback):
    """Drives an engine :data:`~engine.progress.Progress` callback from training steps."""

    def __init__(self, progress: Progress, epochs: int):
        self.progress, self.epochs = progress, epochs

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        n = max(int(trainer.num_training_batches) if math.isfinite(trainer.num_training_batches) else 1, 1)
        done = (trainer.current_epoch + (batch_idx + 1) / n) / self.epochs
        report(self.progress, 0.02 + 0.93 * done, f"training: epoch {trainer.current_epoch + 1}/{self.epochs}")


def resolve_genes(atlas, genes: str | Sequence | np.ndarray) -> np.ndarray:
    """Gene positions for ``genes``: ``"hvg"``, ``"all"``, positions, or ids / symbols."""
    if isinstance(genes, str):
        if genes == "all":
            return np.arange(atlas.n_genes)
        if genes == "hvg":
            var = atlas.var
            if "highly_variable" not in var or not var["highly_variable"].any():
                raise InputError("This atlas marks no highly variable genes: use genes='all' or give a gene list.")
            return np.flatnonzero(var["highly_variable"].to_numpy())
        raise InputError(f"Unknown gene selection '{genes}': use 'hvg', 'all' or a list of genes.")
    genes = list(genes)
    if genes and all(isinstance(g, (int, np.integer)) for g in genes):
        return np.asarray(genes, dtype=np.int64)
    return np.asarray(atlas.genes.resolve_many([str(g) for g in genes]), dtype=np.int64)


def _model_config(method: str, atlas, genes: np.ndarray, train_cells: np.ndarray, seed: int,
                  config: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray | None]:
    """Fill in what the method needs from the data: labels (supervised), programmes (gp-mae)."""
    config = dict(config)
    labels = None
    if method == "supervised":
        key = atlas.roles.get("cell_type")
        if key is None:
            raise InputError("Supervised training needs cell-type labels, and this atlas has none.")
        codes = atlas.obs[key].astype("category").cat.codes.to_numpy()
        if (codes < 0).any():
            raise InputError(f"Some cells have no '{key}' label: supervised training needs every cell labelled.")
        labels = codes.astype(np.int64)
        config.setdefault("n_classes", int(codes.max()) + 1)
    if method == "gp-mae" and "programmes" not in config:
        from engine.models.masking import programmes_from_coexpression

        sample = np.sort(np.random.default_rng(seed).choice(train_cells, min(5000, len(train_cells)), replace=False))
        x = atlas.store.rows(sample, genes)
        config["programmes"] = [np.asarray(p).tolist() for p in programmes_from_coexpression(x, seed=seed)]
    return config, labels


def _needs_counts(method: str, config: dict[str, Any]) -> bool | None:
    """Raw counts in batches: for the NB decoder and the contrastive count-aware augmentations."""
    return None if method in ("byol", "barlow") or config.get("decoder") == "nb" else False


def torchrun_devices(devices):
    """Under torchrun, Lightning must be told the processes torchrun started on this node."""
    if devices == "auto" and "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_WORLD_SIZE" in os.environ:
        return int(os.environ["LOCAL_WORLD_SIZE"])
    return devices


def _valid_checkpoint(path: Path) -> bool:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)  # our own file, written by this run
        return isinstance(state, dict) and "state_dict" in state
    except Exception:
        return False


def pretrain(bundle_or_atlas, method: str, *, genes: str | Sequence = "hvg", epochs: int = 10,
             batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 1e-2, seed: int = 0,
             out: str | os.PathLike, resume: bool = True, devices: Any = "auto", strategy: Any = "auto",
             accelerator: str = "auto", val_fraction: float = 0.2, max_cells: int | None = None,
             cells: np.ndarray | None = None, num_workers: int | None = None, progress: Progress | None = None,
             progress_bar: bool = False,
             callbacks: Sequence[L.Callback] = (), **model_config) -> Path:
    """Pretrain an encoder on a bundle and write it to ``out/model``.

    Parameters
    ----------
    bundle_or_atlas
        A bundle path or an :class:`~engine.bundle.atlas.Atlas`.
    method
        ``mae``, ``gp-mae``, ``byol``, ``barlow`` or ``supervised`` (see :func:`engine.models.ssl.build_model`).
    genes
        ``"hvg"`` (default), ``"all"``, or a list of gene ids / symbols / positions.
    epochs, batch_size, lr, weight_decay, seed
        Training settings; a fixed seed reproduces the run (on the same device and process count).
    out
        Run directory: ``lightning/`` (Lightning's checkpoints, for resuming), ``model/`` (ours).
    resume
        Continue from ``out/lightning/last.ckpt`` when it exists; ``False`` starts afresh.
    devices, strategy, accelerator
        Passed to :class:`lightning.Trainer` (``"auto"`` picks a GPU when present). Under
        ``torchrun`` the process count comes from torchrun.
    val_fraction
        Fraction of cells held out for validation, as whole donors (:func:`split_by_donor`).
    max_cells
        Train on a seeded random subset of this many cells.
    cells
        Train (and validate) only on these atlas rows, e.g. all but a held-out population;
        ``max_cells`` then subsamples them.
    num_workers
        DataLoader worker processes per rank; ``None``: 0 on CPU, up to 4 with a GPU.
    progress, progress_bar
        An engine progress callback; Lightning's tqdm bar (for the CLI).
    callbacks
        Further Lightning callbacks.
    **model_config
        Settings of the model (``hidden``, ``latent``, ``mask_rate``, ...).

    Returns
    -------
    pathlib.Path
        ``out/model``, the checkpoint directory (written by rank 0 only).
    """
    from engine.bundle.atlas import Atlas, read_atlas
    from engine.fileio import atomic_dir, write_json
    from engine.models.ssl import build_model, config_keys

    config_keys(method)  # unknown method: InputError before any work
    if epochs < 1 or batch_size < 2:
        raise InputError("epochs must be at least 1 and batch_size at least 2.")
    atlas = bundle_or_atlas if isinstance(bundle_or_atlas, Atlas) else read_atlas(bundle_or_atlas)
    out = Path(out)
    ckpt_dir = out / "lightning"
    report(progress, 0.0, "preparing data")
    L.seed_everything(seed, workers=True, verbose=False)
    gene_pos = resolve_genes(atlas, genes)
    if cells is not None:
        cells = np.unique(np.asarray(cells, dtype=np.int64))
        if cells.size < 2 or cells[0] < 0 or cells[-1] >= atlas.n_cells:
            raise InputError(f"cells must name at least two rows of the atlas's {atlas.n_cells:,} cells.")
    pool = np.arange(atlas.n_cells) if cells is None else cells
    if max_cells is not None and max_cells < pool.size:
        cells = np.sort(np.random.default_rng(seed).choice(pool, int(max_cells), replace=False))
    split = split_by_donor(atlas.obs, atlas.roles.get("donor"), val_fraction, seed=seed, cells=cells)
    config, labels = _model_config(method, atlas, gene_pos, split.train_cells, seed, model_config)
    L.seed_everything(seed, workers=True, verbose=False)
    model = build_model(method, len(gene_pos), **config)
    task = SSLTask(model, lr=lr, weight_decay=weight_decay)
    if num_workers is None:
        num_workers = min(4, max((os.cpu_count() or 1) - 1, 0)) if torch.cuda.is_available() else 0
    data = CellDataModule(atlas.store.path, split.train_cells, split.val_cells, gene_pos, batch_size=batch_size,
                          seed=seed, num_workers=num_workers, labels=labels, counts=_needs_counts(method, config))

    last = ckpt_dir / "last.ckpt"
    ckpt_path = None
    if resume and last.exists():
        if _valid_checkpoint(last):
            ckpt_path = str(last)
        else:
            warnings.warn(f"{last} is unreadable (interrupted while writing?): starting afresh.", stacklevel=2)
    if ckpt_path is None and ckpt_dir.exists() and int(os.environ.get("RANK", 0)) == 0:
        shutil.rmtree(ckpt_dir)
    best = L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, filename="best-{epoch}", monitor="val/loss",
                                               mode="min", save_top_k=1, save_last=True)
    history = _History()
    extra_callbacks = [best, history, *callbacks]
    if progress is not None:
        extra_callbacks.append(_ProgressHook(progress, epochs))
    if progress_bar:
        extra_callbacks.append(L.pytorch.callbacks.TQDMProgressBar())
    trainer = L.Trainer(max_epochs=epochs, accelerator=accelerator, devices=torchrun_devices(devices),
                        strategy=strategy, deterministic="warn", callbacks=extra_callbacks,
                        enable_progress_bar=progress_bar, enable_model_summary=False, logger=False,
                        default_root_dir=out, num_sanity_val_steps=0, log_every_n_steps=10)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*IterableDataset.*__len__.*")
        trainer.fit(task, datamodule=data, ckpt_path=ckpt_path)
    if trainer.interrupted:
        raise KeyboardInterrupt(f"Training was interrupted; run again with resume=True to continue from {last}.")

    target = out / "model"
    if trainer.is_global_zero:
        report(progress, 0.96, "writing the checkpoint")
        best_path = best.best_model_path
        if best_path:
            state = torch.load(best_path, map_location="cpu", weights_only=False)["state_dict"]
            task.load_state_dict(state)
        model = task.model.cpu().eval()
        extra = {"training": {
            "epochs": epochs, "seed": seed, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size,
            "best_epoch": _best_epoch(best_path), "best_val_loss": _float(best.best_model_score),
            "history": history.epochs, "n_train_cells": int(len(split.train_cells)),
            "n_val_cells": int(len(split.val_cells)), "val_donors": split.val_donors, "split": split.note,
            "world_size": trainer.world_size, "source": str(atlas.path),
        }}
        with atomic_dir(target, overwrite=True) as tmp:
            from engine.models.serialize import save_model

            save_model(tmp, model, [str(g) for g in atlas.var.index[gene_pos]], extra=extra)
        write_json(out / "history.json", extra["training"])
    if trainer.world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
    report(progress, 1.0, "done")
    return target


def _float(value) -> float | None:
    return None if value is None else float(value)


def _best_epoch(path: str) -> int | None:
    name = Path(path).stem if path else ""
    return int(name.split("epoch=")[1].split("-")[0]) if "epoch=" in name else None


@torch.inference_mode()
def embed_atlas(atlas, model: nn.Module, genes: Sequence, batch_size: int = 4096, progress: Progress | None = None,
                device: str | torch.device | None = None, min_overlap: float = 0.5,
                cells: tuple[int, int] | None = None) -> np.ndarray:
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
    device
        ``None``: CUDA when present, else CPU.
    cells
        ``(start, stop)``: embed only rows ``start .. stop - 1`` (one shard of a sharded run,
        :mod:`engine.scale.shards`); ``None``: every cell.

    Returns
    -------
    numpy.ndarray
        float32 ``(n_cells, latent)`` (``(stop - start, latent)`` with ``cells``).
    """
    from engine.bundle.atlas import Atlas, read_atlas

    atlas = atlas if isinstance(atlas, Atlas) else read_atlas(atlas)
    start, stop = (0, atlas.n_cells) if cells is None else (int(cells[0]), int(cells[1]))
    if not 0 <= start <= stop <= atlas.n_cells:
        raise InputError(f"cells {start}..{stop} is not a row range of the atlas's {atlas.n_cells:,} cells.")
    read, columns = model_gene_columns(atlas, genes, min_overlap)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    was_training = model.training
    model = model.to(device).eval()
    out = None
    try:
        for first in range(start, stop, batch_size):
            rows = np.arange(first, min(first + batch_size, stop))
            z = embed_rows(model, atlas.store, rows, read, columns, device).numpy()
            if out is None:
                out = np.empty((stop - start, z.shape[1]), dtype=np.float32)
            out[rows - start] = z
            report(progress, (rows[-1] + 1 - start) / max(stop - start, 1), "embedding cells")
    finally:
        model.train(was_training)
    if out is None:  # no rows: the width still comes from the model
        out = np.empty((0, int(model.config.get("latent", 0)) if hasattr(model, "config") else 0), dtype=np.float32)
    return out


def model_gene_columns(atlas, genes: Sequence, min_overlap: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """What to read from the store for a model's genes, and where each model gene lies in what was read.

    Returns
    -------
    read, columns
        Atlas gene positions to read (the model genes the atlas has, in model order), and for each
        model gene its column in a block read with ``read`` (-1: missing from the atlas), for
        :func:`engine.models.serialize.align_block`.
    """
    from engine.models.serialize import align_genes

    if all(isinstance(g, str) for g in genes):
        positions, _ = align_genes(list(genes), atlas.var, min_overlap=min_overlap)
    else:
        positions = resolve_genes(atlas, genes)
    present = positions >= 0
    return positions[present], _compact(present)


def model_input(store, rows: np.ndarray, read: np.ndarray, columns: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's input ``(x, missing)`` for atlas ``rows`` (see :func:`model_gene_columns`)."""
    from engine.models.serialize import align_block

    x, missing = align_block(store.rows(rows, read), columns)
    if not torch.isfinite(x).all():
        raise InputError(f"Cells {rows[0]}..{rows[-1]} have NaN or infinite expression values: "
                         "rebuild the bundle from clean counts.")
    return x, missing


def embed_input(model: nn.Module, x: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """``model.embed`` of one input block, telling the model its unobserved genes when there are any."""
    return model.embed(x, missing) if bool(missing.any()) else model.embed(x)


@torch.inference_mode()
def embed_rows(model: nn.Module, store, rows: np.ndarray, read: np.ndarray, columns: np.ndarray,
               device: torch.device) -> torch.Tensor:
    """Float32 CPU embedding of atlas ``rows`` by an eval-mode ``model`` already on ``device``."""
    x, missing = model_input(store, rows, read, columns)
    return embed_input(model, x.to(device), missing.to(device)).float().cpu()


def _compact(present: np.ndarray) -> np.ndarray:
    """Column of each present model gene within a block read with only the present genes (-1: missing)."""
    columns = np.full(len(present), -1, dtype=np.int64)
    columns[present] = np.arange(int(present.sum()))
    return columns


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m engine.models.train BUNDLE --method mae --epochs 2 --out RUN`` (works under torchrun)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--method", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--genes", default="hvg")
    parser.add_argument("--max-cells", type=int, default=None)
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("--config", default="{}", help="model settings as JSON, e.g. '{\"hidden\": [64]}'")
    args = parser.parse_args(argv)
    path = pretrain(args.bundle, args.method, genes=args.genes, epochs=args.epochs, batch_size=args.batch_size,
                    lr=args.lr, seed=args.seed, out=args.out, resume=not args.no_resume, max_cells=args.max_cells,
                    progress_bar=True, **json.loads(args.config))
    if int(os.environ.get("RANK", 0)) == 0:
        print(path)


if __name__ == "__main__":
    main()
