"""Describe a set of cells: how many, and their breakdown by cell type, condition, donor."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from engine.errors import EmptySelectionError


@dataclass
class SelectionSummary:
    """Counts of a cell selection per role column.

    Attributes
    ----------
    n_cells
        Cells selected.
    breakdown
        For each role present (``cell_type``, ``condition``, ``donor``): a frame with
        columns ``value``, ``n_cells``, ``fraction`` (of the selection) and ``enrichment``
        (fraction in the selection / fraction in the atlas), largest first.
    """

    n_cells: int
    breakdown: dict[str, pd.DataFrame] = field(default_factory=dict)


def summarise_selection(obs: pd.DataFrame, cells: np.ndarray, roles: dict[str, str | None]) -> SelectionSummary:
    """Summarise the cells at positions ``cells`` of ``obs``.

    Raises
    ------
    EmptySelectionError
        When ``cells`` is empty.
    """
    cells = np.asarray(cells, dtype=np.int64)
    if len(cells) == 0:
        raise EmptySelectionError("No cells are selected: draw a lasso or box around some cells on the map.")
    summary = SelectionSummary(n_cells=len(cells))
    for role in ("cell_type", "condition", "donor"):
        column = roles.get(role)
        if column is None or column not in obs:
            continue
        everywhere = obs[column].value_counts(normalize=True)
        counts = obs[column].iloc[cells].value_counts()
        counts = counts[counts > 0]
        frame = pd.DataFrame({"value": counts.index.astype(str), "n_cells": counts.to_numpy()})
        frame["fraction"] = frame["n_cells"] / len(cells)
        frame["enrichment"] = frame["fraction"].to_numpy() / everywhere.reindex(counts.index).to_numpy()
        summary.breakdown[role] = frame.reset_index(drop=True)
    return summary
