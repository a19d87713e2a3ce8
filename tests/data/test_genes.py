"""Gene identifiers: Ensembl / symbol detection, look-up, autocomplete, gene maps."""

from __future__ import annotations

import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from engine.data.genes import GeneIndex, gene_table, is_ensembl, read_gene_map, strip_version
from engine.errors import GeneNotFoundError, InputError


def test_ensembl_pattern():
    assert is_ensembl("ENSG00000187608")
    assert is_ensembl("ENSG00000187608.10")
    assert is_ensembl("ENSMUSG00000051951")
    assert not is_ensembl("ISG15")
    assert not is_ensembl("ENSG0000018760")  # 10 digits
    assert strip_version("ENSG00000187608.10") == "ENSG00000187608"
    assert strip_version("HLA-A.1") == "HLA-A.1"


def test_symbols_in_index():
    var = pd.DataFrame(index=["ISG15", "CD3E", "MT-CO1"])
    table = gene_table(var)
    assert list(table.index) == ["ISG15", "CD3E", "MT-CO1"]
    assert table["gene_symbol"].tolist() == ["ISG15", "CD3E", "MT-CO1"]
    assert table["gene_id"].tolist() == [None, None, None]


def test_ids_in_index_symbols_in_column():
    var = pd.DataFrame({"feature_name": ["ISG15", "CD3E", None]},
                       index=["ENSG00000187608.9", "ENSG00000198851", "ENSG00000000003"])
    table = gene_table(var)
    assert table["gene_id"].tolist() == ["ENSG00000187608.9", "ENSG00000198851", "ENSG00000000003"]
    assert table["gene_symbol"].tolist() == ["ISG15", "CD3E", None]


def test_symbols_in_index_ids_in_column():
    var = pd.DataFrame({"gene_ids": ["ENSG00000187608", "ENSG00000198851"]}, index=["ISG15", "CD3E"])
    table = gene_table(var)
    assert table["gene_id"].tolist() == ["ENSG00000187608", "ENSG00000198851"]
    assert table["gene_symbol"].tolist() == ["ISG15", "CD3E"]


def test_gene_map_fills_the_other_side():
    gene_map = pd.DataFrame({"id": ["ENSG00000187608", "ENSG00000198851"], "sym": ["ISG15", "CD3E"]})
    by_id = gene_table(pd.DataFrame(index=["ENSG00000187608.3", "ENSG00000198851", "ENSG00000999999"]),
                       gene_map=gene_map)
    assert by_id["gene_symbol"].tolist() == ["ISG15", "CD3E", None]
    by_symbol = gene_table(pd.DataFrame(index=["isg15", "NOPE"]), gene_map=gene_map)
    assert by_symbol["gene_id"].tolist() == ["ENSG00000187608", None]


def test_duplicate_var_names_keep_order():
    table = gene_table(pd.DataFrame(index=["A", "B", "A"]))
    assert table["gene_symbol"].tolist() == ["A", "B", "A"]


@pytest.fixture
def index() -> GeneIndex:
    var = pd.DataFrame({"feature_name": ["ISG15", "IFI6", "IFI27", "CD3E", None]},
                       index=["ENSG00000187608.9", "ENSG00000126709", "ENSG00000165949", "ENSG00000198851",
                              "ENSG00000000003"])
    return GeneIndex(gene_table(var))


def test_resolve_by_symbol_or_id(index):
    assert index.resolve("isg15") == 0
    assert index.resolve(" IFI27 ") == 2
    assert index.resolve("ENSG00000187608") == 0  # version stripped from the atlas id
    assert index.resolve("ensg00000198851.4") == 3  # and from the query
    assert index.resolve("ENSG00000000003") == 4
    assert len(index) == 5
    assert index.label(0) == "ISG15"
    assert index.label(4) == "ENSG00000000003"  # no symbol: the id
    assert index.labels == ["ISG15", "IFI6", "IFI27", "CD3E", "ENSG00000000003"]


