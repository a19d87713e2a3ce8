"""Expression store: row reads in any order, gene-major reads, layers, bad input."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from engine.data.store import ExpressionStore, write_store
from engine.errors import BundleError, InputError


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    counts = sp.random(120, 30, density=0.3, random_state=1, format="csr", dtype=np.float32)
    counts.data = np.ceil(counts.data * 10)
    lognorm = counts.copy()
    lognorm.data = np.log1p(lognorm.data)
    obs = pd.DataFrame({"cell_type": pd.Categorical(rng.choice(["a", "b"], 120))}, index=[f"c{i}" for i in range(120)])
    var = pd.DataFrame({"gene_symbol": [f"G{i}" for i in range(30)]}, index=[f"G{i}" for i in range(30)])
    write_store(tmp_path / "store", obs, var, lognorm, counts)
    return ExpressionStore(tmp_path / "store"), lognorm.toarray(), counts.toarray()


def test_rows_follow_the_requested_order(store):
    s, lognorm, counts = store
    assert (s.n_cells, s.n_genes) == (120, 30) and s.layers == ["counts", "lognorm"]
    cells = np.array([7, 3, 99, 3, 0])
    np.testing.assert_allclose(s.rows(cells).toarray(), lognorm[cells], rtol=1e-6)
    np.testing.assert_allclose(s.rows(cells, np.array([5, 1]), layer="counts").toarray(), counts[cells][:, [5, 1]])
    assert s.rows(np.array([], dtype=int)).shape == (0, 30)


def test_gene_major_copy_matches_rows(store):
    s, lognorm, _ = store
    for g in (0, 13, 29):
        np.testing.assert_allclose(s.gene(g), lognorm[:, g], rtol=1e-6)
    blocks = list(s.iter_rows(chunk_size=50))
    assert [b.shape[0] for _, b in blocks] == [50, 50, 20]
    np.testing.assert_allclose(sp.vstack([b for _, b in blocks]).toarray(), lognorm, rtol=1e-6)


def test_missing_layer_and_incomplete_store(tmp_path, store):
    s, _, _ = store
    with pytest.raises(InputError, match="no 'spliced' layer"):
        s.rows(np.array([0]), layer="spliced")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="incomplete"):
        ExpressionStore(tmp_path / "empty")


def test_in_memory_store_reads_like_the_disk_store(store):
    from engine.data.store import InMemoryStore

    disk, lognorm, counts = store
    memory = InMemoryStore(sp.csr_matrix(lognorm), sp.csr_matrix(counts))
    cells, genes = np.array([9, 2, 2, 70]), np.array([3, 0])
    assert memory.layers == disk.layers and (memory.n_cells, memory.n_genes) == (disk.n_cells, disk.n_genes)
    for layer in ("lognorm", "counts"):
        np.testing.assert_allclose(memory.rows(cells, genes, layer=layer).toarray(),
                                   disk.rows(cells, genes, layer=layer).toarray(), rtol=1e-6)
    with pytest.raises(InputError, match="no 'counts' layer"):
        InMemoryStore(sp.csr_matrix(lognorm)).rows(cells, layer="counts")


def test_gene_major_copy_across_segments_and_in_half_precision(tmp_path, monkeypatch):
    import engine.data.store as store_module
    from engine.data.store import GeneMajorWriter

    monkeypatch.setattr(store_module, "SEGMENT", 16)  # 100 cells -> 7 segments, blocks straddle them
    monkeypatch.setattr(store_module, "HALF_PRECISION_ABOVE", 50)
    matrix = sp.random(100, 12, density=0.3, random_state=3, format="csr", dtype=np.float32)
    matrix.data = np.log1p(matrix.data * 100)
    writer = GeneMajorWriter(tmp_path / "by_gene", np.bincount(matrix.indices, minlength=12), 100)
    for start in range(0, 100, 23):
        writer.write(start, matrix[start:start + 23])
    writer.close()
    assert np.load(tmp_path / "by_gene" / "data.npy").dtype == np.float16
    assert np.load(tmp_path / "by_gene" / "segment_ptr.npy").shape == (12, 8)
    reader = ExpressionStore.__new__(ExpressionStore)  # the gene-major half of a store only
    reader._segment_ptr = np.load(tmp_path / "by_gene" / "segment_ptr.npy")
    reader._indices = np.load(tmp_path / "by_gene" / "indices.npy", mmap_mode="r")
    reader._data = np.load(tmp_path / "by_gene" / "data.npy", mmap_mode="r")
    reader.__dict__["n_cells"] = 100
    dense = matrix.toarray()
    for g in range(12):
        got = reader.gene(g)
        assert np.array_equal(got > 0, dense[:, g] > 0)
        np.testing.assert_allclose(got, dense[:, g], rtol=1e-3)  # float16: 3 significant digits


def test_gene_major_writer_refuses_blocks_out_of_order(tmp_path):
    from engine.data.store import GeneMajorWriter

    matrix = sp.random(10, 4, density=0.5, random_state=0, format="csr", dtype=np.float32)
    writer = GeneMajorWriter(tmp_path / "by_gene", np.bincount(matrix.indices, minlength=4), 10)
    writer.write(0, matrix[:5])
    with pytest.raises(ValueError, match="row order"):
        writer.write(0, matrix[:5])
    with pytest.raises(ValueError, match="do not match"):
        writer.close()
