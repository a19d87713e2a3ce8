"""The streaming cell loader: batches, block shuffling, sharding, donor splits, bad input."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader

from engine.data.loader import CellBatches, split_by_donor
from engine.data.store import ExpressionStore, write_store
from engine.errors import InputError

N_CELLS, N_GENES = 1000, 40


def _matrices(seed: int = 0):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(1.0, size=(N_CELLS, N_GENES)).astype(np.float32)
    counts[:, 0] = np.arange(N_CELLS)  # gene 0 identifies the cell
    total = counts.sum(axis=1, keepdims=True)
    lognorm = np.log1p(counts / np.maximum(total, 1) * 1e4).astype(np.float32)
    return counts, lognorm


def _write(path, lognorm, counts=None):
    obs = pd.DataFrame({"donor_id": [f"d{i % 5}" for i in range(len(lognorm))]},
                       index=[f"c{i}" for i in range(len(lognorm))])
    var = pd.DataFrame(index=[f"g{j}" for j in range(lognorm.shape[1])])
    write_store(path, obs, var, sp.csr_matrix(lognorm), None if counts is None else sp.csr_matrix(counts))
    return ExpressionStore(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    counts, lognorm = _matrices()
    return _write(tmp_path_factory.mktemp("loader") / "store", lognorm, counts)


def _cells_of(batches) -> np.ndarray:
    return np.concatenate([b["counts"][:, 0].numpy().astype(np.int64) for b in batches])


def test_batches_match_the_store(store):
    counts, lognorm = _matrices()
    genes = np.array([0, 5, 3, 7])
    cells = np.arange(100, 700)
    data = CellBatches(store, cells, genes, batch_size=64, block_size=32, seed=1)
    batches = list(data)
    assert len(batches) == len(data) == 10
    assert all(len(b["x"]) == 64 for b in batches[:-1]) and len(batches[-1]["x"]) == 600 - 9 * 64
    for b in batches:
        rows = b["cell"].numpy()
        assert b["x"].dtype == torch.float32 and b["x"].shape[1] == len(genes)
        np.testing.assert_allclose(b["x"].numpy(), lognorm[rows][:, genes], rtol=1e-6)
        np.testing.assert_array_equal(b["counts"].numpy(), counts[rows][:, genes])
        np.testing.assert_allclose(b["library"].numpy(), counts[rows].sum(axis=1), rtol=1e-6)
    seen = np.concatenate([b["cell"].numpy() for b in batches])
    np.testing.assert_array_equal(np.sort(seen), cells)  # each cell once per epoch
    assert not np.array_equal(seen, cells)  # shuffled


def test_shuffle_is_seeded_per_epoch(store):
    cells = np.arange(N_CELLS)
    a = CellBatches(store, cells, batch_size=50, block_size=20, seed=3)
    b = CellBatches(store, cells, batch_size=50, block_size=20, seed=3)
    first = _cells_of(a)
    np.testing.assert_array_equal(first, _cells_of(b))
    a.set_epoch(1)
    second = _cells_of(a)
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(np.sort(first), np.sort(second))
    ordered = CellBatches(store, cells[::-1], batch_size=50, shuffle=False)
    np.testing.assert_array_equal(_cells_of(ordered), cells)


def test_labels_and_no_counts(store, tmp_path):
    labels = np.arange(N_CELLS) % 7
    data = CellBatches(store, np.arange(0, N_CELLS, 3), batch_size=100, labels=labels, counts=False)
    batch = next(iter(data))
    assert set(batch) == {"x", "cell", "label"}
    assert batch["label"].dtype == torch.int64
    np.testing.assert_array_equal(batch["label"].numpy(), labels[batch["cell"].numpy()])
    _, lognorm = _matrices()
    no_counts = _write(tmp_path / "store", lognorm)
    assert "counts" not in next(iter(CellBatches(no_counts, np.arange(10), batch_size=4)))
    with pytest.raises(InputError, match="no raw counts"):
        CellBatches(no_counts, np.arange(10), counts=True)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_workers_and_ranks_see_each_cell_once(store, world_size, monkeypatch):
    import engine.data.loader as loader

    cells = np.arange(7, 977)
    seen, lengths = [], []
    n_workers = 3
    for rank in range(world_size):
        data = CellBatches(store, cells, batch_size=32, buffer_size=64, block_size=16, seed=0,
                           rank=rank, world_size=world_size)
        batches = []
        for worker in range(n_workers):  # what each DataLoader worker would yield
            monkeypatch.setattr(loader, "get_worker_info",
                                lambda w=worker: SimpleNamespace(id=w, num_workers=n_workers))
            batches += list(data)
        lengths.append(len(batches))
        assert len(batches) == len(data)
        seen.append(np.concatenate([b["cell"].numpy() for b in batches]))
    assert len(set(lengths)) == 1  # every rank runs the same number of steps
    everything = np.concatenate(seen)
    assert set(everything.tolist()) == set(cells.tolist())
    assert len(everything) - len(cells) < world_size  # only the padding repeats


def test_real_dataloader_workers(store):
    """Spawned workers (forking after TileDB has started threads can deadlock)."""
    data = CellBatches(store, np.arange(N_CELLS), batch_size=100, buffer_size=200, seed=0)
    loader = DataLoader(data, batch_size=None, num_workers=2, multiprocessing_context="spawn")
    cells = np.concatenate([b["cell"].numpy() for b in loader])
    np.testing.assert_array_equal(np.sort(cells), np.arange(N_CELLS))


def test_bad_input(store, tmp_path):
    with pytest.raises(InputError):
        CellBatches(store, [])
    with pytest.raises(InputError):
        CellBatches(store, [N_CELLS])
    with pytest.raises(InputError):
        CellBatches(store, [0, 1], genes=[N_GENES])
    counts, lognorm = _matrices()
    lognorm[123, 4] = np.nan
    bad = _write(tmp_path / "nan-store", lognorm, counts)
    with pytest.raises(InputError, match="NaN"):
        list(CellBatches(bad, np.arange(N_CELLS), batch_size=100))


def test_split_by_donor():
    obs = pd.DataFrame({"donor": np.repeat([f"d{i}" for i in range(10)], 50)})
    split = split_by_donor(obs, "donor", val_fraction=0.2, seed=0)
    assert len(split.val_donors) == 2 and "held-out donors" in split.note
    assert set(obs["donor"].iloc[split.val_cells]) == set(split.val_donors)
    assert not set(obs["donor"].iloc[split.train_cells]) & set(split.val_donors)
    assert len(split.train_cells) + len(split.val_cells) == len(obs)
    again = split_by_donor(obs, "donor", val_fraction=0.2, seed=0)
    np.testing.assert_array_equal(split.val_cells, again.val_cells)
    # a subset of cells; two donors: one held out, one kept
    two = split_by_donor(obs, "donor", 0.9, seed=1, cells=np.arange(100))
    assert len(two.val_donors) == 1 and len(two.train_cells) == len(two.val_cells) == 50
    # fewer than two donors: a cell split, said so
    one = split_by_donor(obs.iloc[:50], "donor", 0.2, seed=0)
    assert one.val_donors == [] and "only one donor" in one.note and len(one.val_cells) == 10
    none = split_by_donor(obs, None, 0.2)
    assert "no donor column" in none.note
    with pytest.raises(InputError):
        split_by_donor(obs, "donor", val_fraction=1.0)
