"""Harmonising obs to the CELLxGENE names, on tiny data and on the real files."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from vcell_testing import make_counts_adata

from engine.data.schema import BATCH, CELL_TYPE, CONDITION, DONOR, ROLES, find_reference, harmonise_obs
from engine.errors import InputError, MissingKeyError


def _adata(obs: dict) -> ad.AnnData:
    frame = pd.DataFrame(obs)
    frame.index = [f"c{i}" for i in range(len(frame))]
    return ad.AnnData(np.zeros((len(frame), 2), dtype=np.float32), obs=frame)


def test_roles_are_cellxgene_names():
    assert ROLES == ("cell_type", "disease", "donor_id", "batch")


def test_guesses_on_the_test_atlas(counts_adata):
    before = counts_adata.obs.copy()
    out, mapping = harmonise_obs(counts_adata)
    assert mapping[CELL_TYPE] == {"source": "cell_label", "guessed": True}
    assert mapping[CONDITION] == {"source": "condition", "guessed": True}
    assert mapping[DONOR] == {"source": "sample", "guessed": True}
    assert mapping[BATCH] is None
    assert mapping["reference_condition"] == "normal" and mapping["reference_guessed"] is True
    for role in (CELL_TYPE, CONDITION, DONOR):
        assert isinstance(out.obs[role].dtype, pd.CategoricalDtype)
        assert all(isinstance(c, str) for c in out.obs[role].cat.categories)
    assert BATCH not in out.obs.columns
    np.testing.assert_array_equal(out.obs[CELL_TYPE].astype(str), counts_adata.obs["cell_label"].astype(str))
    assert "cell_label" in out.obs.columns  # original kept
    pd.testing.assert_frame_equal(counts_adata.obs, before)  # input untouched
    assert CELL_TYPE not in counts_adata.obs.columns
    assert out.X is counts_adata.X  # matrices shared, not copied


def test_explicit_keys_win_and_case_insensitive_guesses():
    adata = _adata({"CellType": ["a", "b"] * 3, "Stim": ["ctrl", "stim"] * 3, "who": list("xxyyzz"),
                    "Batch": ["b1"] * 3 + ["b2"] * 3})
    out, mapping = harmonise_obs(adata, donor_key="who")
    assert mapping[CELL_TYPE]["source"] == "CellType" and mapping[CELL_TYPE]["guessed"]
    assert mapping[CONDITION]["source"] == "Stim"
    assert mapping[DONOR] == {"source": "who", "guessed": False}
    assert mapping[BATCH]["source"] == "Batch"
    assert mapping["reference_condition"] == "ctrl"
    assert list(out.obs[DONOR]) == list("xxyyzz")


def test_missing_explicit_key_names_available_columns(counts_adata):
    with pytest.raises(MissingKeyError) as info:
        harmonise_obs(counts_adata, condition_key="conditon")
    message = str(info.value)
    assert "no column 'conditon'" in message
    assert "cell_label, condition, sample" in message
    assert "Did you mean: condition?" in message


def test_one_column_never_takes_two_roles():
    adata = _adata({"condition": ["a", "b"] * 3, "sample": list("xxyyzz")})
    with pytest.raises(InputError, match="given for two roles"):
        harmonise_obs(adata, cell_type_key="sample", donor_key="sample")
    _, mapping = harmonise_obs(adata, cell_type_key="condition")
    assert mapping[CONDITION] is None  # condition was used as cell type, not guessed again
    assert mapping[DONOR]["source"] == "sample"


def test_missing_values_become_unknown_and_existing_role_column_is_kept():
    adata = _adata({"cell_type": ["T", None, "B", "", np.nan, "T"], "stim": ["CTRL", "STIM"] * 3,
                    "disease": ["x"] * 6})
    out, mapping = harmonise_obs(adata, condition_key="stim")
    assert list(out.obs[CELL_TYPE]) == ["T", "unknown", "B", "unknown", "unknown", "T"]
    assert list(out.obs[CONDITION]) == ["CTRL", "STIM"] * 3
    assert list(out.obs["disease_original"]) == ["x"] * 6
    assert mapping["reference_condition"] == "CTRL"


def test_reference_condition_explicit_and_invalid(counts_adata):
    _, mapping = harmonise_obs(counts_adata, reference_condition="DISEASE")
    assert mapping["reference_condition"] == "disease" and mapping["reference_guessed"] is False
    with pytest.raises(InputError, match=r"'healthy' is not a value of 'condition': choose one of disease, normal"):
        harmonise_obs(counts_adata, reference_condition="healthy")
    no_condition = counts_adata[:, :].copy()
    del no_condition.obs["condition"]
    with pytest.raises(InputError, match="no condition column"):
        harmonise_obs(no_condition, reference_condition="normal")


def test_find_reference_prefers_normal():
    assert find_reference(["COVID-19", "Normal"]) == "Normal"
    assert find_reference(["stim", "Control", "normal"]) == "normal"
    assert find_reference(["PATO:0000461", "x"]) == "PATO:0000461"
    assert find_reference(["IMMUNE_CTRL", "IMMUNE_STIM"]) is None


def test_id_like_and_single_level_columns_are_not_guessed():
    adata = _adata({"donor": [f"d{i}" for i in range(6)], "batch": ["one"] * 6,
                    "cluster_id": ["1", "2"] * 3})
    _, mapping = harmonise_obs(adata)
    assert mapping[DONOR] is None  # one level per cell: an id, not a donor
    assert mapping[BATCH] is None  # a single level says nothing
    assert mapping[CELL_TYPE]["source"] == "cluster_id"


def test_backed_input_is_harmonised_without_loading(tmp_path):
    path = tmp_path / "a.h5ad"
    make_counts_adata(n_cells=40, n_genes=10).write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    out, mapping = harmonise_obs(backed)
    assert mapping[CELL_TYPE]["source"] == "cell_label"
    assert out.X[0:3].shape == (3, 10)
    backed.file.close()


# ---------------------------------------------------------------- real data


def test_real_covid(shared_data):
    adata = ad.read_h5ad(shared_data("covid_pbmc_combat_subset.h5ad"), backed="r")
    out, mapping = harmonise_obs(adata)
    assert mapping[CELL_TYPE] is None
    assert mapping[CONDITION]["source"] == "condition"
    assert mapping[DONOR]["source"] == "donor_id"
    assert mapping[BATCH] is None  # source_file relabels donor_id one-to-one
    assert mapping["reference_condition"] == "Healthy"
    assert set(out.obs[CONDITION].cat.categories) == {"Healthy", "Covid_Mild", "Covid_Critical"}
    adata.file.close()


def test_real_kang_1k(shared_data):
    adata = ad.read_h5ad(shared_data("kang_ifnb_1k.h5ad"), backed="r")
    out, mapping = harmonise_obs(adata)
    assert mapping[CELL_TYPE]["source"] == "seurat_annotations"
    assert mapping[CONDITION]["source"] == "stim"
    assert mapping[DONOR] is None  # orig.ident only relabels stim
    assert mapping["reference_condition"] == "CTRL"
    assert out.obs[CELL_TYPE].nunique() == 6
    adata.file.close()


def test_real_kang_donors(shared_data):
    adata = ad.read_h5ad(shared_data("kang_ifnb_donors.h5ad"), backed="r")
    _, mapping = harmonise_obs(adata)
    assert mapping[CELL_TYPE]["source"] == "cluster_id"
    assert mapping[CONDITION]["source"] == "group_id"
    assert mapping[DONOR]["source"] == "sample_id"
    assert mapping["reference_condition"] == "ctrl"
    adata.file.close()


def test_real_kang_reference(shared_data):
    adata = ad.read_h5ad(shared_data("kang_ctrl_reference.h5ad"), backed="r")
    out, mapping = harmonise_obs(adata)
    assert mapping[CELL_TYPE]["source"] == "cluster_id"
    assert mapping[CONDITION] is None
    assert mapping[DONOR]["source"] == "sample_id"
    assert mapping["reference_condition"] is None
    assert sorted(out.obs[DONOR].cat.categories) == ["1015", "1016", "1244", "1256", "1488"]
    adata.file.close()


def test_pbmc68k_reduced_bulk_labels():
    out, mapping = harmonise_obs(sc.datasets.pbmc68k_reduced())
    assert mapping[CELL_TYPE]["source"] == "bulk_labels"
    assert mapping[CONDITION] is None and mapping[DONOR] is None
    assert out.obs[CELL_TYPE].nunique() == 10
