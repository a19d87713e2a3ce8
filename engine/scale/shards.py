"""Sharded embedding across processes: each rank embeds one contiguous block of rows.

For atlases too large for one process to embed in good time, ``vcell embed-shards`` runs a
Lightning prediction under DDP: each process (rank ``r`` of ``world``) embeds one contiguous,
balanced block of rows (:func:`shard_ranges`) and writes ``embedding-<r>-of-<world>.npy`` plus a
small JSON record (rows, model and bundle hashes). No distributed sampler pads the ranks, so no
cell is embedded twice. Indexing the shards and merging them into one embedding and one FAISS
index is :mod:`engine.scale.merge`.

Under ``torchrun`` or SLURM's ``srun`` the ranks come from the environment (README, "Beyond one
machine"); locally ``--devices N`` starts N processes (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import os
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from engine.build.model_genes import model_gene_columns
from engine.bundle.atlas import read_atlas
from engine.errors import InputError
from engine.fileio import atomic_path, write_json
from engine.models.inference import embed_input, model_input
from engine.models.serialize import load_model
from engine.models.train import torchrun_devices
from engine.scale.records import ShardRecord, checkpoint_hash, shard_ranges, shard_stem
from engine.scale.shard_index import index_shard, train_shared_index

__all__ = ["embed_shards"]


class _RowBlocks(Dataset):
    """Model inputs for consecutive blocks of one rank's rows; the store is opened in the reading process."""

    def __init__(self, bundle: Path, start: int, stop: int, batch_size: int, read: np.ndarray,
                 columns: np.ndarray):
        self.bundle, self.start, self.stop, self.batch_size = bundle, start, stop, batch_size
        self.read, self.columns = read, columns
        self._store = None

    def __len__(self) -> int:
        return -(-(self.stop - self.start) // self.batch_size)

    def __getitem__(self, i: int) -> dict[str, Any]:

        if self._store is None:
            self._store = read_atlas(self.bundle).store
        first = self.start + i * self.batch_size
        rows = np.arange(first, min(first + self.batch_size, self.stop))
        x, missing = model_input(self._store, rows, self.read, self.columns)
        return {"x": x, "missing": missing, "start": int(first)}


class _EmbedTask(L.LightningModule):
    """Prediction-only module: this rank's rows in, embeddings out."""

    def __init__(self, model: torch.nn.Module, bundle: Path, n_cells: int, batch_size: int, read: np.ndarray,
                 columns: np.ndarray, num_workers: int = 0):
        super().__init__()
        self.model = model.eval()
        self.bundle, self.n_cells, self.batch_size = bundle, n_cells, batch_size
        self.read, self.columns, self.num_workers = read, columns, num_workers

    def rows(self) -> tuple[int, int]:
        """This rank's ``(start, stop)``."""
        return shard_ranges(self.n_cells, self.trainer.world_size)[self.trainer.global_rank]

    def predict_dataloader(self) -> DataLoader:
        start, stop = self.rows()
        # spawn, not fork: forking after TileDB has started its threads can deadlock
        extra = {"multiprocessing_context": "spawn"} if self.num_workers else {}
        return DataLoader(_RowBlocks(self.bundle, start, stop, self.batch_size, self.read, self.columns),
                          batch_size=None, shuffle=False, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available(), **extra)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:

        return {"start": int(batch["start"]), "z": embed_input(self.model, batch["x"], batch["missing"]).float()}


class _ShardWriter(BasePredictionWriter):
    """Writes each batch into this rank's memory-mapped shard; renames it into place when the rank is done."""

    def __init__(self, out_dir: Path, dim: int, record: dict[str, Any]):
        super().__init__(write_interval="batch")
        self.out_dir, self.dim, self.record = out_dir, dim, record
        self._stack: ExitStack | None = None
        self._array: np.ndarray | None = None
        self._start = 0
        self.written: ShardRecord | None = None

    def on_predict_start(self, trainer, pl_module) -> None:
        rank, world = trainer.global_rank, trainer.world_size
        self._start, stop = pl_module.rows()
        self._stack = ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.out_dir / (shard_stem(rank, world) + ".npy")))
        self._array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(stop - self._start, self.dim))
        self.written = ShardRecord(rank=rank, world_size=world, start=self._start, stop=stop, dim=self.dim,
                                   **self.record)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        z = prediction["z"].cpu().numpy()
        first = prediction["start"] - self._start
        self._array[first:first + len(z)] = z

    def on_predict_end(self, trainer, pl_module) -> None:
        self._array.flush()
        del self._array
        self._array = None
        self._stack.close()  # the shard's rename: complete or absent
        # an index of this rank's previous rows is stale now (rebuilt by --factory or at the merge)
        (self.out_dir / (shard_stem(self.written.rank, self.written.world_size, "index") + ".json")).unlink(
            missing_ok=True)
        write_json(self.out_dir / (shard_stem(self.written.rank, self.written.world_size) + ".json"),
                   self.written.__dict__)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._array = None
        if self._stack is not None:
            self._stack.__exit__(type(exception), exception, exception.__traceback__)  # drops the temporary file


