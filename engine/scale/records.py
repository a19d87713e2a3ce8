"""What a sharded embedding leaves on disk: row ranges per rank, shard file names, and their records.

Each rank of :func:`engine.scale.shards.embed_shards` writes ``<stem>.npy`` and a JSON record
(:class:`ShardRecord`) of the rows, model and genes it embedded; :func:`read_shards` reads and
checks them for the index step (:mod:`engine.scale.shard_index`) and the merge (:mod:`engine.scale.merge`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import InputError

TRAINED = "trained.faiss"
"""The empty, trained index every shard adds its rows to."""


def shard_ranges(n_cells: int, world_size: int) -> list[tuple[int, int]]:
    """Contiguous, balanced ``(start, stop)`` row ranges, one per rank, covering ``0 .. n_cells`` once.

    The first ``n_cells % world_size`` ranks get one row more; ranks beyond ``n_cells`` get empty ranges.
    """
    if world_size < 1 or n_cells < 0:
        raise InputError(f"Cannot split {n_cells} cells over {world_size} processes: need at least one process.")
    base, extra = divmod(int(n_cells), int(world_size))
    bounds = np.concatenate([[0], np.cumsum([base + (r < extra) for r in range(world_size)])])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def shard_stem(rank: int, world_size: int, kind: str = "embedding") -> str:
    """File stem of a rank's shard: ``embedding-00001-of-00004`` (``kind``: ``embedding`` or ``index``)."""
    return f"{kind}-{rank:05d}-of-{world_size:05d}"


def checkpoint_hash(checkpoint: Path) -> str:
    """sha256 over a checkpoint directory's files (names and contents), so shards of different models never mix."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(checkpoint).rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(checkpoint)).encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass
class ShardRecord:
    """One rank's embedding shard, as recorded in ``embedding-<r>-of-<w>.json``."""

    rank: int
    world_size: int
    start: int
    stop: int
    n_cells: int
    dim: int
    method: str
    model_hash: str
    gene_hash: str
    bundle: str
    checkpoint: str

    @property
    def path(self) -> str:
        """File name of the shard's embedding (beside the record)."""
        return shard_stem(self.rank, self.world_size) + ".npy"


def read_shards(out_dir: str | os.PathLike, world_size: int | None = None) -> list[ShardRecord]:
    """The shard records in ``out_dir``, checked to cover every cell exactly once with one model.

    Raises
    ------
    InputError
        No shards, shards of several runs (world sizes), a missing or unfinished shard, ranges
        that overlap or leave a gap, or shards of different models, bundles or widths.
    """
    out_dir = Path(out_dir)
    records = []
    for path in sorted(out_dir.glob("embedding-*-of-*.json")):
        try:
            records.append(ShardRecord(**json.loads(path.read_text())))
        except (ValueError, TypeError) as exc:
            raise InputError(f"The shard record {path} is unreadable ({exc}): run embed-shards again.") from exc
    if world_size is not None:
        records = [r for r in records if r.world_size == world_size]
    if not records:
        raise InputError(f"{out_dir} holds no finished embedding shards (embedding-*-of-*.json): "
                         "run `vcell embed-shards` first.")
    worlds = sorted({r.world_size for r in records})
    if len(worlds) > 1:
        raise InputError(f"{out_dir} holds shards of runs with different process counts ({', '.join(map(str, worlds))}): "
                         "remove the old run's files or use a fresh directory.")
    world = worlds[0]
    ranks = [r.rank for r in records]
    missing = sorted(set(range(world)) - set(ranks))
    if missing:
        raise InputError(f"Shard(s) {', '.join(map(str, missing))} of {world} are missing or unfinished in {out_dir}: "
                         "run embed-shards again (a rank may have failed).")
    for field, what in (("model_hash", "models"), ("gene_hash", "bundles (gene lists)"), ("n_cells", "cell counts"),
                        ("dim", "embedding widths")):
        values = {getattr(r, field) for r in records}
        if len(values) > 1:
            raise InputError(f"The shards in {out_dir} come from different {what}: re-embed them with one model "
                             "and bundle in a fresh directory.")
    records.sort(key=lambda r: (r.start, r.stop))
    end = 0
    for r in records:
        if r.start != end:
            problem = "overlap" if r.start < end else "leave a gap"
            raise InputError(f"Shard {r.rank} of {world} starts at row {r.start} but the shards before it end at "
                             f"{end}: the shards {problem}. Re-embed them in a fresh directory.")
        end = r.stop
    if end != records[0].n_cells:
        raise InputError(f"The shards cover rows 0..{end} of {records[0].n_cells:,} cells: re-embed them.")
    for r in records:
        path = out_dir / r.path
        if not path.exists():
            raise InputError(f"Shard {r.rank}'s embedding {path} is missing: run embed-shards again.")
        shape = np.load(path, mmap_mode="r").shape
        if shape != (r.stop - r.start, r.dim):
            raise InputError(f"Shard {path} has shape {shape}, its record says {(r.stop - r.start, r.dim)}: re-embed.")
    return sorted(records, key=lambda r: r.rank)
