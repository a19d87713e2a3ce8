"""Reading an input in row blocks (engine.data.blocks): SOMA rows on demand, the matrix plan, checked blocks."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from vcell_testing import make_counts_adata, write_tiny_h5ad

from engine.data.blocks import MatrixPlan, SomaRows, iter_expression, open_rows, plan_matrices
from engine.data.normalise import normalise_log1p
from engine.data.read import read_source
from engine.data.synth.generate import generate_atlas
from engine.errors import InputError


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """A generated atlas of 250 cells x 40 genes, stored as TileDB-SOMA."""
    return generate_atlas(tmp_path_factory.mktemp("gen") / "gen", 250, n_genes=40, n_regulators=2, truth_cells=250)


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


def test_soma_rows_are_read_in_any_order(generated):
    full = read_source(generated).X.toarray()
    rows = open_rows(generated)
    try:
        lazy = rows.lazy_x
        assert isinstance(lazy, SomaRows) and rows.adata.X is None and rows.n_obs == 250
        assert lazy.shape == (250, 40) and rows.candidates(("counts",)) == [("X", lazy)]
        for pick in (slice(0, 250), slice(10, 20), slice(249, 250), np.array([1, 5, 9]), np.array([5, 2, 9]),
                     np.array([3, 3, 0]), np.array([7])):
            block = lazy[pick]
            assert isinstance(block, sp.csr_matrix) and block.dtype == np.float32
            np.testing.assert_array_equal(block.toarray(), full[pick])
        assert lazy[np.array([], dtype=np.int64)].shape == (0, 40)
    finally:
        rows.close()


def test_raw_counts_are_normalised_block_by_block(tmp_path):
    path = write_tiny_h5ad(tmp_path / "tiny.h5ad")
    counts = ad.read_h5ad(path).X
    rows = open_rows(path)
    try:
        assert rows.adata.isbacked and rows.lazy_x is None and rows.n_obs == 600
        plan = plan_matrices(rows)
        assert (plan.label, plan.is_counts, plan.needs_log) == ("X", True, False)
        assert plan.notes == {"counts": "X", "lognorm": "log1p(counts / total * 1e4)"}
        blocks = list(iter_expression(plan, rows.adata.obs_names, 256))
    finally:
        rows.close()
    assert [start for start, _, _ in blocks] == [0, 256, 512]
    assert [lognorm.shape[0] for _, lognorm, _ in blocks] == [256, 256, 88]
    lognorm = sp.vstack([b for _, b, _ in blocks])
    np.testing.assert_allclose(lognorm.toarray(), normalise_log1p(counts).toarray(), rtol=1e-6)
    np.testing.assert_array_equal(sp.vstack([c for _, _, c in blocks]).toarray(), counts.toarray())
    assert all(b.dtype == np.float32 and c.dtype == np.float32 for _, b, c in blocks)


def test_a_counts_layer_is_preferred_to_normalised_values_in_x(tmp_path):
    adata = make_counts_adata(n_cells=120, n_genes=30)
    adata.layers["counts"] = adata.X.copy()
    adata.X = normalise_log1p(adata.X)
    adata.write_h5ad(tmp_path / "layers.h5ad")
    rows = open_rows(tmp_path / "layers.h5ad")
    try:
        plan = plan_matrices(rows)
        assert plan.label == "layers['counts']" and plan.is_counts
        [(start, lognorm, counts)] = list(iter_expression(plan, rows.adata.obs_names, 1000))
    finally:
        rows.close()
    assert start == 0
    np.testing.assert_array_equal(counts.toarray(), adata.layers["counts"].toarray())
    np.testing.assert_allclose(lognorm.toarray(), adata.X.toarray(), rtol=1e-6)


@pytest.mark.parametrize("logged", [True, False])
def test_normalised_values_without_counts_are_logged_only_when_needed(tmp_path, logged):
    adata = make_counts_adata(n_cells=120, n_genes=30)
    scaled = sp.csr_matrix(adata.X.multiply(1e4 / adata.X.sum(axis=1)), dtype=np.float32)  # per 10,000, not logged
    adata.X = normalise_log1p(adata.X) if logged else scaled
    adata.write_h5ad(tmp_path / "normalised.h5ad")
    rows = open_rows(tmp_path / "normalised.h5ad")
    try:
        plan = plan_matrices(rows)
        blocks = list(iter_expression(plan, rows.adata.obs_names, 50))
    finally:
        rows.close()
    assert (plan.is_counts, plan.needs_log) == (False, not logged)
    assert plan.notes["counts"] is None and plan.notes["warning"].startswith("No raw counts in the input")
    assert all(counts is None for _, _, counts in blocks) and [s for s, _, _ in blocks] == [0, 50, 100]
    expected = adata.X.toarray() if logged else np.log1p(scaled.toarray())
    np.testing.assert_allclose(sp.vstack([b for _, b, _ in blocks]).toarray(), expected, rtol=1e-5, atol=1e-6)


def test_a_bad_block_is_refused_naming_its_first_bad_cell():
    counts = make_counts_adata(n_cells=300, n_genes=20)
    matrix = counts.X.tolil()
    matrix[260, 4] = -1.0
    matrix[290, 1] = -2.0
    plan = MatrixPlan("layers['counts']", matrix.tocsr(), is_counts=True)
    blocks = iter_expression(plan, counts.obs_names, 100)
    assert [start for start, _, _ in (next(blocks), next(blocks))] == [0, 100]  # the clean blocks come first
    with pytest.raises(InputError, match=r"^layers\['counts'\] has 2 negative values \(first in cell 'cell260'\), "
                                         r"which raw counts cannot have"):
        next(blocks)
    values = sp.csr_matrix(np.array([[0.5, 0.0], [1.0, np.nan]], dtype=np.float32))
    with pytest.raises(InputError, match=r"^X has 1 NaN value \(first in cell 'b'\), which normalised values"):
        list(iter_expression(MatrixPlan("X", values, is_counts=False), ["a", "b"], 10))
