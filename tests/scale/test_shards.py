"""Sharded embedding across processes (Lightning DDP) and the merge into one embedding and one FAISS index."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from engine.build.embed import embed_atlas
from engine.bundle.atlas import read_atlas, validate_atlas
from engine.bundle.manifest import Embeddings
from engine.cli import main
from engine.errors import InputError
from engine.models.serialize import load_model
from engine.scale.merge import merge_shards
from engine.scale.records import ShardRecord, read_shards, shard_ranges, shard_stem
from engine.scale.shards import embed_shards
from engine.space.index import build_index, load_index

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("n, world", [(832, 2), (10, 3), (7, 7), (2, 4), (0, 2), (1_000_001, 64)])
def test_shard_ranges_cover_every_row_once_and_are_balanced(n, world):
    ranges = shard_ranges(n, world)
    assert len(ranges) == world and ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [stop - start for start, stop in ranges]
    assert min(sizes) >= 0 and max(sizes) - min(sizes) <= 1
    with pytest.raises(InputError, match="at least one process"):
        shard_ranges(n, 0)


def _fake_shards(out: Path, ranges, world: int, n: int, overrides: dict | None = None) -> None:
    """Shard files as embed-shards writes them, with random vectors (for the merge's checks)."""
    rng = np.random.default_rng(0)
    for rank, (start, stop) in ranges:
        record = ShardRecord(rank=rank, world_size=world, start=start, stop=stop, n_cells=n, dim=4, method="mae",
                             model_hash="m", gene_hash="g", bundle="b", checkpoint="c")
        for key, value in (overrides or {}).get(rank, {}).items():
            setattr(record, key, value)
        np.save(out / record.path, rng.standard_normal((stop - start, 4)).astype(np.float32))
        (out / (shard_stem(rank, world) + ".json")).write_text(json.dumps(record.__dict__))


def test_merge_refuses_missing_overlapping_or_mixed_shards(tmp_path, capsys):
    with pytest.raises(InputError, match="no finished embedding shards"):
        read_shards(tmp_path)
    assert main(["merge-shards", str(tmp_path)]) == 2
    assert "no finished embedding shards" in capsys.readouterr().err

    cases = {
        "missing": (dict(enumerate([(0, 50), (50, 100), (100, 150)][:2])), 3, {}, "Shard\\(s\\) 2 of 3 are missing"),
        "overlap": ({0: (0, 60), 1: (50, 150)}, 2, {}, "overlap"),
        "gap": ({0: (0, 40), 1: (50, 150)}, 2, {}, "leave a gap"),
        "short": ({0: (0, 50), 1: (50, 140)}, 2, {}, "cover rows 0..140 of 150"),
        "models": ({0: (0, 75), 1: (75, 150)}, 2, {1: {"model_hash": "other"}}, "different models"),
        "widths": ({0: (0, 75), 1: (75, 150)}, 2, {1: {"dim": 5}}, "different embedding widths"),
    }
    for name, (ranges, world, overrides, message) in cases.items():
        out = tmp_path / name
        out.mkdir()
        _fake_shards(out, ranges.items(), world, 150, overrides)
        with pytest.raises(InputError, match=message):
            merge_shards(out)
        assert not (out / "embedding.npy").exists() and not (out / "index.faiss").exists()

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _fake_shards(mixed, {0: (0, 75), 1: (75, 150)}.items(), 2, 150)
    _fake_shards(mixed, {0: (0, 50), 1: (50, 100), 2: (100, 150)}.items(), 3, 150)
    with pytest.raises(InputError, match="different process counts \\(2, 3\\)"):
        merge_shards(mixed)
    with pytest.raises(InputError, match="cannot be built in shards"):
        merge_shards(_complete(tmp_path), factory="HNSW32")


def _complete(tmp_path: Path) -> Path:
    out = tmp_path / "complete"
    out.mkdir()
    _fake_shards(out, {0: (0, 75), 1: (75, 150)}.items(), 2, 150)
    return out


def test_flat_shards_merge_to_the_same_index_as_one_build(tmp_path):
    out = _complete(tmp_path)
    result = merge_shards(out, factory="Flat")
    x = np.concatenate([np.load(out / f"{shard_stem(r, 2)}.npy") for r in range(2)])
    np.testing.assert_array_equal(np.load(result.embedding), x)
    merged = load_index(result.index)
    assert merged.ntotal == 150 and result.info["factory"] == "Flat" and result.info["nprobe"] is None
    one, _ = build_index(x, factory="Flat")
    np.testing.assert_array_equal(merged.search(x, 10)[1], one.search(x, 10)[1])


def test_embed_atlas_of_a_row_range_is_that_slice(mae_bundle):
    atlas = read_atlas(mae_bundle)
    model, genes = load_model(mae_bundle / "model")
    whole = embed_atlas(atlas, model, genes, batch_size=300)
    part = embed_atlas(atlas, model, genes, batch_size=128, cells=(100, 517))
    np.testing.assert_allclose(part, whole[100:517], atol=1e-5)
    assert embed_atlas(atlas, model, genes, cells=(5, 5)).shape == (0, whole.shape[1])
    with pytest.raises(InputError, match="not a row range"):
        embed_atlas(atlas, model, genes, cells=(0, atlas.n_cells + 1))


def test_one_process_embed_shards_equals_embed_atlas(mae_bundle, tmp_path):
    shard = embed_shards(mae_bundle, mae_bundle / "model", tmp_path / "one", devices=1, accelerator="cpu",
                         batch_size=200)
    atlas = read_atlas(mae_bundle)
    assert (shard.rank, shard.world_size, shard.start, shard.stop) == (0, 1, 0, atlas.n_cells)
    model, genes = load_model(mae_bundle / "model")
    np.testing.assert_allclose(np.load(tmp_path / "one" / shard.path), embed_atlas(atlas, model, genes), atol=1e-5)


@pytest.mark.parametrize("launcher", ["lightning", "torchrun"])
def test_two_processes_give_the_same_embedding_and_neighbours_as_one(mae_bundle, kang_bundle, tmp_path, launcher):
    """The required check: a real local 2-process DDP run (gloo on CPU), then the merge."""
    bundle, kang = tmp_path / "kang_mae.vcell", tmp_path / "kang_pca.vcell"
    shutil.copytree(mae_bundle, bundle)
    shutil.copytree(kang_bundle, kang)
    out = tmp_path / "shards"
    args = ["embed-shards", str(bundle), "--checkpoint", str(bundle / "model"), "--out", str(out),
            "--batch-size", "100", "--accelerator", "cpu", "--factory", "IVF16,Flat"]
    if launcher == "lightning":  # Lightning starts the second process itself
        cmd = [sys.executable, "-m", "engine.cli", *args, "--devices", "2"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "engine.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 shard(s) of" in run.stdout and run.stdout.count("shard(s) of") == 1  # rank 0 reports, once

    atlas = read_atlas(bundle)
    n = atlas.n_cells
    records = read_shards(out)
    assert [(r.rank, r.start, r.stop) for r in records] == [(0, 0, n - n // 2), (1, n - n // 2, n)]
    assert all((out / f"{shard_stem(r, 2, 'index')}.faiss").exists() for r in range(2))

    result = merge_shards(out, bundle=kang)
    assert result.info["factory"] == "IVF16,Flat" and result.info["n"] == n and result.name == "X_mae"
    model, genes = load_model(bundle / "model")
    single = embed_atlas(atlas, model, genes)
    merged = np.load(result.embedding)
    np.testing.assert_allclose(merged, single, atol=1e-5)

    # one index built in one process: the same trained (empty) IVF index, every cell added, same nprobe
    one = load_index(out / "trained.faiss", nprobe=result.info["nprobe"])
    one.add(single)
    index = load_index(result.index)
    assert index.ntotal == n and faiss.extract_index_ivf(index).nprobe == result.info["nprobe"]
    np.testing.assert_array_equal(index.search(single, 10)[1], one.search(single, 10)[1])

    # registered in a PCA bundle of the same cells: listed beside X_pca, the default unchanged
    atlas = read_atlas(kang)
    assert atlas.manifest.embedding == Embeddings(default="X_pca", available=("X_pca", "X_mae"))
    assert atlas.manifest.extra_models["X_mae"].sharded == {"world_size": 2}
    assert atlas.manifest.extra_models["X_mae"].index.factory == "IVF16,Flat"
    np.testing.assert_array_equal(atlas.embedding("X_mae"), merged)
    assert load_index(kang / "index" / "X_mae.faiss").ntotal == n
    assert validate_atlas(kang) == []

    # the bundle's own default embedding, from its own model: the default index becomes the merged one
    result = merge_shards(out, bundle=bundle)
    atlas = read_atlas(bundle)
    assert atlas.manifest.index.factory == "IVF16,Flat" and atlas.index.ntotal == n
    assert validate_atlas(bundle) == []
    _fake_record_model(out, "another")
    before = (bundle / "manifest.json").read_text()
    with pytest.raises(InputError, match="default embedding is X_mae from another model"):
        merge_shards(out, bundle=bundle)
    assert (bundle / "manifest.json").read_text() == before


def _fake_record_model(out: Path, model_hash: str) -> None:
    """Pretend the shards came from another checkpoint of the same method."""
    for path in out.glob("embedding-*-of-*.json"):
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "model_hash": model_hash}))
