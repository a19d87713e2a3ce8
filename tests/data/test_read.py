"""Reading atlases: .h5ad, SOMA experiments, generator output and a local census copy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.sparse as sp
import tiledbsoma as soma
import tiledbsoma.io as soma_io
from vcell_testing import make_counts_adata

from engine.data.read import _should_back, available_memory, read_source
from engine.data.soma import census_query, read_soma, write_census
from engine.errors import InputError

# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def small() -> ad.AnnData:
    return make_counts_adata(n_cells=60, n_genes=30)


@pytest.fixture(scope="module")
def h5ad_file(tmp_path_factory, small) -> Path:
    path = tmp_path_factory.mktemp("h5ad") / "small.h5ad"
    small.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def soma_experiment(tmp_path_factory, small) -> Path:
    path = tmp_path_factory.mktemp("soma") / "exp.soma"
    adata = small.copy()
    adata.var["feature_name"] = [f"SYM{i}" for i in range(adata.n_vars)]
    soma_io.from_anndata(str(path), adata, measurement_name="RNA", X_layer_name="counts")
    return path


CENSUS_CELLS = 120
CENSUS_GENES = 25


def _write_dataframe(collection, name: str, table: pd.DataFrame) -> None:
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    schema = pa.schema([f for f in arrow.schema if f.name != "soma_joinid"])
    frame = collection.add_new_dataframe(name, schema=schema, index_column_names=["soma_joinid"],
                                         domain=[(0, max(len(table) - 1, 0))])
    frame.write(arrow)


def _census_obs(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame({
        "soma_joinid": np.arange(n, dtype=np.int64),
        "dataset_id": np.where(np.arange(n) < n // 2, "ds-a", "ds-b"),
        "assay": "10x 3' v3",
        "cell_type": rng.choice(["T cell", "B cell", "monocyte"], n),
        "disease": np.where(np.arange(n) % 3 == 0, "COVID-19", "normal"),
        "donor_id": rng.choice(["D1", "D2", "D3"], n),
        "is_primary_data": np.arange(n) % 10 != 9,
        "tissue": np.where(np.arange(n) % 2 == 0, "blood", "lung parenchyma"),
        "tissue_general": np.where(np.arange(n) % 2 == 0, "blood", "lung"),
    })


@pytest.fixture(scope="module")
def census_root(tmp_path_factory) -> Path:
    """A local SOMA collection laid out like the CELLxGENE census (written without anndata)."""
    root = tmp_path_factory.mktemp("census") / "census"
    rng = np.random.default_rng(0)
    with soma.Collection.create(str(root)) as census:
        info = census.add_new_collection("census_info")
        _write_dataframe(info, "summary", pd.DataFrame({
            "soma_joinid": np.arange(3, dtype=np.int64),
            "label": ["census_schema_version", "census_build_date", "total_cell_count"],
            "value": ["2.1.0", "2025-01-01", str(CENSUS_CELLS)],
        }))
        _write_dataframe(info, "summary_cell_counts", pd.DataFrame({
            "soma_joinid": np.arange(4, dtype=np.int64),
            "organism": ["Homo sapiens"] * 4,
            "category": ["tissue_general", "tissue_general", "disease", "disease"],
            "label": ["blood", "lung", "normal", "COVID-19"],
            "total_cell_count": np.array([60, 60, 80, 40], dtype=np.int64),
        }))
        data = census.add_new_collection("census_data")
        exp = data.add_new_collection("homo_sapiens", soma.Experiment)
        _write_dataframe(exp, "obs", _census_obs(CENSUS_CELLS))
        ms = exp.add_new_collection("ms")
        rna = ms.add_new_collection("RNA", soma.Measurement)
        _write_dataframe(rna, "var", pd.DataFrame({
            "soma_joinid": np.arange(CENSUS_GENES, dtype=np.int64),
            "feature_id": [f"ENSG{i:011d}" for i in range(CENSUS_GENES)],
            "feature_name": [f"GENE{i}" for i in range(CENSUS_GENES)],
            "feature_length": np.full(CENSUS_GENES, 1000, dtype=np.int64),
        }))
        x = rna.add_new_collection("X")
        counts = sp.random(CENSUS_CELLS, CENSUS_GENES, density=0.3, format="coo", random_state=rng)
        counts.data = np.ceil(counts.data * 10).astype(np.float32)
        # value of cell i gene 0 = i + 1, so sampled cells can be checked against their joinid
        dense = counts.toarray()
        dense[:, 0] = np.arange(CENSUS_CELLS) + 1
        coo = sp.coo_matrix(dense)
        raw = x.add_new_sparse_ndarray("raw", type=pa.float32(), shape=(CENSUS_CELLS, CENSUS_GENES))
        raw.write(pa.Table.from_pydict({
            "soma_dim_0": coo.row.astype(np.int64), "soma_dim_1": coo.col.astype(np.int64),
            "soma_data": coo.data.astype(np.float32)}))
    return root


# ---------------------------------------------------------------- .h5ad


def test_read_h5ad_in_memory_and_backed(h5ad_file, small):
    adata = read_source(h5ad_file)
    assert not adata.isbacked
    assert adata.shape == small.shape
    np.testing.assert_array_equal(adata.X.toarray(), small.X.toarray())
    assert adata.uns["vcell_source"] == {"kind": "h5ad", "path": str(h5ad_file), "backed": False}

    backed = read_source(h5ad_file, backed=True)
    assert backed.isbacked
    np.testing.assert_array_equal(backed.X[5:9].toarray(), small.X[5:9].toarray())
    backed.file.close()


def test_backed_decision_uses_available_memory():
    gib = 1024**3
    assert _should_back(5 * gib, 10 * gib)
    assert not _should_back(3 * gib, 10 * gib)
    assert available_memory() > 0


def test_missing_path_says_what_is_supported(tmp_path):
    with pytest.raises(InputError, match=r"does not exist.*\.h5ad file.*TileDB-SOMA"):
        read_source(tmp_path / "nope.h5ad")


def test_csv_renamed_h5ad_is_refused(tmp_path):
    path = tmp_path / "table.h5ad"
    path.write_text("gene,cell1\nCD3E,4\n")
    with pytest.raises(InputError, match="not an HDF5 file") as info:
        read_source(path)
    assert "write_h5ad" in str(info.value)


def test_random_bytes_renamed_h5ad_is_refused(tmp_path):
    path = tmp_path / "noise.h5ad"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InputError, match="not an HDF5 file"):
        read_source(path)


def test_hdf5_that_is_not_anndata_is_refused(tmp_path):
    path = tmp_path / "matrix.h5ad"
    with h5py.File(path, "w") as fh:
        fh["matrix"] = np.arange(6).reshape(2, 3)
    with pytest.raises(InputError, match="HDF5 file but not an AnnData") as info:
        read_source(path)
    assert "no obs or var" in str(info.value)


def test_truncated_h5ad_is_refused(tmp_path, h5ad_file):
    path = tmp_path / "cut.h5ad"
    path.write_bytes(h5ad_file.read_bytes()[:3000])
    with pytest.raises(InputError, match="truncated"):
        read_source(path)


def test_unsupported_extension_names_the_supported_ones(tmp_path):
    path = tmp_path / "counts.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match=r"unsupported extension '\.csv'.*\.h5ad file.*SOMA") as info:
        read_source(path)
    assert str(info.value).count(".") >= 1 and "\n" not in str(info.value)


def test_plain_directory_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="neither a TileDB-SOMA experiment nor a `vcell generate` output"):
        read_source(tmp_path)


def test_real_h5ad_reads(shared_data):
    adata = read_source(shared_data("kang_ifnb_1k.h5ad"))
    assert adata.shape == (832, 14053)
    assert set(adata.obs["stim"].unique()) == {"CTRL", "STIM"}


# ---------------------------------------------------------------- SOMA


def test_read_soma_experiment(soma_experiment, small):
    adata = read_source(soma_experiment)
    assert adata.shape == small.shape
    assert list(adata.obs_names[:3]) == list(small.obs_names[:3])
    assert list(adata.var_names) == list(small.var_names)
    assert "feature_name" in adata.var.columns
    np.testing.assert_array_equal(adata.X.toarray(), small.X.toarray())
    assert adata.uns["vcell_source"]["layer"] == "counts"


def test_read_soma_filter_and_coords(soma_experiment, small):
    healthy = read_soma(soma_experiment, obs_value_filter="condition == 'normal'")
    assert healthy.n_obs == int((small.obs["condition"] == "normal").sum())
    assert set(healthy.obs["condition"]) == {"normal"}
    some = read_soma(soma_experiment, obs_coords=[2, 5, 7])
    assert list(some.obs_names) == ["cell2", "cell5", "cell7"]
    np.testing.assert_array_equal(some.X.toarray(), small.X[[2, 5, 7]].toarray())


def test_read_soma_bad_arguments(soma_experiment):
    with pytest.raises(InputError, match="no measurement 'DNA': choose one of RNA"):
        read_soma(soma_experiment, measurement="DNA")
    with pytest.raises(InputError, match="no X layer 'logcounts': choose one of counts"):
        read_soma(soma_experiment, layer="logcounts")
    with pytest.raises(InputError, match="could not be applied.*Column nosuch does not exist"):
        read_soma(soma_experiment, obs_value_filter="nosuch == 'x'")
    with pytest.raises(InputError, match="No cells .* match"):
        read_soma(soma_experiment, obs_value_filter="condition == 'absent'")


def test_soma_collection_is_not_an_experiment(census_root):
    with pytest.raises(InputError, match="Collection, not an experiment.*census_query"):
        read_source(census_root)


def test_census_experiment_reads_directly(census_root):
    adata = read_source(census_root / "census_data" / "homo_sapiens")
    assert adata.shape == (CENSUS_CELLS, CENSUS_GENES)
    assert adata.var_names[0] == "ENSG00000000000"
    assert adata.var["feature_name"].iloc[0] == "GENE0"
    assert adata.uns["vcell_source"]["layer"] == "raw"


# ---------------------------------------------------------------- generator output


def test_generator_output_with_h5ad(tmp_path, small):
    out = tmp_path / "gen"
    out.mkdir()
    small.write_h5ad(out / "atlas.h5ad")
    (out / "generated.json").write_text(json.dumps({"generator": "vcell", "seed": 7, "n_cells": 60}))
    adata = read_source(out)
    assert adata.shape == small.shape
    assert adata.uns["vcell_generated"] == {"generator": "vcell", "seed": 7, "n_cells": 60}
    assert adata.uns["vcell_source"]["kind"] == "generated"


def test_generator_output_with_soma(tmp_path, soma_experiment, small):
    out = tmp_path / "gen"
    out.mkdir()
    shutil.copytree(soma_experiment, out / "atlas.soma")
    (out / "generated.json").write_text(json.dumps({"seed": 3}))
    adata = read_source(out)
    assert adata.shape == small.shape
    assert adata.uns["vcell_generated"]["seed"] == 3


def test_generator_output_without_store_or_with_bad_json(tmp_path):
    (tmp_path / "generated.json").write_text("{}")
    with pytest.raises(InputError, match="no atlas.soma/ or atlas.h5ad"):
        read_source(tmp_path)
    (tmp_path / "generated.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_source(tmp_path)


# ---------------------------------------------------------------- census


def test_census_query_filters_primary_cells(census_root):
    obs = _census_obs(CENSUS_CELLS)
    adata = census_query(uri=str(census_root), tissue="blood", disease="normal")
    expected = obs[(obs.is_primary_data) & (obs.tissue_general == "blood") & (obs.disease == "normal")]
    assert adata.n_obs == len(expected)
    assert list(adata.obs_names) == [str(i) for i in expected.soma_joinid]
    assert set(adata.obs["tissue_general"]) == {"blood"}
    assert adata.obs["is_primary_data"].all()
    assert adata.n_vars == CENSUS_GENES and adata.var_names[3] == "ENSG00000000003"
    # gene 0 holds joinid + 1: rows really are the cells they claim to be
    np.testing.assert_array_equal(adata.X[:, 0].toarray().ravel(), expected.soma_joinid.to_numpy() + 1)
    source = adata.uns["vcell_source"]
    assert source["census_schema_version"] == "2.1.0"
    assert source["n_matching"] == len(expected)
    assert "tissue_general == 'blood'" in source["value_filter"]


def test_census_query_samples_reproducibly(census_root):
    first = census_query(uri=str(census_root), organism="Homo sapiens", max_cells=10, seed=4)
    again = census_query(uri=str(census_root), max_cells=10, seed=4)
    other = census_query(uri=str(census_root), max_cells=10, seed=5)
    assert first.n_obs == 10
    assert list(first.obs_names) == list(again.obs_names)
    assert list(first.obs_names) != list(other.obs_names)
    assert first.uns["vcell_source"]["n_matching"] == int(_census_obs(CENSUS_CELLS).is_primary_data.sum())
    joinids = first.obs_names.astype(int).to_numpy()
    np.testing.assert_array_equal(first.X[:, 0].toarray().ravel(), joinids + 1)


def test_census_query_errors(census_root, tmp_path):
    with pytest.raises(InputError, match="No primary census cells match tissue_general 'bloood'.*Did you mean: blood"):
        census_query(uri=str(census_root), tissue="bloood")
    with pytest.raises(InputError, match="no organism 'Mus musculus': choose one of homo_sapiens"):
        census_query(uri=str(census_root), organism="Mus musculus")
    with pytest.raises(InputError, match="could not be opened"):
        census_query(uri=str(tmp_path / "no-census"))


@pytest.mark.filterwarnings("ignore:Writing zarr v2")
def test_zarr_store_and_file_uri(tmp_path, small, h5ad_file):
    small.write_zarr(tmp_path / "small.zarr")
    adata = read_source(tmp_path / "small.zarr")
    assert adata.shape == small.shape and adata.uns["vcell_source"]["kind"] == "zarr"
    assert read_source(f"file://{h5ad_file}").shape == small.shape


def test_census_query_rejects_nonpositive_max_cells(census_root):
    with pytest.raises(InputError, match="max_cells is 0: give a positive number"):
        census_query(uri=str(census_root), max_cells=0)


def test_write_census_writes_the_slice_atomically(census_root, tmp_path):
    out = tmp_path / "lung.h5ad"
    adata = write_census(out, uri=str(census_root), tissue="lung", max_cells=20, seed=1)
    written = ad.read_h5ad(out)
    assert written.shape == adata.shape == (20, CENSUS_GENES)
    assert list(written.obs_names) == list(adata.obs_names)
    assert set(written.obs["tissue_general"]) == {"lung"} and written.obs["is_primary_data"].all()
    np.testing.assert_array_equal(written.X[:, 0].toarray().ravel(), written.obs_names.astype(int).to_numpy() + 1)
    assert "vcell_source" not in written.uns and adata.uns["vcell_source"]["n_read"] == 20
    with pytest.raises(InputError, match="ending in .h5ad"):
        write_census(tmp_path / "lung.csv", uri=str(census_root))
    with pytest.raises(InputError, match="No primary census cells"):
        write_census(tmp_path / "none.h5ad", uri=str(census_root), tissue="bloood")
    assert [p.name for p in tmp_path.iterdir()] == ["lung.h5ad"]  # nothing half-written


def test_vcell_census_writes_a_slice_that_builds(census_root, tmp_path, capsys):
    from engine.bundle.atlas import read_atlas
    from engine.cli import main

    out = tmp_path / "covid_blood.h5ad"
    assert main(["census", "--uri", str(census_root), "--tissue", "blood", "--disease", "COVID-19",
                 "--max-cells", "30", "--out", str(out)]) == 0
    adata = ad.read_h5ad(out)
    assert 10 <= adata.n_obs <= 30
    assert set(adata.obs["disease"]) == {"COVID-19"} and set(adata.obs["tissue_general"]) == {"blood"}
    assert main(["build", str(out), "--out", str(tmp_path / "c.vcell"), "--n-pcs", "5"]) == 0
    assert read_atlas(tmp_path / "c.vcell").roles["donor"] == "donor_id"
    assert main(["census", "--uri", str(census_root), "--out", str(tmp_path / "x.csv")]) == 2
    assert ".h5ad" in capsys.readouterr().err
