"""Merging embedding shards into one embedding and one FAISS index (engine.scale.merge), in one process.

test_merge_refuses_missing_overlapping_or_mixed_shards and test_flat_shards_merge_to_the_same_index_as_one_build
moved here from tests/scale/test_shards.py (which keeps the multi-process runs).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest
from vcell_testing import fake_shards

from engine.bundle.atlas import read_atlas, validate_atlas
from engine.bundle.manifest import Embeddings
from engine.cli import main
from engine.errors import InputError
from engine.scale.merge import merge_shards
from engine.scale.records import read_shards, shard_stem
from engine.scale.shards import embed_shards
from engine.space.index import build_index, load_index


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
        fake_shards(out, ranges.items(), world, 150, overrides)
        with pytest.raises(InputError, match=message):
            merge_shards(out)
        assert not (out / "embedding.npy").exists() and not (out / "index.faiss").exists()

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    fake_shards(mixed, {0: (0, 75), 1: (75, 150)}.items(), 2, 150)
    fake_shards(mixed, {0: (0, 50), 1: (50, 100), 2: (100, 150)}.items(), 3, 150)
    with pytest.raises(InputError, match="different process counts \\(2, 3\\)"):
        merge_shards(mixed)
    with pytest.raises(InputError, match="cannot be built in shards"):
        merge_shards(_complete(tmp_path), factory="HNSW32")


def _complete(tmp_path: Path) -> Path:
    out = tmp_path / "complete"
    out.mkdir()
    fake_shards(out, {0: (0, 75), 1: (75, 150)}.items(), 2, 150)
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


def _three_shards(tmp_path: Path) -> tuple[Path, np.ndarray]:
    out = tmp_path / "three"
    out.mkdir()
    fake_shards(out, [(0, (0, 100)), (1, (100, 200)), (2, (200, 300))], 3, 300)
    return out, np.concatenate([np.load(out / f"{shard_stem(r, 3)}.npy") for r in range(3)])


def test_ivf_shards_merge_to_the_index_of_one_process(tmp_path):
    out, x = _three_shards(tmp_path)
    result = merge_shards(out, factory="IVF4,Flat", seed=1)
    np.testing.assert_array_equal(np.load(result.embedding), x)
    info = result.info
    assert (info["factory"], info["metric"], info["n"], info["dim"]) == ("IVF4,Flat", "l2", 300, 4)
    assert 1 <= info["nprobe"] <= 4 and info["recall_at_10"] >= 0.95 and result.name == "X_mae"
    merged = load_index(result.index)
    assert merged.ntotal == 300 and faiss.extract_index_ivf(merged).nprobe == info["nprobe"]
    one = load_index(out / "trained.faiss", nprobe=info["nprobe"])  # the same trained index, every row added at once
    one.add(x)
    np.testing.assert_array_equal(merged.search(x, 10)[1], one.search(x, 10)[1])
    meta = json.loads((out / "merged.json").read_text())
    assert meta["shards"] == [[0, 100], [100, 200], [200, 300]] and meta["world_size"] == 3
    assert meta["index"] == info and (meta["method"], meta["model_hash"]) == ("mae", "m")


def test_ready_shard_indexes_are_reused_and_another_factory_is_trained_afresh(tmp_path):
    out, _ = _three_shards(tmp_path)
    merge_shards(out, factory="IVF4,Flat")
    key = json.loads((out / "trained.json").read_text())["key"]
    assert merge_shards(out).info["factory"] == "IVF4,Flat"  # the shard indexes left are used as they are
    assert json.loads((out / "trained.json").read_text())["key"] == key
    result = merge_shards(out, factory="Flat")
    trained = json.loads((out / "trained.json").read_text())
    assert trained["factory"] == "Flat" and trained["key"] != key and result.info["nprobe"] is None
    indexes = [json.loads((out / f"{shard_stem(r, 3, 'index')}.json").read_text())["key"] for r in range(3)]
    assert indexes == [trained["key"]] * 3


def test_a_non_finite_embedding_is_refused_and_nothing_is_written(tmp_path):
    out, _ = _three_shards(tmp_path)
    shard = out / f"{shard_stem(1, 3)}.npy"
    x = np.load(shard)
    x[5, 2] = np.inf
    np.save(shard, x)
    with pytest.raises(InputError, match="^The merged embedding contains NaN or infinite values"):
        merge_shards(out)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("embedding-")) == []


@pytest.fixture(scope="module")
def one_process_shards(tiny_mae_bundle, tmp_path_factory) -> Path:
    """The tiny bundle's cells embedded by its own toy model in one process (embed-shards with one device)."""
    out = tmp_path_factory.mktemp("shards")
    shard = embed_shards(tiny_mae_bundle, tiny_mae_bundle / "model", out, devices=1, accelerator="cpu",
                         batch_size=256)
    assert (shard.rank, shard.world_size, shard.start, shard.stop) == (0, 1, 0, 600)
    return out


def test_merged_shards_are_registered_beside_a_bundles_default(one_process_shards, tiny_bundle, tiny_mae_bundle,
                                                               tmp_path):
    bundle = tmp_path / "pca.vcell"
    shutil.copytree(tiny_bundle, bundle)
    result = merge_shards(one_process_shards, bundle=bundle, factory="Flat")
    assert result.bundle == bundle
    atlas = read_atlas(bundle)
    assert atlas.manifest.embedding == Embeddings(default="X_pca", available=("X_pca", "X_mae"))
    assert atlas.manifest.index.embedding == "X_pca"  # the map and default index stay
    assert atlas.manifest.extra_models["X_mae"].sharded == {"world_size": 1}
    np.testing.assert_allclose(atlas.embedding("X_mae"), read_atlas(tiny_mae_bundle).embedding(), atol=1e-5)
    assert load_index(bundle / "index" / "X_mae.faiss").ntotal == 600
    assert validate_atlas(bundle) == []


def test_merged_shards_of_the_bundles_own_model_replace_its_default_index(one_process_shards, tiny_mae_bundle,
                                                                           tmp_path):
    bundle = tmp_path / "mae.vcell"
    shutil.copytree(tiny_mae_bundle, bundle)
    assert read_atlas(bundle).manifest.index.factory == "Flat"
    merge_shards(one_process_shards, bundle=bundle, factory="IVF4,Flat")
    atlas = read_atlas(bundle)
    assert atlas.manifest.index.factory == "IVF4,Flat" and atlas.manifest.index.embedding == "X_mae"
    assert atlas.manifest.embedding.default == "X_mae" and atlas.index.ntotal == 600
    assert validate_atlas(bundle) == []


def test_shards_of_other_cells_are_not_registered(tmp_path, tiny_bundle):
    out = _complete(tmp_path)
    before = (tiny_bundle / "manifest.json").read_text()
    with pytest.raises(InputError, match=r"^The shards embed another bundle \(b, 150 cells\) than .* \(600 cells\): "):
        merge_shards(out, bundle=tiny_bundle)
    assert (tiny_bundle / "manifest.json").read_text() == before and not (out / "embedding.npy").exists()
