"""Choosing cells of an atlas by the values of its roles (condition, cell type), and subsampling them.

One home for cell selection: the comparison, the virtual cell and the app select cells here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from engine.errors import EmptySelectionError, InputError, MissingKeyError, suggest

REBUILD_OPTION = {"condition": "--condition-key", "cell_type": "--cell-type-key", "donor": "--donor-key"}


ROLE_WORDS = {"condition": "condition", "cell_type": "cell-type", "donor": "donor"}


# ----------------------------------------------------------------------------- selection
def role_column(obs: pd.DataFrame, roles: dict[str, str | None], role: str) -> str:
    """The obs column playing ``role``, or a MissingKeyError saying how to rebuild."""
    column = roles.get(role)
    if column is None or column not in obs.columns:
        raise MissingKeyError(
            f"This atlas has no {ROLE_WORDS.get(role, role)} column: rebuild with {REBUILD_OPTION.get(role, '--' + role + '-key')}."
        )
    return column


def _present(series: pd.Series) -> list[str]:
    """Values that occur in a column, as strings (fast on categoricals of millions of rows)."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        codes = series.cat.codes.to_numpy()
        used = np.bincount(codes[codes >= 0], minlength=len(series.cat.categories)) > 0
        return [str(c) for c in series.cat.categories[used]]
    return [str(v) for v in pd.unique(series.dropna())]


def _mask(series: pd.Series, value: str) -> np.ndarray:
    """Boolean mask of the rows equal to ``value`` (compared as strings)."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        hits = np.flatnonzero(series.cat.categories.astype(str) == str(value))
        return np.isin(series.cat.codes.to_numpy(), hits)
    return series.astype(str).to_numpy() == str(value)


def check_value(obs: pd.DataFrame, column: str, value: str, what: str) -> None:
    """Raise :class:`InputError` (listing the values, suggesting close ones) unless ``value`` is in ``column``."""
    present = _present(obs[column])
    if str(value) not in set(present):
        listed = ", ".join(sorted(present)[:20])
        raise InputError(f"Unknown {what} '{value}': choose one of {listed}.{suggest(str(value), present)}")


def select_cells(obs: pd.DataFrame, *, condition: str | None = None, cell_type: str | None = None,
                 roles: dict[str, str | None]) -> np.ndarray:
    """Positions of the cells in a condition and/or cell type.

    Parameters
    ----------
    obs
        Per-cell table.
    condition, cell_type
        Values to keep; ``None`` keeps all.
    roles
        Role -> obs column, e.g. ``{"condition": "disease", "cell_type": "cell_type"}``.

    Returns
    -------
    numpy.ndarray
        Sorted int64 row positions.

    Raises
    ------
    MissingKeyError
        A needed role has no column.
    InputError
        A value that is not in the column (the valid ones are listed).
    EmptySelectionError
        The combination selects no cell.
    """
    mask = np.ones(len(obs), dtype=bool)
    if condition is not None:
        column = role_column(obs, roles, "condition")
        check_value(obs, column, condition, "condition")
        mask &= _mask(obs[column], condition)
    if cell_type is not None:
        column = role_column(obs, roles, "cell_type")
        check_value(obs, column, cell_type, "cell type")
        mask &= _mask(obs[column], cell_type)
    cells = np.flatnonzero(mask).astype(np.int64)
    if cells.size == 0:
        if condition is not None and cell_type is not None:
            msg = f"No '{cell_type}' cells in condition '{condition}': pick another cell type or condition."
        elif cell_type is not None:
            msg = f"No '{cell_type}' cells in this atlas: pick another cell type."
        elif condition is not None:
            msg = f"No cells in condition '{condition}': pick another condition."
        else:
            msg = "This atlas has no cells: build it from a non-empty input."
        raise EmptySelectionError(msg)
    return cells


def subsample(cells: np.ndarray, max_cells: int | None, seed: int, stream: int = 0) -> np.ndarray:
    """At most ``max_cells`` of ``cells`` (sorted), drawn reproducibly from ``(seed, stream)``."""
    if max_cells is None or cells.size <= max_cells:
        return cells
    rng = np.random.default_rng([seed, stream])
    return np.sort(rng.choice(cells, size=max_cells, replace=False))
