"""Baseline embeddings (PCA fitted on the reference only, the HVG space) and a real-data check."""

import numpy as np
import pytest
import scipy.sparse as sp

from engine.evaluate.baselines import hvg_embedding, pca_embedding
from engine.errors import InputError
from engine.evaluate.metrics import donor_split, evaluate_embeddings, summarise
from vcell_testing import shared_file


def _lognorm(n=300, n_genes=50, seed=0):
    rng = np.random.default_rng(seed)
    return sp.csr_matrix(np.log1p(rng.poisson(rng.gamma(1.0, 1.0, n_genes), (n, n_genes))).astype(np.float32))


def test_pca_is_fitted_on_the_training_cells_only():
    X = _lognorm()
    train, query = X[:200], X[200:]
    ref_emb, query_emb = pca_embedding(train, query, n_components=8, seed=0)
    assert ref_emb.shape == (200, 8) and query_emb.shape == (100, 8) and ref_emb.dtype == np.float32
    # the query never changes the fit: other query cells give the same reference embedding ...
    other_ref, _ = pca_embedding(train, _lognorm(seed=5)[:100] * 3, n_components=8, seed=0)
    np.testing.assert_allclose(other_ref, ref_emb, atol=1e-5)
    # ... and a query cell embeds the same alone as in a batch
    (_, alone) = pca_embedding(train, query[:1], n_components=8, seed=0)
    np.testing.assert_allclose(alone, query_emb[:1], atol=1e-5)
    assert len(pca_embedding(train, query, query, n_components=8)) == 3


def test_pca_uses_the_hvg_mask_and_checks_genes():
    X = _lognorm()
    mask = np.zeros(50, dtype=bool)
    mask[:10] = True
    masked = pca_embedding(X[:200], X[200:], n_components=4, hvg_mask=mask)
    by_columns = pca_embedding(X[:200, :10], X[200:, :10], n_components=4)
    np.testing.assert_allclose(masked[1], by_columns[1], atol=1e-5)
    with pytest.raises(InputError):
        pca_embedding(X[:200], X[200:, :10])
    with pytest.raises(InputError):
        pca_embedding(X, hvg_mask=np.zeros(50, dtype=bool))
    with pytest.raises(InputError):
        pca_embedding(X, hvg_mask=np.ones(7, dtype=bool))


def test_hvg_embedding_is_standardised_on_the_fit_rows():
    X = _lognorm()
    mask = np.arange(50) < 20
    emb = hvg_embedding(X, mask, clip=np.inf)
    assert emb.shape == (300, 20) and emb.dtype == np.float32
    np.testing.assert_allclose(emb.mean(axis=0), 0, atol=1e-4)
    reference = np.arange(150)
    np.testing.assert_allclose(hvg_embedding(X, mask, fit_rows=reference, clip=np.inf)[reference].mean(axis=0),
                               0, atol=1e-4)
    fitted = hvg_embedding(X, mask, fit_rows=reference)
    dense = X.toarray()[:, :20]
    expected = (dense - dense[:150].mean(0)) / np.where(dense[:150].std(0) == 0, 1, dense[:150].std(0))
    np.testing.assert_allclose(fitted, np.clip(expected, -10, 10), atol=1e-4)
    assert np.abs(hvg_embedding(X * 100, mask, fit_rows=np.arange(2), clip=3.0)).max() <= 3.0


@pytest.fixture(scope="module")
def kang_reference():
    """kang_ctrl_reference: log-normalised (1e4 + log1p), 2,000 HVGs, cell types and donors."""
    import anndata as ad
    import scanpy as sc

    adata = ad.read_h5ad(shared_file("kang_ctrl_reference.h5ad"))
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=2000)
    return sp.csr_matrix(adata.X), adata.var["highly_variable"].to_numpy(), adata.obs


def _kang_methods(X, hvg):
    def pca(seed, reference, query):
        return pca_embedding(X[reference], X[query], n_components=64, seed=seed, hvg_mask=hvg)

    def hvg_space(seed, reference, query):
        emb = hvg_embedding(X, hvg, fit_rows=reference)
        return emb[reference], emb[query]

    return {"pca": pca, "hvg": hvg_space}


def test_baselines_on_held_out_donors_of_kang(kang_reference):
    X, hvg, obs = kang_reference
    labels = obs["cluster_id"].astype(str).to_numpy()

    def split(seed):
        return donor_split(obs, "sample_id", seed=seed)

    methods = _kang_methods(X, hvg)
    results = evaluate_embeddings({"pca": methods["pca"]}, labels, split, seeds=(0, 1, 2), linear=False)
    assert results.split.str.startswith("donor split").all()
    pca = results[results.method == "pca"]
    assert (pca.knn_macro_f1 > 0.9).all() and (pca.knn_micro_f1 > 0.95).all()  # measured 0.984 +- 0.010
    # under L2 the clipped z-scores of rare genes swamp the HVG space (measured 0.47); under cosine ~0.99
    cosine = summarise(evaluate_embeddings({"hvg": methods["hvg"]}, labels, split, seeds=(0,), metric="cosine",
                                           linear=False))
    assert (cosine.knn_macro_f1_mean > 0.9).all()
    shuffled = np.random.default_rng(0).permutation(labels)
    chance = evaluate_embeddings({"pca": methods["pca"]}, shuffled, split, seeds=(0,), linear=False)
    assert (chance.knn_macro_f1 < 0.4).all()  # measured ~0.21 (4 unbalanced labels)
