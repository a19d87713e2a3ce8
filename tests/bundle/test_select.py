"""Choosing cells by role values and subsampling them (engine.bundle.select); moved from tests/compare/test_compare.py."""

from __future__ import annotations

import numpy as np
import pytest

from engine.bundle.select import select_cells, subsample
from engine.errors import EmptySelectionError, InputError, MissingKeyError
from vcell_testing import make_counts_adata

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


def test_subsample_is_reproducible_and_bounded():
    cells = np.arange(1000) * 3
    first, again = subsample(cells, 100, seed=4), subsample(cells, 100, seed=4)
    np.testing.assert_array_equal(first, again)
    assert first.size == 100 and np.all(np.diff(first) > 0) and np.isin(first, cells).all()
    assert not np.array_equal(first, subsample(cells, 100, seed=5))
    assert subsample(cells, None, 0) is cells
