"""Running per-gene statistics (GeneStats) and highly variable genes (engine.data.hvg)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

from engine.data.hvg import GeneStats, select_hvg
from engine.data.normalise import iter_row_blocks, normalise_log1p
from engine.errors import InputError


def _lognorm(counts: sp.csr_matrix) -> sp.csr_matrix:
    return normalise_log1p(counts)


def test_gene_stats_blockwise_equals_whole(counts_adata):
    values = _lognorm(counts_adata.X)
    dense = values.toarray().astype(np.float64)
    stats = GeneStats()
    for _, block in iter_row_blocks(values, chunk_rows=77):
        stats.update(block)
    assert stats.n_cells == counts_adata.n_obs
    np.testing.assert_allclose(stats.mean, dense.mean(0), rtol=1e-10)
    np.testing.assert_allclose(stats.var, dense.var(0, ddof=1), rtol=1e-8, atol=1e-12)
    np.testing.assert_array_equal(stats.n_expressing, (dense > 0).sum(0))
    np.testing.assert_allclose(stats.mean_expm1, np.expm1(dense).mean(0), rtol=1e-10)
    np.testing.assert_allclose(stats.var_expm1, np.expm1(dense).var(0, ddof=1), rtol=1e-8)


def test_gene_stats_merge_and_large_offsets():
    rng = np.random.default_rng(0)
    data = 8.0 + 0.01 * rng.normal(size=(3000, 3))  # large mean, tiny variance
    a, b = GeneStats(), GeneStats()
    a.update(data[:1000]).update(data[1000:1500])
    b.update(data[1500:])
    a.merge(b)
    np.testing.assert_allclose(a.var, data.var(0, ddof=1), rtol=1e-6)
    assert a.n_cells == 3000


def test_gene_stats_rejects_mismatched_blocks():
    stats = GeneStats().update(np.ones((2, 3)))
    with pytest.raises(InputError, match="has 4 genes but earlier blocks had 3"):
        stats.update(np.ones((2, 4)))


def test_select_hvg_small(counts_adata):
    stats = GeneStats().update(_lognorm(counts_adata.X))
    mask = select_hvg(stats, n_top=20)
    assert mask.dtype == bool and mask.sum() == 20
    everything = select_hvg(stats, n_top=10_000)
    assert everything.sum() == int((stats.n_expressing >= 3).sum())


def test_select_hvg_skips_rare_genes():
    rng = np.random.default_rng(1)
    counts = rng.poisson(2.0, size=(200, 40)).astype(np.float32)
    counts[:, 0] = 0
    counts[:2, 0] = 500  # hugely variable but in 2 cells only
    stats = GeneStats().update(normalise_log1p(sp.csr_matrix(counts)))
    mask = select_hvg(stats, n_top=5)
    assert not mask[0] and mask.sum() == 5


def test_select_hvg_needs_cells():
    with pytest.raises(InputError, match="No cells"):
        select_hvg(GeneStats(), n_top=5)


@pytest.mark.parametrize("name", ["kang_ifnb_1k.h5ad", "covid_pbmc_combat_subset.h5ad"])
def test_hvg_agrees_with_scanpy_seurat(shared_data, name):
    adata = ad.read_h5ad(shared_data(name))
    sc.pp.filter_genes(adata, min_cells=3)
    stats = GeneStats()
    for _, block in iter_row_blocks(adata.X, chunk_rows=1000):
        stats.update(normalise_log1p(block))
    ours = select_hvg(stats, n_top=1000)
    ref = adata.copy()
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    sc.pp.highly_variable_genes(ref, flavor="seurat", n_top_genes=1000)
    theirs = ref.var["highly_variable"].to_numpy()
    overlap = (ours & theirs).sum() / 1000
    assert ours.sum() == 1000
    assert overlap > 0.95, overlap
