"""Training a model with PyTorch Lightning on cells streamed from an expression store.

:func:`train_model` streams mini-batches from a store (:class:`~engine.data.loader.CellBatches`),
validates on the held-out cells of a :class:`~engine.data.loader.DonorSplit`, keeps the best
Lightning checkpoint, resumes an interrupted run from ``out/lightning/last.ckpt``, and finally
writes our checkpoint format (:func:`engine.models.serialize.save_model`) to ``out/model``
atomically. CPU or GPU is chosen automatically; several processes (DDP) work under ``torchrun``.
It knows no bundle: :func:`engine.build.pretrain.pretrain` picks a bundle's genes, cells and
labels and calls it.
"""

from __future__ import annotations

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

from engine.data.loader import CellBatches, DonorSplit
from engine.data.store import ExpressionStore
from engine.errors import InputError, VCellError
from engine.fileio import atomic_dir, write_json
from engine.models.masking import programmes_from_coexpression
from engine.models.serialize import save_model
from engine.models.ssl import build_model, config_keys
from engine.progress import Progress, report

__all__ = ["SSLTask", "CellDataModule", "train_model", "method_config", "check_training", "torchrun_devices",
           "TrainingDiverged"]


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


def check_training(method: str, epochs: int, batch_size: int) -> None:
    """Raise an :class:`~engine.errors.InputError` for an unknown method or impossible training settings."""
    config_keys(method)
    if epochs < 1 or batch_size < 2:
        raise InputError("epochs must be at least 1 and batch_size at least 2.")


def method_config(method: str, store, genes: np.ndarray, train_cells: np.ndarray, *,
                  labels: np.ndarray | None = None, seed: int = 0, config: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """A model's settings completed from the data: the class count (supervised), programmes (gp-mae).

    Parameters
    ----------
    method
        The method (see :func:`engine.models.ssl.build_model`).
    store
        The expression store (``.rows(cells, genes)``); gp-mae learns its gene programmes from the
        co-expression of up to 5,000 seeded training cells.
    genes
        The model's input genes (store positions).
    train_cells
        The training cells (store positions).
    labels
        Integer class of every store cell (``supervised``: required).
    seed
        Seed of the cell sample and the programme clustering.
    config
        Settings given; they win over the ones derived here.

    Returns
    -------
    dict
        The settings for :func:`~engine.models.ssl.build_model`.
    """
    config = dict(config or {})
    if method == "supervised":
        if labels is None:
            raise InputError("Supervised training needs a label (cell-type code) for every cell.")
        config.setdefault("n_classes", int(np.max(labels)) + 1)
    if method == "gp-mae" and "programmes" not in config:
        sample = np.sort(np.random.default_rng(seed).choice(train_cells, min(5000, len(train_cells)), replace=False))
        programmes = programmes_from_coexpression(store.rows(sample, genes), seed=seed)
        config["programmes"] = [np.asarray(p).tolist() for p in programmes]
    return config


def train_model(store: str | os.PathLike | ExpressionStore, method: str, genes: np.ndarray, gene_names: Sequence[str],
                split: DonorSplit, *, out: str | os.PathLike, labels: np.ndarray | None = None, epochs: int = 10,
                batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 1e-2, seed: int = 0,
                resume: bool = True, devices: Any = "auto", strategy: Any = "auto", accelerator: str = "auto",
                num_workers: int | None = None, progress: Progress | None = None, progress_bar: bool = False,
                callbacks: Sequence[L.Callback] = (), record: dict[str, Any] | None = None,
                **model_config) -> Path:
    """Train a model of ``method`` on store cells and write our checkpoint to ``out/model``.

    Parameters
    ----------
    store
        An :class:`~engine.data.store.ExpressionStore` or the path of a bundle's ``store/``.
    method
        ``mae``, ``gp-mae``, ``byol``, ``barlow`` or ``supervised`` (see :func:`engine.models.ssl.build_model`).
    genes, gene_names
        The model's input genes: store positions (in model order) and their names (written with the
        checkpoint).
    split
        Training and validation cells (:func:`engine.data.loader.split_by_donor`).
    out
        Run directory: ``lightning/`` (Lightning's checkpoints, for resuming), ``model/`` (ours),
        ``history.json``.
    labels
        Integer class of every store cell (``supervised`` only).
    epochs, batch_size, lr, weight_decay, seed
        Training settings; a fixed seed reproduces the run (on the same device and process count).
    resume
        Continue from ``out/lightning/last.ckpt`` when it exists; ``False`` starts afresh.
    devices, strategy, accelerator
        Passed to :class:`lightning.Trainer` (``"auto"`` picks a GPU when present). Under
        ``torchrun`` the process count comes from torchrun.
    num_workers
        DataLoader worker processes per rank; ``None``: 0 on CPU, up to 4 with a GPU.
    progress, progress_bar
        An engine progress callback; Lightning's tqdm bar (for the CLI).
    callbacks
        Further Lightning callbacks.
    record
        Further entries of the checkpoint's training record (e.g. ``source``).
    **model_config
        Settings of the model (``hidden``, ``latent``, ``mask_rate``, ...).

    Returns
    -------
    pathlib.Path
        ``out/model``, the checkpoint directory (written by rank 0 only).
    """
    check_training(method, epochs, batch_size)
    store = store if isinstance(store, ExpressionStore) else ExpressionStore(store)
    genes = np.asarray(genes, dtype=np.int64)
    if len(gene_names) != len(genes):
        raise InputError(f"{len(gene_names):,} gene names were given for {len(genes):,} gene positions.")
    out = Path(out)
    ckpt_dir = out / "lightning"
    L.seed_everything(seed, workers=True, verbose=False)
    config = method_config(method, store, genes, split.train_cells, labels=labels, seed=seed,
                           config=model_config)
    L.seed_everything(seed, workers=True, verbose=False)
    model = build_model(method, len(genes), **config)
    task = SSLTask(model, lr=lr, weight_decay=weight_decay)
    if num_workers is None:
        num_workers = min(4, max((os.cpu_count() or 1) - 1, 0)) if torch.cuda.is_available() else 0
    data = CellDataModule(store.path, split.train_cells, split.val_cells, genes, batch_size=batch_size,
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
            "world_size": trainer.world_size, **(record or {}),
        }}
        with atomic_dir(target, overwrite=True) as tmp:
            save_model(tmp, model, [str(g) for g in gene_names], extra=extra)
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
