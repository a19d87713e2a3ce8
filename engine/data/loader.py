"""Streaming mini-batches of cells from a bundle's expression store, for training and embedding.

The whole matrix is never held densely (DESIGN.md, "Scale"): :class:`CellBatches` reads a few
thousand cells at a time from :meth:`ExpressionStore.rows` and densifies one mini-batch at a time.

Shuffling is *block sampling*: the cells (sorted by store position) are cut into contiguous
blocks, the block order is shuffled, and rows are shuffled again inside a buffer of a few
blocks, all from a generator seeded by ``(seed, epoch)``. Reads stay near-contiguous (fast)
while batches still mix cells from different parts of the store.

Sharding: the epoch's cell order is split evenly over DDP ranks (padded by repeating a few
cells, as :class:`torch.utils.data.DistributedSampler` does, so every rank runs the same
number of steps), then each rank's buffers are dealt round-robin to its DataLoader workers.
Every cell is seen once per epoch; the number of batches per rank does not depend on the
number of workers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch.utils.data import IterableDataset, get_worker_info

from engine.data.store import COUNTS, LOGNORM, ExpressionStore
from engine.errors import InputError

__all__ = ["CellBatches", "DonorSplit", "split_by_donor", "distributed_rank"]


def distributed_rank() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: torch.distributed if initialised, else torchrun's env, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class CellBatches(IterableDataset):
    """Mini-batches of cells streamed from an expression store.

    Use with ``torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=...)``: the
    dataset yields ready batches (dicts of tensors).

    Each batch holds ``"x"`` (log-normalised, float32 ``(B, G)``), ``"counts"`` (raw counts,
    float32 ``(B, G)``) and ``"library"`` (float32 ``(B,)``, total counts of each cell over
    *all* genes of the store) when the store has counts, ``"label"`` (int64 ``(B,)``) when
    ``labels`` was given, and ``"cell"`` (int64 ``(B,)``, store positions).

    Parameters
    ----------
    store
        An :class:`~engine.data.store.ExpressionStore` or the path of a bundle's ``store/``
        directory. Each process (DataLoader worker) opens its own handle.
    cells
        Store positions of the cells to serve (any order; duplicates are kept).
    genes
        Gene positions (columns, in model order); ``None`` for all genes.
    batch_size
        Cells per batch.
    shuffle
        Block-shuffle (training); ``False`` serves cells in sorted store order (validation).
    seed
        Seed of the shuffle; the epoch's order is a function of ``(seed, epoch)`` only.
    block_size
        Contiguous cells per shuffled block.
    buffer_size
        Cells read per store request and shuffled together (rounded up to a multiple of
        ``batch_size``; default 16 batches).
    counts
        Include ``"counts"`` and ``"library"``: ``None`` = when the store has counts.
    labels
        Integer label of every store cell (indexed by position), e.g. cell-type codes.
    drop_last
        Drop the last, smaller batch of each rank.
    rank, world_size
        DDP shard of this process; ``None`` = :func:`distributed_rank` at iteration time.
    """

    def __init__(self, store, cells: Sequence[int] | np.ndarray, genes: Sequence[int] | np.ndarray | None = None, *,
                 batch_size: int = 256, shuffle: bool = True, seed: int = 0, block_size: int = 256,
                 buffer_size: int | None = None, counts: bool | None = None, labels: np.ndarray | None = None,
                 drop_last: bool = False, rank: int | None = None, world_size: int | None = None):
        super().__init__()

        if isinstance(store, ExpressionStore):
            self._store = store
            self.store_path = store.path
        else:
            self._store = ExpressionStore(store)
            self.store_path = self._store.path
        self._pid = os.getpid()
        self.cells = np.asarray(cells, dtype=np.int64)
        if self.cells.ndim != 1 or len(self.cells) == 0:
            raise InputError("CellBatches needs a non-empty 1-D list of cell positions.")
        n_cells, n_genes = self._store.n_cells, self._store.n_genes
        if self.cells.min() < 0 or self.cells.max() >= n_cells:
            raise InputError(f"Cell positions must lie in 0..{n_cells - 1}.")
        self.genes = None if genes is None else np.asarray(genes, dtype=np.int64)
        if self.genes is not None and (len(self.genes) == 0 or self.genes.min() < 0 or self.genes.max() >= n_genes):
            raise InputError(f"Gene positions must be a non-empty list within 0..{n_genes - 1}.")
        if batch_size < 1 or block_size < 1:
            raise InputError("batch_size and block_size must be at least 1.")
        has_counts = COUNTS in self._store.layers
        if counts and not has_counts:
            raise InputError("This atlas has no raw counts layer, so batches cannot include counts.")
        self.counts = has_counts if counts is None else bool(counts)
        if labels is not None:
            labels = np.asarray(labels)
            if len(labels) != n_cells:
                raise InputError(f"labels has {len(labels):,} entries for a store of {n_cells:,} cells.")
            labels = labels.astype(np.int64)
        self.labels = labels
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.block_size = int(block_size)
        buffer_size = 16 * self.batch_size if buffer_size is None else int(buffer_size)
        self.buffer_size = max(1, math.ceil(buffer_size / self.batch_size)) * self.batch_size
        self.drop_last = bool(drop_last)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    # -- state -----------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffle the next iteration uses (call before ``iter``)."""
        self.epoch = int(epoch)

    @property
    def n_genes(self) -> int:
        """Width of ``x``."""
        return self._open().n_genes if self.genes is None else len(self.genes)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_store"] = None  # each worker opens its own handle (no pickled memmaps or SOMA handles)
        return state

    def _open(self):
        if self._store is None or self._pid != os.getpid():

            self._store = ExpressionStore(self.store_path)
            self._pid = os.getpid()
        return self._store

    def _shard(self) -> tuple[int, int]:
        if self.rank is not None:
            return int(self.rank), int(self.world_size or 1)
        return distributed_rank()

    # -- order -----------------------------------------------------------------------------
    def epoch_order(self) -> np.ndarray:
        """All cells in this epoch's order (before sharding)."""
        cells = np.sort(self.cells, kind="stable")
        if not self.shuffle:
            return cells
        rng = np.random.default_rng([self.seed, self.epoch])
        starts = np.arange(0, len(cells), self.block_size)
        order = rng.permutation(len(starts))
        return np.concatenate([cells[s:s + self.block_size] for s in starts[order]])

    def rank_cells(self, rank: int | None = None, world_size: int | None = None) -> np.ndarray:
        """This rank's cells for the current epoch (even split, padded by repeating cells)."""
        if rank is None:
            rank, world_size = self._shard()
        order = self.epoch_order()
        per_rank = math.ceil(len(order) / world_size)
        if per_rank * world_size > len(order):
            order = np.concatenate([order, order[: per_rank * world_size - len(order)]])
        return order[rank * per_rank:(rank + 1) * per_rank]

    def __len__(self) -> int:
        """Batches per rank and epoch."""
        _, world_size = self._shard()
        per_rank = math.ceil(len(self.cells) / world_size)
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    # -- iteration -------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        cells = self.rank_cells()
        if self.drop_last:
            cells = cells[: len(cells) // self.batch_size * self.batch_size]
        info = get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        buffers = range(0, len(cells), self.buffer_size)
        rng = np.random.default_rng([self.seed, self.epoch, *self._shard(), worker])
        for i, start in enumerate(buffers):
            if i % n_workers != worker:
                continue
            chunk = cells[start:start + self.buffer_size]
            x, counts, library = self._read(chunk)
            perm = rng.permutation(len(chunk)) if self.shuffle else np.arange(len(chunk))
            for b in range(0, len(chunk), self.batch_size):
                rows = perm[b:b + self.batch_size]
                yield self._batch(chunk[rows], x[rows], None if counts is None else counts[rows],
                                  None if library is None else library[rows])

    def _read(self, chunk: np.ndarray):
        """Read a buffer: lognorm (and counts) of ``chunk`` restricted to ``genes`` (sparse)."""

        store = self._open()
        x = store.rows(chunk, self.genes, layer=LOGNORM)
        if not np.isfinite(x.data).all():
            bad = chunk[np.unique(np.nonzero(~np.isfinite(x.toarray()))[0])]
            raise InputError(f"The log-normalised expression has NaN or infinite values in {len(bad):,} cells "
                             f"(e.g. cell {int(bad[0])}): rebuild the bundle from clean counts.")
        if not self.counts:
            return x, None, None
        full = store.rows(chunk, None, layer=COUNTS)
        if not np.isfinite(full.data).all():
            raise InputError("The raw counts have NaN or infinite values: rebuild the bundle from clean counts.")
        library = np.asarray(full.sum(axis=1), dtype=np.float32).ravel()
        counts = full if self.genes is None else full[:, self.genes]
        return x, counts, library

    def _batch(self, cells, x: sp.csr_matrix, counts, library) -> dict[str, torch.Tensor]:
        batch = {"x": torch.from_numpy(x.toarray().astype(np.float32, copy=False)),
                 "cell": torch.from_numpy(cells.astype(np.int64))}
        if counts is not None:
            batch["counts"] = torch.from_numpy(counts.toarray().astype(np.float32, copy=False))
            batch["library"] = torch.from_numpy(library)
        if self.labels is not None:
            batch["label"] = torch.from_numpy(self.labels[cells])
        return batch


class DonorSplit(NamedTuple):
    """A train / validation split of cells (store positions, sorted)."""

    train_cells: np.ndarray
    val_cells: np.ndarray
    val_donors: list[str]
    note: str


def split_by_donor(obs: pd.DataFrame, donor_key: str | None, val_fraction: float = 0.2, seed: int = 0,
                   cells: np.ndarray | None = None) -> DonorSplit:
    """Hold out whole donors for validation.

    Donors are drawn in a seeded random order until the held-out cells reach
    ``val_fraction`` of ``cells`` (at least one donor held out, at least one kept). With fewer
    than two donors (or no donor column) it falls back to a random cell split and says so in
    ``note``.

    Parameters
    ----------
    obs
        Per-cell metadata, row order = store order.
    donor_key
        The donor column (``atlas.roles["donor"]``), or ``None``.
    val_fraction
        Target fraction of cells held out (0 < f < 1).
    seed
        Seed of the donor draw.
    cells
        Restrict the split to these positions (e.g. a subsample); default all cells.
    """
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"val_fraction must lie strictly between 0 and 1 (got {val_fraction}).")
    cells = np.arange(len(obs), dtype=np.int64) if cells is None else np.sort(np.asarray(cells, dtype=np.int64))
    if len(cells) < 2:
        raise InputError("At least two cells are needed to split training from validation.")
    rng = np.random.default_rng(seed)
    donors = None
    if donor_key is not None and donor_key in obs.columns:
        donors = obs[donor_key].to_numpy()[cells].astype(str)
    if donors is None or len(np.unique(donors)) < 2:
        why = "no donor column" if donors is None else "only one donor"
        n_val = min(max(1, int(round(val_fraction * len(cells)))), len(cells) - 1)
        val_mask = np.zeros(len(cells), dtype=bool)
        val_mask[rng.choice(len(cells), n_val, replace=False)] = True
        return DonorSplit(cells[~val_mask], cells[val_mask], [],
                          f"{why}: validated on a random {n_val:,} of {len(cells):,} cells, not on held-out donors")
    names, sizes = np.unique(donors, return_counts=True)
    target = val_fraction * len(cells)
    held: list[str] = []
    total = 0
    for i in rng.permutation(len(names)):
        if len(held) == len(names) - 1 or (held and total >= target):
            break
        held.append(str(names[i]))
        total += int(sizes[i])
    val_mask = np.isin(donors, held)
    note = (f"validated on {len(held)} held-out donor{'s' if len(held) > 1 else ''} "
            f"({int(val_mask.sum()):,} of {len(cells):,} cells)")
    return DonorSplit(cells[~val_mask], cells[val_mask], sorted(held), note)