def _cluster_devices(devices: Any, num_nodes: int | None) -> tuple[Any, int]:
    """Processes per node and node count: from torchrun or SLURM when they started us, else as given."""

    devices = torchrun_devices(devices)
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env and "LOCAL_WORLD_SIZE" in env and "WORLD_SIZE" in env:
        num_nodes = num_nodes or max(int(env["WORLD_SIZE"]) // int(env["LOCAL_WORLD_SIZE"]), 1)
    elif "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        if devices == "auto" and "SLURM_NTASKS_PER_NODE" in env:
            devices = int(env["SLURM_NTASKS_PER_NODE"].split("(")[0])
        num_nodes = num_nodes or int(env.get("SLURM_NNODES", "1"))
    return devices, int(num_nodes or 1)


def embed_shards(bundle: str | os.PathLike, checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *,
                 devices: Any = "auto", num_nodes: int | None = None, accelerator: str = "auto",
                 strategy: Any = None, batch_size: int = 4096, factory: str | None = None, metric: str = "l2",
                 seed: int = 0, min_overlap: float = 0.5, num_workers: int | None = None,
                 progress_bar: bool = False) -> ShardRecord:
    """Embed a bundle's cells with a saved model, one contiguous shard of rows per process.

    Every process of the run calls this (Lightning starts the local ones for ``devices > 1``;
    ``torchrun`` / ``srun`` start them on a cluster).

    Parameters
    ----------
    bundle
        The bundle whose cells to embed (on a file system every process reads).
    checkpoint
        A saved model directory (:func:`engine.models.serialize.save_model`).
    out_dir
        Directory for the shards (shared by all processes).
    devices, num_nodes, accelerator, strategy
        As for :class:`lightning.Trainer`. ``devices`` is the process count per node (``"auto"``:
        one, or what torchrun / SLURM started); ``strategy=None`` means ``"ddp"`` with more than
        one process. ``accelerator="auto"`` uses GPUs when present, else CPU (gloo).
    batch_size
        Cells per forward pass and per store read.
    factory, metric, seed
        With a FAISS factory (``"Flat"``, ``"IVF1024,Flat"``, ...), rank 0 trains one shared
        empty index on a seeded sample of all shards (:func:`train_shared_index`) and each rank
        adds its rows to a copy (:func:`index_shard`); ``None``: embeddings only (merging builds
        the index).
    min_overlap
        Least fraction of the model's genes the bundle must have.
    num_workers
        DataLoader processes reading the store per rank; ``None``: 0 on CPU, up to 4 with a GPU.
    progress_bar
        Lightning's progress bar on rank 0 (for the CLI).

    Returns
    -------
    ShardRecord
        This rank's shard.
    """

    bundle, checkpoint, out_dir = Path(bundle), Path(checkpoint), Path(out_dir)
    if batch_size < 1:
        raise InputError(f"--batch-size is {batch_size}: give at least 1 cell per batch.")
    atlas = read_atlas(bundle)
    model, genes = load_model(checkpoint)
    read, columns = model_gene_columns(atlas, genes, min_overlap)
    with torch.inference_mode():
        dim = int(model.embed(torch.zeros(1, len(genes))).shape[1])
    record = {"n_cells": int(atlas.n_cells), "method": str(model.config.get("method", "model")),
              "model_hash": checkpoint_hash(checkpoint), "gene_hash": atlas.manifest.gene_hash,
              "bundle": str(bundle.resolve()), "checkpoint": str(checkpoint.resolve())}
    devices, num_nodes = _cluster_devices(devices, num_nodes)
    if strategy is None:
        many = num_nodes > 1 or (devices not in ("auto", 1, "1") and not (isinstance(devices, list) and len(devices) == 1))
        strategy = "ddp" if many or "WORLD_SIZE" in os.environ else "auto"
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = _ShardWriter(out_dir, dim, record)
    callbacks: list[L.Callback] = [writer]
    if progress_bar:
        callbacks.append(L.pytorch.callbacks.TQDMProgressBar())
    trainer = L.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                        use_distributed_sampler=False, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=progress_bar, callbacks=callbacks,
                        default_root_dir=out_dir, inference_mode=True)
    if num_workers is None:
        num_workers = min(4, max((os.cpu_count() or 1) - 1, 0)) if torch.cuda.is_available() else 0
    task = _EmbedTask(model, bundle, atlas.n_cells, batch_size, read, columns, num_workers)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*infer the batch indices.*")  # the writer needs none
        trainer.predict(task, return_predictions=False)
    shard = writer.written
    if factory is not None:

        _barrier(trainer)
        if trainer.is_global_zero:
            train_shared_index(out_dir, factory, metric=metric, seed=seed, world_size=shard.world_size)
        _barrier(trainer)
        index_shard(out_dir, shard.rank, shard.world_size)
    _barrier(trainer)
    return shard


def _barrier(trainer: L.Trainer) -> None:
    if trainer.world_size > 1:
        trainer.strategy.barrier()


