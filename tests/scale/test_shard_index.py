"""FAISS indexes over embedding shards (engine.scale.shard_index): one trained empty index, one full index per shard."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
from vcell_testing import fake_shards

from engine.errors import InputError
from engine.scale.records import TRAINED, shard_stem
from engine.scale.shard_index import index_shard, train_shared_index
from engine.space.index import TRAIN_PER_LIST, load_index

RANGES = [(0, (0, 100)), (1, (100, 200)), (2, (200, 300))]


@pytest.fixture
def shards(tmp_path):
    fake_shards(tmp_path, RANGES, 3, 300)
    return tmp_path


def _embedding(out) -> np.ndarray:
    return np.concatenate([np.load(out / f"{shard_stem(rank, 3)}.npy") for rank, _ in RANGES])


def _centroids(index) -> np.ndarray:
    """The coarse quantizer's centroids of an IVF index (``index`` must stay alive while they are read)."""
    return faiss.downcast_index(faiss.extract_index_ivf(index).quantizer).reconstruct_n(0, 4).copy()


def test_the_shared_index_is_trained_empty_on_a_seeded_sample_of_all_shards(shards):
    path = train_shared_index(shards, "IVF4,Flat", seed=3)
    assert path == shards / TRAINED
    index = load_index(path)
    assert index.is_trained and index.ntotal == 0 and faiss.extract_index_ivf(index).nlist == 4
    meta = json.loads((shards / "trained.json").read_text())
    assert {k: meta[k] for k in ("factory", "metric", "seed", "n_train", "world_size", "model_hash")} == {
        "factory": "IVF4,Flat", "metric": "l2", "seed": 3, "n_train": 4 * TRAIN_PER_LIST, "world_size": 3,
        "model_hash": "m"}
    centroids = _centroids(index)
    key = meta["key"]
    train_shared_index(shards, "IVF4,Flat", seed=3)  # the same sample again: the same centroids, a fresh key
    again = _centroids(load_index(path))
    np.testing.assert_array_equal(again, centroids)
    assert json.loads((shards / "trained.json").read_text())["key"] != key


def test_each_shard_index_holds_its_rows_under_their_atlas_ids(shards):
    train_shared_index(shards, "IVF4,Flat")
    key = json.loads((shards / "trained.json").read_text())["key"]
    x = _embedding(shards)
    for rank, (start, stop) in RANGES:
        path = index_shard(shards, rank, 3)
        assert path == shards / f"{shard_stem(rank, 3, 'index')}.faiss"
        index = load_index(path, nprobe=4)  # every list: exact search
        assert index.ntotal == stop - start
        _, ids = index.search(x[start:stop], 1)
        np.testing.assert_array_equal(ids.ravel(), np.arange(start, stop))  # each vector finds itself, by atlas row
        meta = json.loads((shards / f"{shard_stem(rank, 3, 'index')}.json").read_text())
        assert meta == {"key": key, "rank": rank, "world_size": 3, "start": start, "stop": stop,
                        "ntotal": stop - start}


def test_flat_shards_append_their_rows_in_order_and_inner_product_is_kept(shards):
    train_shared_index(shards, "Flat", metric="ip")
    assert load_index(shards / TRAINED).metric_type == faiss.METRIC_INNER_PRODUCT
    assert json.loads((shards / "trained.json").read_text())["metric"] == "ip"
    index = load_index(index_shard(shards, 1, 3))
    np.testing.assert_array_equal(index.reconstruct_n(0, index.ntotal), _embedding(shards)[100:200])


def test_factories_that_cannot_be_sharded_are_refused(shards):
    with pytest.raises(InputError, match=r"^FAISS cannot make the index 'IVFx,Flat' \("):
        train_shared_index(shards, "IVFx,Flat")
    with pytest.raises(InputError, match=r"^The index 'HNSW32' cannot be built in shards and merged: use Flat or an "):
        train_shared_index(shards, "HNSW32")
    assert not (shards / TRAINED).exists() and not (shards / "trained.json").exists()