def test_unknown_gene_message(index):
    with pytest.raises(GeneNotFoundError) as info:
        index.resolve("ISG51")
    message = str(info.value)
    assert message.startswith("Gene 'ISG51' is not in this atlas's 5 genes")
    assert "Did you mean: ISG15?" in message
    assert isinstance(info.value, KeyError)


def test_resolve_many_reports_every_unknown(index):
    np.testing.assert_array_equal(index.resolve_many(["CD3E", "ifi6"]), [3, 1])
    with pytest.raises(GeneNotFoundError) as info:
        index.resolve_many(["CD3E", "FOO", "BAR1"])
    message = str(info.value)
    assert "2 genes are not in this atlas's 5 genes ('FOO', 'BAR1')" in message


def test_search_prefix_then_substring(index):
    assert index.search("IFI") == ["IFI27", "IFI6"]
    assert index.search("i", limit=3) == ["IFI27", "IFI6", "ISG15"]
    assert index.search("15") == ["ISG15"]
    assert index.search("3e") == ["CD3E"]
    assert index.search("ENSG0000000") == ["ENSG00000000003"]
    assert index.search("ensg000001") == ["ISG15", "IFI6", "IFI27", "CD3E"]  # by id, shown by symbol
    assert index.search("zzz") == []
    assert len(index.search("", limit=2)) == 2


def test_index_from_plain_names():
    index = GeneIndex(["A1", "B2", "C3"])
    assert index.resolve("b2") == 1


def test_fast_for_60k_genes():
    names = [f"GENE{i}" for i in range(60_000)]
    start = time.perf_counter()
    index = GeneIndex(names)
    assert index.resolve("gene59999") == 59_999
    assert index.search("GENE5999", limit=5)[0] == "GENE5999"
    found = index.resolve_many(names[::7])
    assert len(found) == len(names[::7])
    assert time.perf_counter() - start < 3.0


def test_read_gene_map(tmp_path):
    tsv = tmp_path / "map.tsv"
    tsv.write_text("symbol\tgene_id\nISG15\tENSG00000187608\nCD3E\tENSG00000198851.3\n")
    table = read_gene_map(tsv)
    assert table.columns.tolist() == ["gene_id", "gene_symbol"]
    assert table["gene_id"].tolist() == ["ENSG00000187608", "ENSG00000198851.3"]
    assert table["gene_symbol"].tolist() == ["ISG15", "CD3E"]
    csv = tmp_path / "map.csv"
    csv.write_text("ENSG00000187608,ISG15\n")
    assert read_gene_map(csv)["gene_symbol"].tolist() == ["ISG15"]


def test_read_gene_map_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_gene_map(tmp_path / "none.tsv")
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\nx\ty\n")
    with pytest.raises(InputError, match="no column of Ensembl IDs"):
        read_gene_map(bad)
    one = tmp_path / "one.tsv"
    one.write_text("ENSG00000187608\n")
    with pytest.raises(InputError, match="has 1 column"):
        read_gene_map(one)


def test_real_ensembl_reference(shared_data):
    adata = ad.read_h5ad(shared_data("kang_ctrl_reference.h5ad"), backed="r")
    table = gene_table(adata.var)
    assert table["gene_id"].notna().all()
    assert table["gene_symbol"].isna().all()
    index = GeneIndex(table)
    assert len(index) == adata.n_vars == 2511
    assert index.resolve("ENSG00000187608") == list(adata.var_names).index("ENSG00000187608")
    adata.file.close()


def test_real_symbols(shared_data):
    adata = ad.read_h5ad(shared_data("kang_ifnb_1k.h5ad"), backed="r")
    index = GeneIndex(gene_table(adata.var))
    positions = index.resolve_many(["ISG15", "ifit1", "MX1"])
    assert [adata.var_names[p] for p in positions] == ["ISG15", "IFIT1", "MX1"]
    assert "ISG15" in index.search("ISG")
    adata.file.close()
