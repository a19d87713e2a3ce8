"""Choosing cells by role values and subsampling them (engine.bundle.select); moved from tests/compare/test_compare.py."""

from __future__ import annotations

import numpy as np
import pytest
from vcell_testing import make_counts_adata

from engine.bundle.select import select_cells, subsample
from engine.errors import EmptySelectionError, InputError, MissingKeyError

ROLES = {"cell_type": "cell_label", "condition": "condition", "donor": "sample", "batch": None}


@pytest.fixture(scope="module")
def adata():
    """Cells with conditions and cell types (selection reads only their obs)."""
    return make_counts_adata()


def test_select_cells_by_condition_and_cell_type(adata):
    obs = adata.obs
    cells = select_cells(obs, condition="disease", cell_type="B cell", roles=ROLES)
    expected = np.flatnonzero((obs["condition"] == "disease").to_numpy() & (obs["cell_label"] == "B cell").to_numpy())
    np.testing.assert_array_equal(cells, expected)
    assert select_cells(obs, roles=ROLES).size == obs.shape[0]


def test_select_cells_errors(adata):
    obs = adata.obs
    with pytest.raises(InputError, match=r"Unknown condition 'disaese': choose one of disease, normal\. Did you mean: disease\?"):
        select_cells(obs, condition="disaese", roles=ROLES)
    with pytest.raises(MissingKeyError, match="no condition column: rebuild with --condition-key"):
        select_cells(obs, condition="disease", roles={**ROLES, "condition": None})
    obs2 = obs.copy()
    obs2["cell_label"] = obs2["cell_label"].astype(str)
    obs2.loc[obs2["condition"] == "disease", "cell_label"] = "T cell"
    with pytest.raises(EmptySelectionError, match=r"^No 'B cell' cells in condition 'disease': pick another cell type or condition\.$"):
        select_cells(obs2, condition="disease", cell_type="B cell", roles=ROLES)


def test_select_cells_by_condition_or_cell_type_alone(adata):
    obs = adata.obs
    by_condition = select_cells(obs, condition="normal", roles=ROLES)
    np.testing.assert_array_equal(by_condition, np.flatnonzero(obs["condition"].to_numpy() == "normal"))
    by_type = select_cells(obs, cell_type="monocyte", roles=ROLES)
    np.testing.assert_array_equal(by_type, np.flatnonzero(obs["cell_label"].to_numpy() == "monocyte"))
    assert by_type.dtype == np.int64 and np.all(np.diff(by_type) > 0)
    both = select_cells(obs, condition="normal", cell_type="monocyte", roles=ROLES)
    np.testing.assert_array_equal(both, np.intersect1d(by_condition, by_type))
    as_strings = obs.astype({"cell_label": str})  # plain string columns select the same cells
    np.testing.assert_array_equal(select_cells(as_strings, cell_type="monocyte", roles=ROLES), by_type)


def test_unknown_cell_type_lists_the_present_ones_and_suggests_a_close_one(adata):
    with pytest.raises(InputError, match=r"^Unknown cell type 'monocytes': choose one of B cell, T cell, monocyte\. "
                                         r"Did you mean: monocyte\?$"):
        select_cells(adata.obs, cell_type="monocytes", roles=ROLES)
    obs = adata.obs.copy()
    obs["cell_label"] = obs["cell_label"].cat.add_categories(["NK cell"])  # a category no cell has is not offered
    with pytest.raises(InputError, match=r"^Unknown cell type 'NK cell': choose one of B cell, T cell, monocyte\. "):
        select_cells(obs, cell_type="NK cell", roles=ROLES)
    with pytest.raises(MissingKeyError, match=r"^This atlas has no cell-type column: rebuild with --cell-type-key\.$"):
        select_cells(adata.obs, cell_type="monocyte", roles={**ROLES, "cell_type": "cell_type"})


def test_subsample_is_reproducible_and_bounded():
    cells = np.arange(1000) * 3
    first, again = subsample(cells, 100, seed=4), subsample(cells, 100, seed=4)
    np.testing.assert_array_equal(first, again)
    assert first.size == 100 and np.all(np.diff(first) > 0) and np.isin(first, cells).all()
    assert not np.array_equal(first, subsample(cells, 100, seed=5))
    assert subsample(cells, None, 0) is cells
