"""Gene identifiers: Ensembl / symbol detection, look-up, autocomplete, gene maps, shipped GENCODE tables."""

from __future__ import annotations

import hashlib
import re
import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from engine.data.gencode import complete_gene_table, guess_species, shipped_gene_map, shipped_lookup
from engine.data.gene_index import GeneIndex
from engine.data.genes import gene_table, is_ensembl, read_gene_map, strip_version
from engine.data.shipped import shipped_file
from engine.errors import GeneNotFoundError, InputError, MissingDataError


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
                              "ENSG00000000001"])
    return GeneIndex(gene_table(var))


def test_resolve_by_symbol_or_id(index):
    assert index.resolve("isg15") == 0
    assert index.resolve(" IFI27 ") == 2
    assert index.resolve("ENSG00000187608") == 0  # version stripped from the atlas id
    assert index.resolve("ensg00000198851.4") == 3  # and from the query
    assert index.resolve("ENSG00000000001") == 4
    assert len(index) == 5
    assert index.label(0) == "ISG15"
    assert index.label(4) == "ENSG00000000001"  # no symbol, not even in GENCODE: the id
    assert index.labels == ["ISG15", "IFI6", "IFI27", "CD3E", "ENSG00000000001"]


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
    assert index.search("ENSG0000000") == ["ENSG00000000001"]
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


# -- the shipped GENCODE tables ----------------------------------------------------------------------------
def test_shipped_tables_pair_ids_and_symbols():
    human, mouse = shipped_gene_map("human"), shipped_gene_map("mouse")
    assert human.columns.tolist() == ["gene_id", "gene_symbol", "gene_type"]
    assert len(human) > 40_000 and len(mouse) > 50_000  # GENCODE 48 / M37 genes with a symbol
    assert human.set_index("gene_id").loc["ENSG00000187608", "gene_symbol"] == "ISG15"
    assert mouse.set_index("gene_symbol").loc["Cd14", "gene_id"] == "ENSMUSG00000051439"
    assert human["gene_id"].is_unique and human["gene_id"].str.fullmatch(r"ENSG\d{11}").all()
    human.loc[0, "gene_symbol"] = "CHANGED"  # callers get a copy: the cached table is untouched
    assert shipped_gene_map("human").loc[0, "gene_symbol"] != "CHANGED"
    assert shipped_lookup("mouse").to_id["LYZ2"] == "ENSMUSG00000069516"


