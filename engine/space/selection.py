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
        names, everywhere, counts = _counts(obs[column], cells)
        keep = np.flatnonzero(counts > 0)
        keep = keep[np.argsort(-counts[keep], kind="stable")]  # largest first
        frame = pd.DataFrame({"value": names[keep].astype(str), "n_cells": counts[keep]})
        frame["fraction"] = frame["n_cells"] / len(cells)
        frame["enrichment"] = frame["fraction"].to_numpy() / (everywhere[keep] / everywhere.sum())
        summary.breakdown[role] = frame
    return summary


def _counts(values: pd.Series, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct values, their counts over all cells and over ``cells`` (missing values left out).

    Categorical columns are counted on their codes (a 4M-cell selection of 10M in ~0.05 s,
    where ``iloc`` + ``value_counts`` took ~1 s).
    """
    if isinstance(values.dtype, pd.CategoricalDtype):
        codes = values.cat.codes.to_numpy()
        k = len(values.cat.categories)
        return (np.asarray(values.cat.categories), np.bincount(codes[codes >= 0], minlength=k),
                np.bincount(codes[cells][codes[cells] >= 0], minlength=k))
    everywhere = values.value_counts()
    chosen = values.iloc[cells].value_counts().reindex(everywhere.index, fill_value=0)
    return np.asarray(everywhere.index), everywhere.to_numpy(), chosen.to_numpy()
