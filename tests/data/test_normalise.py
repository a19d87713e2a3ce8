"""Counts detection and normalisation."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp
from vcell_testing import make_counts_adata

from engine.data.normalise import (
    check_counts,
    choose_counts,
    choose_lognorm,
    detect_matrix_kind,
    looks_logged,
    normalise_log1p,
    to_csr,
)
from engine.errors import InputError

REAL_FILES = ("covid_pbmc_combat_subset.h5ad", "kang_ifnb_1k.h5ad", "kang_ifnb_donors.h5ad",
              "kang_ctrl_reference.h5ad")


def _lognorm(counts: sp.csr_matrix) -> sp.csr_matrix:
    return normalise_log1p(counts)


# ---------------------------------------------------------------- detection


def test_detect_kinds_on_sparse_and_dense(counts_adata):
    counts = counts_adata.X
    assert detect_matrix_kind(counts) == "counts"
    assert detect_matrix_kind(counts.toarray()) == "counts"
    logged = _lognorm(counts)
    assert detect_matrix_kind(logged) == "lognorm"
    assert detect_matrix_kind(logged.toarray()) == "lognorm"
    dense = logged.toarray()
    scaled = (dense - dense.mean(0)) / (dense.std(0) + 1e-6)
    assert detect_matrix_kind(scaled) == "scaled"
    assert detect_matrix_kind(sp.csr_matrix((5, 4))) == "counts"  # all zero


def test_detect_samples_few_rows_of_a_large_matrix():
    n = 200_000
    counts = sp.random(n, 50, density=0.01, format="csr", random_state=0, dtype=np.float32)
    counts.data = np.ceil(counts.data * 5)
    assert detect_matrix_kind(counts, n_rows=400) == "counts"


def test_detect_on_backed_h5ad(tmp_path, counts_adata):
    path = tmp_path / "a.h5ad"
    counts_adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    assert detect_matrix_kind(backed.X, n_rows=100) == "counts"
    backed.file.close()
    dense = counts_adata.copy()
    dense.X = _lognorm(dense.X).toarray()
    dense.write_h5ad(tmp_path / "dense.h5ad")
    backed = ad.read_h5ad(tmp_path / "dense.h5ad", backed="r")
    assert detect_matrix_kind(backed.X, n_rows=100) == "lognorm"  # h5py dataset
    backed.file.close()


def test_looks_logged(counts_adata):
    assert looks_logged(_lognorm(counts_adata.X))
    cpm = counts_adata.X.multiply(1e6 / counts_adata.X.sum(axis=1)).tocsr()
    assert not looks_logged(cpm)


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_files_hold_counts(shared_data, name):
    adata = ad.read_h5ad(shared_data(name), backed="r")
    assert detect_matrix_kind(adata.X) == "counts"
    adata.file.close()


def test_pbmc68k_reduced_is_scaled_with_lognorm_raw():
    adata = sc.datasets.pbmc68k_reduced()
    assert detect_matrix_kind(adata.X) == "scaled"
    assert detect_matrix_kind(adata.raw.X) == "lognorm"


# ---------------------------------------------------------------- check_counts


def test_check_counts_accepts_counts(counts_adata):
    check_counts(counts_adata.X)


def test_check_counts_reports_nan_and_negative_with_cell():
    X = sp.csr_matrix(np.array([[1, 0, 2], [0, np.nan, 1], [np.nan, -3, 0], [4, 0, -1]], dtype=np.float32))
    with pytest.raises(InputError) as info:
        check_counts(X, obs_names=["AAAC-1", "AAAG-1", "CCTA-1", "GGTT-1"], chunk_rows=2)
    message = str(info.value)
    assert "X has 2 NaN values (first in cell 'AAAG-1')" in message
    assert "2 negative values (first in cell 'CCTA-1')" in message
    assert message.endswith(".") and "\n" not in message


def test_check_counts_inf_in_dense_layer():
    X = np.ones((3, 3), dtype=np.float32)
    X[2, 1] = np.inf
    with pytest.raises(InputError, match=r"layers\['counts'\] has 1 infinite value \(first in cell 2\)"):
        check_counts(X, name="layers['counts']")


# ---------------------------------------------------------------- choosing matrices


def test_choose_counts_prefers_counts_layer(counts_adata):
    adata = counts_adata.copy()
    adata.layers["counts"] = adata.X.copy()
    adata.X = _lognorm(adata.X)
    counts, where = choose_counts(adata)
    assert where == "layers['counts']"
    assert counts.dtype == np.float32 and sp.isspmatrix_csr(counts)
    np.testing.assert_array_equal(counts.toarray(), counts_adata.X.toarray())


def test_choose_counts_from_raw_subset_to_var(counts_adata):
    adata = counts_adata.copy()
    adata.raw = adata
    adata = adata[:, [5, 2, 9]].copy()
    adata.X = _lognorm(adata.X)
    counts, where = choose_counts(adata)
    assert where == ".raw.X"
    np.testing.assert_array_equal(counts.toarray(), counts_adata.X[:, [5, 2, 9]].toarray())


def test_choose_counts_without_counts(counts_adata):
    adata = counts_adata.copy()
    adata.X = _lognorm(adata.X)
    counts, where = choose_counts(adata)
    assert counts is None
    assert where == "X is log-normalised; no raw counts"


def test_choose_counts_refuses_nan_counts(counts_adata):
    adata = counts_adata.copy()
    X = adata.X.toarray()
    X[-1, 3] = np.nan  # far from the sampled rows: found by the full check
    adata.X = sp.csr_matrix(X)
    with pytest.raises(InputError, match="X has 1 NaN value \\(first in cell 'cell599'\\)"):
        choose_counts(adata)


def test_choose_lognorm_from_counts(counts_adata):
    values, where = choose_lognorm(counts_adata)
    assert where == "log1p of X normalised to 10,000 per cell"
    np.testing.assert_allclose(values.toarray(), _lognorm(counts_adata.X).toarray(), rtol=1e-6)


def test_choose_lognorm_normalises_unlogged_values(counts_adata):
    adata = counts_adata.copy()
    adata.X = counts_adata.X.multiply(1e6 / counts_adata.X.sum(axis=1)).tocsr().astype(np.float32)  # CPM
    values, where = choose_lognorm(adata)
    assert "not logged" in where
    np.testing.assert_allclose(values.toarray(), _lognorm(counts_adata.X).toarray(), rtol=1e-4, atol=1e-5)


def test_choose_lognorm_uses_raw_of_pbmc68k_reduced():
    adata = sc.datasets.pbmc68k_reduced()
    counts, where = choose_counts(adata)
    assert counts is None and "no raw counts" in where and "X is scaled" in where
    values, where = choose_lognorm(adata)
    assert where == ".raw.X (already log-normalised)"
    assert values.shape == adata.shape
    np.testing.assert_allclose(values[:5].toarray(), adata.raw.X[:5].toarray())


def test_choose_lognorm_refuses_scaled_only():
    adata = sc.datasets.pbmc68k_reduced()
    del adata.raw
    with pytest.raises(InputError) as info:
        choose_lognorm(adata)
    assert str(info.value) == ("X holds scaled values (negative numbers) and there are no raw counts in "
                               "layers['counts'] or .raw: give the file with raw counts.")


# ---------------------------------------------------------------- normalise_log1p


def test_normalise_log1p_values_and_zero_cells():
    counts = sp.csr_matrix(np.array([[1, 3, 0], [0, 0, 0], [2, 0, 2]], dtype=np.float32))
    out = normalise_log1p(counts, target_sum=100)
    assert out.dtype == np.float32 and sp.isspmatrix_csr(out)
    expected = np.log1p(np.array([[25, 75, 0], [0, 0, 0], [50, 0, 50]], dtype=np.float64))
    np.testing.assert_allclose(out.toarray(), expected, rtol=1e-6)
    assert np.isfinite(out.data).all()
    np.testing.assert_allclose(np.expm1(out.toarray()).sum(1), [100, 0, 100], rtol=1e-5)


def test_normalise_log1p_matches_scanpy(counts_adata):
    ref = counts_adata.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    np.testing.assert_allclose(normalise_log1p(counts_adata.X).toarray(), ref.X.toarray(), rtol=1e-5, atol=1e-6)


def test_to_csr_of_backed(tmp_path, counts_adata):
    counts_adata.write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    np.testing.assert_array_equal(to_csr(backed.X).toarray(), counts_adata.X.toarray())
    backed.file.close()


def test_make_counts_adata_is_counts():
    assert detect_matrix_kind(make_counts_adata(n_cells=10, n_genes=5).X) == "counts"
