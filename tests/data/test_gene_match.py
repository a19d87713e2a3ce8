"""Matching genes across data sets (engine.data.gene_match) and the places that use it."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from engine.data.gene_match import GeneMatcher
from engine.evaluate.transfer import write_union
from engine.models.masking import read_gene_sets

# GENCODE v48: ISG15 = ENSG00000187608, CD14 = ENSG00000170458, LYZ = ENSG00000090382
SYMBOLS = ["ISG15", "CD14", "LYZ"]
IDS = ["ENSG00000187608", "ENSG00000170458", "ENSG00000090382"]


def test_symbols_find_ensembl_ids_and_back_through_gencode():
    assert GeneMatcher(IDS).positions(["lyz", "ISG15", "NOTAGENE"]).tolist() == [2, 0, -1]
    assert GeneMatcher(SYMBOLS).positions(["ENSG00000170458.15", "ENSG00000090382"]).tolist() == [1, 2]


def test_own_names_outrank_gencode_and_the_first_duplicate_wins():
    matcher = GeneMatcher(["MYGENE", "CD14", "cd14"])
    assert matcher.positions(["mygene", "CD14"]).tolist() == [0, 1]


def test_gene_sets_named_by_ids_map_onto_a_model_named_by_symbols(tmp_path):
    gmt = tmp_path / "sets.gmt"
    gmt.write_text("interferon\tx\tENSG00000187608\tENSG00000090382\n"
                   "monocyte\tx\tCD14\tlyz\tNOTAGENE\n")
    sets = read_gene_sets(gmt, SYMBOLS)
    assert [s.tolist() for s in sets] == [[0, 2], [1, 2]]


def test_write_union_matches_a_source_named_by_ids_to_target_symbols(tmp_path):
    counts = sp.csr_matrix(np.array([[1, 2, 0], [0, 5, 7]], dtype=np.float32))
    by_id = ad.AnnData(counts, var=pd.DataFrame(index=IDS))
    by_id.obs_names = ["a", "b"]
    result = write_union({"ids": by_id}, ["CD14", "ISG15", "UNSEEN"], tmp_path / "union.h5ad")
    union = ad.read_h5ad(result.path)
    assert list(union.var_names) == ["CD14", "ISG15"] and result.genes_kept == 2
    np.testing.assert_array_equal(union.X.toarray(), [[2, 1], [5, 0]])
