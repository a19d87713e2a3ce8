"""Neighbour search on a bundle: single cells, compact selections, and honest errors."""

import numpy as np
import pytest

from engine.bundle.atlas import read_atlas
from engine.errors import EmptySelectionError, InputError
from engine.space.neighbours import find_neighbours
from engine.space.selection import summarise_selection


def test_whole_cell_type_selection_finds_k_cells_outside_it(kang_bundle):
    atlas = read_atlas(kang_bundle)
    selection = np.flatnonzero(atlas.obs["cell_type"] == "CD14 Mono")
    result = find_neighbours(atlas, selection, k=30)
    assert len(result.cells) == 30 and not np.isin(result.cells, selection).any()
    assert (np.diff(result.score) <= 1e-12).all()  # best first


def test_selection_of_everything_and_bad_queries(kang_bundle):
    atlas = read_atlas(kang_bundle)
    with pytest.raises(EmptySelectionError, match="selection already holds"):
        find_neighbours(atlas, np.arange(atlas.n_cells), k=5)
    with pytest.raises(EmptySelectionError, match="No query cells"):
        find_neighbours(atlas, np.array([], dtype=int))
    with pytest.raises(InputError, match="positions"):
        find_neighbours(atlas, np.array([atlas.n_cells + 3]))


def test_selection_summary_counts_and_enrichment(kang_bundle):
    atlas = read_atlas(kang_bundle)
    cells = np.flatnonzero(atlas.obs["disease"] == "STIM")
    summary = summarise_selection(atlas.obs, cells, atlas.roles)
    condition = summary.breakdown["condition"].set_index("value")
    assert summary.n_cells == len(cells) and condition.loc["STIM", "fraction"] == 1.0
    assert condition.loc["STIM", "enrichment"] == pytest.approx(atlas.n_cells / len(cells))
    assert summary.breakdown["cell_type"]["n_cells"].sum() == len(cells)
    with pytest.raises(EmptySelectionError):
        summarise_selection(atlas.obs, [], atlas.roles)