def test_shipped_tables_match_the_checksums_in_data_readme():
    readme = shipped_file("README.md").read_text()
    recorded = dict((name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", readme, re.M))
    assert set(recorded) == {"genes_homo_sapiens.csv.gz", "genes_mus_musculus.csv.gz"}
    for name, digest in recorded.items():
        assert hashlib.sha256(shipped_file(name).read_bytes()).hexdigest() == digest, name


def test_unknown_species_and_missing_files_are_one_sentence():
    with pytest.raises(InputError, match="No gene table is shipped for species 'zebrafish'.*--gene-map"):
        shipped_gene_map("zebrafish")
    with pytest.raises(InputError, match="No gene table is shipped"):
        complete_gene_table(gene_table(pd.DataFrame(index=["ISG15"])), species="rat")
    with pytest.raises(MissingDataError, match="no_such_table.csv.gz is missing .*reinstall"):
        shipped_file("no_such_table.csv.gz")


def test_species_guessed_from_ids_or_symbols():
    assert guess_species(ids=["ENSG00000187608.9", None]) == "human"
    assert guess_species(ids=["ENSMUSG00000051439", "ENSMUSG00000069516"]) == "mouse"
    assert guess_species(ids=["ENSDARG00000000001"]) is None  # zebrafish: no shipped table
    assert guess_species(symbols=["CD14", "LYZ", "not-a-gene"]) == "human"
    assert guess_species(symbols=["Cd14", "Lyz2", "Cd3e"]) == "mouse"  # exact case decides
    assert guess_species(symbols=["cd14", "lyz"]) == "human"  # case-insensitive when nothing matches exactly
    assert guess_species(symbols=[f"G{i}" for i in range(50)]) is None
    real = shipped_gene_map("human").query("gene_type == 'protein_coding'")["gene_symbol"][:300].tolist()
    synthetic = [f"GEN-{i + 1:05d}" for i in range(20_000)]  # a generated atlas's extra genes
    assert guess_species(symbols=real + synthetic) == "human"  # 1.5% of the names, but 300 GENCODE symbols
    assert guess_species() is None


def test_complete_fills_symbols_from_ids_and_ids_from_symbols():
    by_id = complete_gene_table(gene_table(pd.DataFrame(
        index=["ENSG00000187608.9", "ENSG00000090382", "ENSG00000000001"])))
    assert by_id["gene_symbol"].tolist() == ["ISG15", "LYZ", None]  # version ignored; unknown ID stays unknown
    assert by_id["gene_id"].tolist() == ["ENSG00000187608.9", "ENSG00000090382", "ENSG00000000001"]
    by_symbol = complete_gene_table(gene_table(pd.DataFrame(index=["isg15", "LYZ", "ASMT", "NOPE"])))
    assert by_symbol["gene_id"].tolist() == ["ENSG00000187608", "ENSG00000090382", None, None]  # ASMT: 2 genes
    assert by_symbol["gene_symbol"].tolist() == ["isg15", "LYZ", "ASMT", "NOPE"]  # as given
    mouse = complete_gene_table(gene_table(pd.DataFrame(index=["ENSMUSG00000051439", "ENSMUSG00000069516"])))
    assert mouse["gene_symbol"].tolist() == ["Cd14", "Lyz2"]


def test_complete_keeps_known_names_and_other_columns():
    table = pd.DataFrame({"gene_id": ["ENSG00000187608", None], "gene_symbol": ["MY-ISG15", None],
                          "highly_variable": [True, False]}, index=["a", "b"])
    out = complete_gene_table(table)
    assert out["gene_symbol"].tolist() == ["MY-ISG15", None] and out["highly_variable"].tolist() == [True, False]
    assert table["gene_symbol"].tolist() == ["MY-ISG15", None]  # the input is not modified
    names_only = complete_gene_table(pd.DataFrame(index=[f"G{i}" for i in range(5)]))  # no species: unchanged
    assert names_only["gene_id"].isna().all() and names_only["gene_symbol"].isna().all()


def test_user_gene_map_overrides_the_shipped_table():
    gene_map = pd.DataFrame({"id": ["ENSG00000187608"], "sym": ["MY-ISG15"]})
    var = pd.DataFrame(index=["ENSG00000187608", "ENSG00000090382"])
    table = complete_gene_table(gene_table(var, gene_map=gene_map))
    assert table["gene_symbol"].tolist() == ["MY-ISG15", "LYZ"]  # the user's name first, GENCODE's for the rest
    index = GeneIndex(gene_table(var, gene_map=gene_map))
    assert index.resolve("my-isg15") == 0 and index.resolve("lyz") == 1


def test_index_of_an_id_only_atlas_resolves_and_shows_symbols():
    index = GeneIndex(pd.DataFrame(index=["ENSG00000187608.9", "ENSG00000090382", "ENSG00000170458",
                                          "ENSG00000000001"]))
    assert index.labels == ["ISG15", "LYZ", "CD14", "ENSG00000000001"]
    assert index.resolve("lyz") == 1 and index.resolve("ENSG00000170458.2") == 2
    assert index.search("CD1") == ["CD14"]
    np.testing.assert_array_equal(index.resolve_many(["cd14", "ISG15"]), [2, 0])


def test_index_of_a_symbol_atlas_resolves_ids():
    index = GeneIndex(["ISG15", "LYZ", "ASMT"])
    assert index.labels == ["ISG15", "LYZ", "ASMT"]
    assert index.resolve("ENSG00000090382.12") == 1
    assert index.resolve("ENSG00000292336") == 2  # one of ASMT's two genes: found through its symbol
    mouse = GeneIndex(["Cd14", "Lyz2"])
    assert mouse.resolve("ENSMUSG00000069516") == 1
    with pytest.raises(GeneNotFoundError):
        index.resolve("ENSG00000170458")  # CD14: a real gene, not in this atlas
