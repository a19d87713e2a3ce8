"""Cells from any source for label transfer (engine.annotate.cell_data): reading them, their expression, shared genes.

The three gene-matching tests moved here from tests/annotate/test_annotate.py.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from vcell_testing import make_counts_adata, tiny_ensembl_id, write_tiny_h5ad

from engine.annotate.cell_data import (
    CellData,
    informative_genes,
    match_genes,
    read_cells,
    shared_blocks,
    shared_expression,
)
from engine.bundle.atlas import read_atlas
from engine.data.genes import gene_table
from engine.data.hvg import GeneStats, select_hvg
from engine.data.normalise import normalise_log1p
from engine.data.store import ExpressionStore
from engine.errors import InputError


@pytest.fixture(scope="module")
def adata():
    return make_counts_adata(n_cells=200, n_genes=60)


# ----------------------------------------------------------------------------- reading cells
def test_an_anndata_gives_normalised_values_counts_genes_and_guessed_labels(adata):
    data = read_cells(adata)
    assert isinstance(data, CellData) and data.n_cells == 200 and data.has_counts
    assert (data.source, data.label_key) == ("the given AnnData", "cell_label")
    np.testing.assert_array_equal(data.labels, adata.obs["cell_label"].astype(str).to_numpy())
    cells = np.arange(200)
    np.testing.assert_allclose(data.store.rows(cells).toarray(), normalise_log1p(adata.X).toarray(), rtol=1e-6)
    np.testing.assert_array_equal(data.store.rows(cells, layer="counts").toarray(), adata.X.toarray())
    assert list(data.genes.index) == list(adata.var_names) and data.genes["gene_symbol"].iloc[3] == "G3"


def test_a_file_is_read_with_its_gene_ids(tmp_path):
    path = write_tiny_h5ad(tmp_path / "tiny.h5ad", n_cells=50, n_genes=30)
    data = read_cells(path, cell_type_key="sample")
    assert data.source == str(path) and data.label_key == "sample" and set(data.labels) <= {"d1", "d2", "d3", "d4"}
    assert data.genes["gene_id"].tolist() == [tiny_ensembl_id(i) for i in range(30)]


def test_a_reference_needs_cell_types_and_cells(adata):
    unlabelled = adata.copy()
    unlabelled.obs = unlabelled.obs[["condition", "sample"]]
    with pytest.raises(InputError, match=r"^the given AnnData has no cell-type column \(its obs columns are: "
                                         r"condition, sample, disease, donor_id\): name the column that holds cell "
                                         r"types with --reference-cell-type-key\.$"):
        read_cells(unlabelled)
    query = read_cells(unlabelled, labelled=False)  # a query may come without
    assert query.labels is None and query.label_key is None and query.n_cells == 200
    with pytest.raises(InputError, match="^the given AnnData has no cells: give a data set with at least one cell"):
        read_cells(adata[:0].copy())


def test_a_bundle_gives_its_store_labels_and_highly_variable_genes(tiny_bundle):
    atlas = read_atlas(tiny_bundle)
    for source in (tiny_bundle, str(tiny_bundle), atlas):
        data = read_cells(source)
        assert isinstance(data.store, ExpressionStore) and data.source == str(tiny_bundle)
        assert data.label_key == "cell_type" and data.has_counts and data.n_cells == 600
        np.testing.assert_array_equal(data.labels, atlas.obs["cell_type"].astype(str).to_numpy())
        np.testing.assert_array_equal(data.genes["highly_variable"], atlas.var["highly_variable"])
        np.testing.assert_array_equal(informative_genes(data), atlas.var["highly_variable"].to_numpy())
    assert read_cells(atlas, cell_type_key="donor_id").labels[0] in {"d1", "d2", "d3", "d4"}
    with pytest.raises(InputError, match=r"has no cell-type column 'celltype' \(its columns are: cell_label, "
                                         r"condition, sample, cell_type, disease, donor_id\): name one with"):
        read_cells(atlas, cell_type_key="celltype")
    assert read_cells(atlas, cell_type_key="celltype", labelled=False).labels is None


def test_a_bundle_whose_cell_types_are_clusters_is_no_reference(tiny_bundle, tmp_path):
    copy = tmp_path / "clusters.vcell"
    shutil.copytree(tiny_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["harmonisation"]["cell_type"] = {"source": None, "guessed": False, "method": "leiden on the kNN graph"}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="are Leiden clusters, not labels: give a labelled reference"):
        read_cells(copy)
    assert read_cells(copy, labelled=False).labels is not None  # a query keeps its clusters
    assert read_cells(copy, cell_type_key="cell_type").label_key == "cell_type"  # named on purpose: allowed


# ----------------------------------------------------------------------------- expression
def test_subsets_and_shared_expression(adata):
    data = read_cells(adata)
    sub = data.subset(np.array([5, 0, 7]))
    assert sub.n_cells == 3 and sub.labels.tolist() == data.labels[[5, 0, 7]].tolist() and sub.source == data.source
    np.testing.assert_array_equal(sub.store.rows(np.arange(3), layer="counts").toarray(), adata.X[[5, 0, 7]].toarray())
    cells, genes = np.array([1, 4, 9, 150]), np.array([3, 10, 20])
    renormalised = shared_expression(data, cells, genes, use_counts=True)  # over the shared genes only
    np.testing.assert_allclose(renormalised.toarray(), normalise_log1p(adata.X[cells][:, genes]).toarray(), rtol=1e-6)
    stored = shared_expression(data, cells, genes, use_counts=False)
    assert isinstance(stored, sp.csr_matrix) and stored.dtype == np.float32
    np.testing.assert_allclose(stored.toarray(), data.store.rows(cells).toarray()[:, genes])
    blocks = list(shared_blocks(data, genes, True, chunk=70))
    assert [start for start, _ in blocks] == [0, 70, 140]
    whole = shared_expression(data, np.arange(200), genes, True)
    np.testing.assert_array_equal(sp.vstack([b for _, b in blocks]).toarray(), whole.toarray())


def test_informative_genes_are_computed_when_not_stored(adata):
    data = read_cells(adata)
    assert "highly_variable" not in data.genes
    mask = informative_genes(data, n_top=15)
    stats = GeneStats(60)
    stats.update(data.store.rows(np.arange(200)))
    np.testing.assert_array_equal(mask, select_hvg(stats, n_top=15))
    assert mask.dtype == bool and mask.sum() == 15


# ----------------------------------------------------------------------------- genes
def test_genes_matched_by_id_or_symbol_in_any_order():
    reference = pd.DataFrame({"gene_id": ["ENSG00000000001", "ENSG00000000002", None],
                              "gene_symbol": [None, "B", "C"]}, index=["ENSG00000000001", "B", "C"])
    query = pd.DataFrame({"gene_id": [None, "ENSG00000000001.3", None], "gene_symbol": ["c", "A", "B"]},
                         index=["c", "A", "B"])
    match = match_genes(reference, query, min_shared=3, min_fraction=1.0)
    assert match.reference.tolist() == [0, 1, 2]
    assert match.query.tolist() == [1, 2, 0]


def test_ensembl_reference_matches_symbol_query_through_gencode():
    reference = gene_table(pd.DataFrame(index=["ENSG00000090382.4", "ENSG00000170458", "ENSG00000187608",
                                               "ENSG00000000001"]))  # LYZ, CD14, ISG15, not in GENCODE
    query = gene_table(pd.DataFrame(index=["isg15", "CD14", "LYZ", "MYLYZ"]))
    match = match_genes(reference, query, min_shared=3, min_fraction=0.75)
    assert match.reference.tolist() == [0, 1, 2] and match.query.tolist() == [2, 1, 0]
    assert match_genes(query, reference, min_shared=3, min_fraction=0.75).query.tolist() == [2, 1, 0]


def test_gene_map_overrides_gencode_when_matching():
    gene_map = pd.DataFrame({"gene_id": ["ENSG00000090382"], "gene_symbol": ["MYLYZ"]})  # as read_gene_map gives
    reference_var, query_var = pd.DataFrame(index=["ENSG00000090382"]), pd.DataFrame(index=["LYZ", "MYLYZ"])
    plain = match_genes(gene_table(reference_var), gene_table(query_var), min_shared=1)
    mapped = match_genes(gene_table(reference_var, gene_map), gene_table(query_var, gene_map), min_shared=1)
    assert plain.query.tolist() == [0] and mapped.query.tolist() == [1]  # GENCODE's LYZ, then the user's MYLYZ


def test_the_overlap_report_counts_informative_genes():
    reference = gene_table(pd.DataFrame(index=[f"G{i}" for i in range(10)]))
    query = gene_table(pd.DataFrame(index=["G9", "G1", "G2", "X1"]))
    informative = np.zeros(10, bool)
    informative[[1, 5, 7, 9]] = True
    match = match_genes(reference, query, informative, min_shared=3, min_fraction=0.5)
    assert match.reference.tolist() == [1, 2, 9] and match.query.tolist() == [1, 2, 0]
    assert (match.n_shared, match.n_informative, match.n_informative_shared) == (3, 4, 2)
    assert match.to_dict() == {"n_reference_genes": 10, "n_query_genes": 4, "n_shared": 3, "n_reference_hvg": 4,
                               "n_reference_hvg_shared": 2, "reference_hvg_fraction": 0.5}
    with pytest.raises(InputError, match=r"share only 3 genes \(2 of the reference's 4 highly variable genes, 50%\); "
                                         r"label transfer needs at least 3 genes and 60% of them: check that both"):
        match_genes(reference, query, informative, min_shared=3, min_fraction=0.6)


def test_too_small_an_overlap_says_how_the_genes_are_named():
    symbols = gene_table(pd.DataFrame(index=[f"G{i}" for i in range(5)]))
    ids = gene_table(pd.DataFrame(index=[tiny_ensembl_id(i) for i in range(5)]))
    with pytest.raises(InputError, match="the reference names genes by symbol only and the query by Ensembl ID only: "
                                         "give a TSV of Ensembl ID and symbol with --gene-map"):
        match_genes(symbols, ids, min_shared=1)
    with pytest.raises(InputError, match="share only 0 genes .*check that both are the same species"):
        match_genes(symbols, gene_table(pd.DataFrame(index=["X1", "X2"])), min_shared=1)
