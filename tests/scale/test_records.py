"""What a sharded embedding leaves on disk (engine.scale.records): row ranges, file names, checked records.

test_shard_ranges_cover_every_row_once_and_are_balanced moved here from tests/scale/test_shards.py; the
merge's refusals of bad shard sets are in test_merge.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from vcell_testing import fake_shards

from engine.errors import InputError
from engine.scale.records import checkpoint_hash, read_shards, shard_ranges, shard_stem


@pytest.mark.parametrize("n, world", [(832, 2), (10, 3), (7, 7), (2, 4), (0, 2), (1_000_001, 64)])
def test_shard_ranges_cover_every_row_once_and_are_balanced(n, world):
    ranges = shard_ranges(n, world)
    assert len(ranges) == world and ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [stop - start for start, stop in ranges]
    assert min(sizes) >= 0 and max(sizes) - min(sizes) <= 1
    with pytest.raises(InputError, match="at least one process"):
        shard_ranges(n, 0)


def test_shard_ranges_give_the_extra_rows_to_the_first_ranks():
    assert shard_ranges(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert shard_ranges(2, 4) == [(0, 1), (1, 2), (2, 2), (2, 2)]
    covered = np.concatenate([np.arange(a, b) for a, b in shard_ranges(1001, 7)])
    np.testing.assert_array_equal(covered, np.arange(1001))
    with pytest.raises(InputError, match=r"^Cannot split -1 cells over 2 processes"):
        shard_ranges(-1, 2)


def test_shard_file_stems():
    assert shard_stem(1, 4) == "embedding-00001-of-00004"
    assert shard_stem(12, 64, "index") == "index-00012-of-00064"


def test_read_shards_returns_the_records_by_rank(tmp_path):
    fake_shards(tmp_path, [(2, (100, 150)), (0, (0, 50)), (1, (50, 100))], 3, 150)
    records = read_shards(tmp_path)
    assert [(r.rank, r.start, r.stop) for r in records] == [(0, 0, 50), (1, 50, 100), (2, 100, 150)]
    assert records[1].path == "embedding-00001-of-00003.npy" and records[0].dim == 4
    # another run's shards in the same directory are left out when the world size is given
    fake_shards(tmp_path, [(0, (0, 75)), (1, (75, 150))], 2, 150)
    assert [r.rank for r in read_shards(tmp_path, world_size=2)] == [0, 1]
    assert len(read_shards(tmp_path, world_size=3)) == 3


def _one_sentence(message: str) -> bool:
    return message.endswith(".") and "\n" not in message


def test_read_shards_refuses_shards_that_do_not_fit_together(tmp_path):
    cases = {
        "bundles": ({1: {"gene_hash": "other"}}, r"come from different bundles \(gene lists\)"),
        "cells": ({1: {"n_cells": 151}}, "come from different cell counts"),
    }
    for name, (overrides, says) in cases.items():
        out = tmp_path / name
        out.mkdir()
        fake_shards(out, [(0, (0, 75)), (1, (75, 150))], 2, 150, overrides)
        with pytest.raises(InputError, match=says) as error:
            read_shards(out)
        assert _one_sentence(str(error.value)) and "fresh directory" in str(error.value)


def test_read_shards_refuses_unreadable_records_and_missing_or_wrong_embeddings(tmp_path):
    fake_shards(tmp_path, [(0, (0, 75)), (1, (75, 150))], 2, 150)
    (tmp_path / "embedding-00001-of-00002.npy").unlink()
    with pytest.raises(InputError, match=r"Shard 1's embedding .*embedding-00001-of-00002\.npy is missing"):
        read_shards(tmp_path)
    np.save(tmp_path / "embedding-00001-of-00002.npy", np.zeros((70, 4), np.float32))
    with pytest.raises(InputError, match=r"has shape \(70, 4\), its record says \(75, 4\): re-embed"):
        read_shards(tmp_path)
    record = tmp_path / "embedding-00000-of-00002.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "surprise": 1}))
    with pytest.raises(InputError, match=r"The shard record .*embedding-00000-of-00002\.json is unreadable") as error:
        read_shards(tmp_path)
    assert "run embed-shards again" in str(error.value)
    record.write_text("{not json")
    with pytest.raises(InputError, match="is unreadable"):
        read_shards(tmp_path)


def test_checkpoint_hash_follows_file_names_and_contents(tmp_path):
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"method": "mae"}')
    (model / "sub" / "weights.bin").write_bytes(b"\x00\x01" * 1000)
    first = checkpoint_hash(model)
    assert len(first) == 64 and checkpoint_hash(model) == first
    (model / "sub" / "weights.bin").write_bytes(b"\x00\x02" * 1000)
    changed = checkpoint_hash(model)
    assert changed != first
    (model / "sub" / "weights.bin").rename(model / "sub" / "other.bin")  # same bytes, another name
    assert checkpoint_hash(model) not in (first, changed)
