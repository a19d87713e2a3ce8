"""A model's genes in a bundle (engine.build.model_genes): training gene selections and a checkpoint's columns."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from vcell_testing import tiny_ensembl_id

from engine.build.model_genes import model_gene_columns, resolve_genes
from engine.bundle.atlas import read_atlas
from engine.errors import GeneNotFoundError, InputError


def test_gene_selections_become_positions(tiny_bundle):
    atlas = read_atlas(tiny_bundle)
    np.testing.assert_array_equal(resolve_genes(atlas, "all"), np.arange(200))
    hvg = resolve_genes(atlas, "hvg")
    np.testing.assert_array_equal(hvg, np.flatnonzero(atlas.var["highly_variable"].to_numpy()))
    assert len(hvg) > 0
    named = resolve_genes(atlas, ["G12", "g3", tiny_ensembl_id(150), "G0"])  # in the order given
    assert named.tolist() == [12, 3, 150, 0] and named.dtype == np.int64
    assert resolve_genes(atlas, [np.int64(9), 2]).tolist() == [9, 2]
    with pytest.raises(InputError, match="^Unknown gene selection 'highly_variable': use 'hvg', 'all' or a list"):
        resolve_genes(atlas, "highly_variable")
    with pytest.raises(GeneNotFoundError, match=r"2 genes are not in this atlas's 200 genes \('G999', 'NOPE'\)"):
        resolve_genes(atlas, ["G1", "G999", "NOPE"])


def test_an_atlas_without_highly_variable_genes_needs_another_selection(tiny_bundle, tmp_path):
    copy = tmp_path / "copy.vcell"
    shutil.copytree(tiny_bundle, copy)
    genes = pd.read_parquet(copy / "genes.parquet")
    genes.assign(highly_variable=False).to_parquet(copy / "genes.parquet")  # same genes, none marked
    atlas = read_atlas(copy)
    with pytest.raises(InputError, match="marks no highly variable genes: use genes='all' or give a gene list"):
        resolve_genes(atlas, "hvg")
    assert len(resolve_genes(atlas, "all")) == 200


def test_model_columns_follow_the_model_order_and_mark_missing_genes(tiny_bundle):
    atlas = read_atlas(tiny_bundle)
    model_genes = ["G5", "NOT_IN_ATLAS", tiny_ensembl_id(2), "g40", "ALSO_MISSING", "G7"]
    read, columns = model_gene_columns(atlas, model_genes)
    assert read.tolist() == [5, 2, 40, 7]  # the bundle genes to read, in model order
    assert columns.tolist() == [0, -1, 1, 2, -1, 3]  # each model gene's column in what was read
    block = atlas.expression(np.arange(10), read).toarray()
    for i, gene in enumerate(model_genes):  # what the model sees as gene i
        if columns[i] >= 0:
            np.testing.assert_array_equal(block[:, columns[i]], atlas.gene_values(gene)[:10])
    positions, columns = model_gene_columns(atlas, [199, 0, 3])  # bundle positions need no names
    assert positions.tolist() == [199, 0, 3] and columns.tolist() == [0, 1, 2]


def test_too_few_known_model_genes_are_refused_with_the_overlap(tiny_bundle):
    atlas = read_atlas(tiny_bundle)
    genes = ["G1", "G2"] + [f"OTHER{i}" for i in range(6)]
    with pytest.raises(InputError, match=r"The model knows 8 genes; only 2 \(25\.0%\) are in this atlas: below the 50"):
        model_gene_columns(atlas, genes)
    read, columns = model_gene_columns(atlas, genes, min_overlap=0.2)
    assert read.tolist() == [1, 2] and (columns[2:] == -1).all()
