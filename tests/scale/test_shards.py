"""Sharded embedding across processes (Lightning DDP) and the merge into one embedding and one FAISS index.

The shard records' and the merge's own checks on hand-written shards are in test_records.py,
test_shard_index.py and test_merge.py.
"""

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
from engine.errors import InputError
from engine.models.serialize import load_model
from engine.scale.merge import merge_shards
from engine.scale.records import read_shards, shard_stem
from engine.scale.shards import embed_shards
from engine.space.index import load_index

ROOT = Path(__file__).resolve().parents[2]


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
