"""FAISS indexes over embedding shards: one trained (empty) index shared by all ranks, one filled index per shard."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np

from engine.errors import InputError
from engine.fileio import write_json
from engine.scale.records import TRAINED, ShardRecord, read_shards, shard_stem
from engine.space.index import CHUNK, load_index, metric_type, save_index, train_on_sample


def _rows(out_dir: Path, records: list[ShardRecord], rows: np.ndarray) -> np.ndarray:
    """Embedding of sorted global ``rows``, gathered from the memory-mapped shards."""
    parts = []
    for r in records:
        mine = rows[(rows >= r.start) & (rows < r.stop)]
        if len(mine):
            parts.append(np.asarray(np.load(out_dir / r.path, mmap_mode="r")[mine - r.start], dtype=np.float32))
    return np.concatenate(parts)


def train_shared_index(out_dir: str | os.PathLike, factory: str, *, metric: str = "l2", seed: int = 0,
                       world_size: int | None = None) -> Path:
    """Train one empty FAISS index on a seeded sample of all shards; every shard index copies it.

    The sample is :data:`engine.space.index.TRAIN_PER_LIST` vectors per inverted list (all cells when
    fewer), drawn over the whole atlas. Writes ``trained.faiss`` and ``trained.json`` (with a
    fresh key that the shard indexes record, so stale ones are never merged).
    """
    import faiss


    out_dir = Path(out_dir)
    records = read_shards(out_dir, world_size)
    n, dim = records[0].n_cells, records[0].dim
    try:
        index = faiss.index_factory(dim, factory, metric_type(metric))
    except RuntimeError as exc:
        raise InputError(f"FAISS cannot make the index '{factory}' ({str(exc).strip().splitlines()[-1]}).") from exc
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None and not isinstance(index, faiss.IndexFlatCodes):
        raise InputError(f"The index '{factory}' cannot be built in shards and merged: use Flat or an IVF factory "
                         "(e.g. IVF4096,Flat or IVF4096_HNSW32,Flat).")
    n_train = train_on_sample(index, n, lambda rows: _rows(out_dir, records, rows), np.random.default_rng(seed))
    save_index(index, out_dir / TRAINED)
    write_json(out_dir / "trained.json", {"factory": factory, "metric": metric, "seed": seed, "n_train": n_train,
                                          "world_size": records[0].world_size, "key": uuid.uuid4().hex,
                                          "model_hash": records[0].model_hash})
    return out_dir / TRAINED


def index_shard(out_dir: str | os.PathLike, rank: int, world_size: int) -> Path:
    """Add rank ``rank``'s rows to a copy of the shared trained index (ids = atlas rows); write it atomically."""
    import faiss


    out_dir = Path(out_dir)
    trained = json.loads((out_dir / "trained.json").read_text())
    record = ShardRecord(**json.loads((out_dir / (shard_stem(rank, world_size) + ".json")).read_text()))
    index = load_index(out_dir / TRAINED)
    ivf = faiss.try_extract_index_ivf(index)
    x = np.load(out_dir / record.path, mmap_mode="r")
    for first in range(0, len(x), CHUNK):
        block = np.ascontiguousarray(x[first:first + CHUNK], dtype=np.float32)
        if ivf is not None:
            index.add_with_ids(block, np.arange(record.start + first, record.start + first + len(block), dtype=np.int64))
        else:  # flat codes hold no ids: shards are appended in row order at the merge
            index.add(block)
    stem = shard_stem(rank, world_size, "index")
    save_index(index, out_dir / f"{stem}.faiss")
    write_json(out_dir / f"{stem}.json", {"key": trained["key"], "rank": rank, "world_size": world_size,
                                          "start": record.start, "stop": record.stop, "ntotal": int(index.ntotal)})
    return out_dir / f"{stem}.faiss"
