"""FAISS indexes over embedding shards, and the merge of the shards into one embedding and one index.

The second half of sharded embedding (:mod:`engine.scale.shards`): with a FAISS factory, rank 0
trains one empty index on a sample of all shards (:func:`train_shared_index`, ``trained.faiss``)
and every rank adds its own rows to a copy (:func:`index_shard`, ids = atlas rows).
:func:`merge_shards` (``vcell merge-shards``) checks the shards cover every cell exactly once,
concatenates them (memory-mapped) into ``embedding.npy`` and merges the shard indexes into
``index.faiss`` (inverted lists moved with ``merge_from``; flat codes appended in row order),
giving the same index as adding every row to the same trained index in one process; it can
register the result in the bundle. Every file is written atomically.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.build.embed import embedding_name
from engine.bundle.atlas import read_atlas
from engine.bundle.manifest import ExtraModel, IndexEntry, Manifest, write_manifest
from engine.errors import BundleError, InputError
from engine.fileio import atomic_path, write_json
from engine.progress import Progress, report
from engine.scale.records import ShardRecord, checkpoint_hash, read_shards, shard_stem
from engine.scale.shard_index import index_shard, train_shared_index
from engine.space.index import (
    CHUNK,
    IndexInfo,
    choose_factory,
    load_index,
    save_index,
    tune_nprobe,
)

__all__ = ["merge_shards", "MergeResult"]


@dataclass
class MergeResult:
    """What :func:`merge_shards` wrote."""

    embedding: Path
    index: Path
    info: dict
    name: str
    bundle: Path | None = None


def _shard_indexes_ready(out_dir: Path, records: list[ShardRecord], factory: str | None, metric: str) -> bool:
    """Whether every shard has an index built from the current trained index (of ``factory`` when given)."""
    path = out_dir / "trained.json"
    if not path.exists():
        return False
    trained = json.loads(path.read_text())
    if (factory is not None and trained["factory"] != factory) or trained["metric"] != metric \
            or trained.get("model_hash") != records[0].model_hash or trained.get("world_size") != records[0].world_size:
        return False
    for r in records:
        meta = out_dir / (shard_stem(r.rank, r.world_size, "index") + ".json")
        if not meta.exists() or json.loads(meta.read_text()).get("key") != trained["key"]:
            return False
    return True


def merge_shards(out_dir: str | os.PathLike, *, bundle: str | os.PathLike | None = None, factory: str | None = None,
                 metric: str = "l2", target_recall: float = 0.95, seed: int = 0,
                 progress: Progress | None = None) -> MergeResult:
    """Concatenate the embedding shards and merge their FAISS indexes into one.

    Shard indexes left by ``embed-shards --factory`` are used as they are (when ``factory`` is
    ``None`` or the same); otherwise the shared index is trained and the shard indexes built
    here, one after the other. IVF inverted lists are moved with ``merge_from`` (ids are
    already atlas rows); flat codes are appended in row order. For IVF, ``nprobe`` is then
    tuned to ``target_recall`` as in :func:`engine.space.index.build_index`.

    Parameters
    ----------
    out_dir
        The directory ``embed-shards`` wrote.
    bundle
        Also register the merged embedding and index in this bundle (the one embedded): written
        to ``obsm/X_<method>.npy`` and ``index/X_<method>.faiss``, then listed in the manifest
        (the commit point), without changing the default embedding.
    factory, metric
        FAISS factory (``None``: that of the shard indexes, else :func:`engine.space.index.choose_factory`).
    target_recall, seed
        For IVF, ``nprobe`` is tuned until recall@10 against exact search on a seeded sample of
        queries reaches ``target_recall``; the seed also draws the training sample.
    progress
        Progress callback.

    Returns
    -------
    MergeResult
        Paths of ``embedding.npy`` and ``index.faiss`` in ``out_dir``, and the index's
        :class:`~engine.space.index.IndexInfo` as a dict.
    """
    import faiss


    out_dir = Path(out_dir)
    records = read_shards(out_dir)
    first = records[0]
    n, dim, world = first.n_cells, first.dim, first.world_size
    name = embedding_name(first.method)
    if bundle is not None:
        _check_bundle(Path(bundle), first, name)

    report(progress, 0.0, f"concatenating {world} embedding shards")
    target = out_dir / "embedding.npy"
    with atomic_path(target) as tmp:
        merged = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        for r in sorted(records, key=lambda r: r.start):
            shard = np.load(out_dir / r.path, mmap_mode="r")
            for a in range(0, len(shard), CHUNK):
                merged[r.start + a:r.start + a + len(shard[a:a + CHUNK])] = shard[a:a + CHUNK]
        if not all(np.isfinite(merged[a:a + CHUNK]).all() for a in range(0, n, CHUNK)):
            raise InputError("The merged embedding contains NaN or infinite values: check the input data and model.")
        merged.flush()
        del merged
    embedding = np.load(target, mmap_mode="r")

    if not _shard_indexes_ready(out_dir, records, factory, metric):
        factory = factory or choose_factory(n, dim)
        report(progress, 0.2, f"training the shared {factory} index")
        train_shared_index(out_dir, factory, metric=metric, seed=seed, world_size=world)
        for i, r in enumerate(records):
            report(progress, 0.3 + 0.4 * i / world, f"indexing shard {r.rank + 1} of {world}")
            index_shard(out_dir, r.rank, world)
    factory = json.loads((out_dir / "trained.json").read_text())["factory"]

    report(progress, 0.7, f"merging {world} shard indexes")
    index = None
    for r in sorted(records, key=lambda r: r.start):  # row order: flat codes are appended
        part = load_index(out_dir / (shard_stem(r.rank, world, "index") + ".faiss"))
        if index is None:
            index = part
            continue
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.merge_from(faiss.extract_index_ivf(part), 0)
            index.ntotal = ivf.ntotal  # a wrapper (e.g. PCA,IVF) keeps its own count
        else:
            index.merge_from(part, 0)
        del part
    if index.ntotal != n:
        raise BundleError(f"The merged index holds {index.ntotal:,} vectors for {n:,} cells: re-run merge-shards.")
    info = IndexInfo(factory=factory, metric=metric, n=n, dim=dim)
    if faiss.try_extract_index_ivf(index) is not None:
        report(progress, 0.8, "tuning nprobe")
        info.nprobe, info.recall_at_10 = tune_nprobe(index, embedding, metric, target_recall,
                                                      np.random.default_rng(seed))
    save_index(index, out_dir / "index.faiss")
    meta = {"name": name, "index": info.to_dict(), "world_size": world, "n_cells": n, "dim": dim,
            "method": first.method, "checkpoint": first.checkpoint, "model_hash": first.model_hash,
            "bundle": first.bundle, "shards": [[r.start, r.stop] for r in sorted(records, key=lambda r: r.start)]}
    write_json(out_dir / "merged.json", meta)
    result = MergeResult(embedding=target, index=out_dir / "index.faiss", info=info.to_dict(), name=name)
    if bundle is not None:
        report(progress, 0.9, "registering the embedding in the bundle")
        result.bundle = _register(Path(bundle), result, meta)
    report(progress, 1.0, "merged")
    return result


def _is_default(manifest: Manifest, name: str) -> bool:
    return manifest.embedding.default == name or manifest.index.embedding == name


def _check_bundle(bundle: Path, record: ShardRecord, name: str) -> None:
    """Refuse, before any work, to register shards in a bundle of other cells, or over its default from another model."""

    atlas = read_atlas(bundle)
    if atlas.manifest.gene_hash != record.gene_hash or atlas.n_cells != record.n_cells:
        raise InputError(f"The shards embed another bundle ({record.bundle}, {record.n_cells:,} cells) than {bundle} "
                         f"({atlas.n_cells:,} cells): register them in the bundle they were made from.")
    if _is_default(atlas.manifest, name) and checkpoint_hash(bundle / "model") != record.model_hash:
        raise InputError(f"{bundle}'s default embedding is {name} from another model: registering this one would "
                         "leave its map and model stale. Merge without --bundle, or embed with the bundle's model.")


def _register(bundle: Path, result: MergeResult, meta: dict) -> Path:
    """Copy the merged embedding and index into ``bundle`` and list them in its manifest (written last).

    An embedding named like the bundle's default one replaces it only when it comes from the
    bundle's own model (same checkpoint files): the map and the default index then stay true,
    and the manifest's index entry describes the merged index.
    """

    manifest = read_atlas(bundle).manifest
    default = _is_default(manifest, result.name)
    for source, target in ((result.embedding, bundle / "obsm" / f"{result.name}.npy"),
                           (result.index, bundle / "index" / f"{result.name}.faiss")):
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    index = IndexEntry.of(result.name, IndexInfo(**result.info))
    manifest = manifest.with_embedding(result.name, ExtraModel(
        source=meta["checkpoint"], model_hash=meta["model_hash"], sharded={"world_size": meta["world_size"]},
        index=index))
    write_manifest(bundle, manifest.with_default_index(index) if default else manifest)
    return bundle
