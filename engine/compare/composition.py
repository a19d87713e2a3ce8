"""Cell-type composition per donor, and its shift between two conditions.

The donor is the unit: a cell type's share is computed per donor, and shares are compared
between conditions with a Welch t-test (Benjamini-Hochberg over cell types). Counting cells
pooled over donors would treat cells as independent replicates, which they are not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from engine.errors import EmptySelectionError, InputError, MissingKeyError, suggest
from engine.stats import bh_with_nan

COMPOSITION_METHOD = "welch t-test on per-donor proportions"


def require_columns(obs: pd.DataFrame, **keys: str | None) -> None:
    """Raise a MissingKeyError naming the valid columns when an obs column is absent."""
    for option, key in keys.items():
        if key is not None and key not in obs.columns:
            raise MissingKeyError(
                f"No obs column '{key}' for the {option.replace('_key', '').replace('_', ' ')}: "
                f"pass one of {', '.join(map(str, obs.columns))}.{suggest(key, map(str, obs.columns))}"
            )


def composition(obs: pd.DataFrame, *, cell_type_key: str = "cell_type", condition_key: str = "disease",
                donor_key: str | None = "donor_id") -> pd.DataFrame:
    """Per-donor cell-type proportions, one row per (condition, donor, cell type).

    Every cell type appears for every (condition, donor) pair that has cells, with zero counts
    where the donor has none of it. Without a donor column (``donor_key=None``) the table is
    per condition and ``donor`` repeats the condition.

    Parameters
    ----------
    obs
        Per-cell table.
    cell_type_key, condition_key, donor_key
        Its cell-type, condition and donor columns (``donor_key=None``: no donors).

    Returns
    -------
    pandas.DataFrame
        Columns ``condition, donor, cell_type, n_cells, proportion`` (strings, int, float).
    """
    require_columns(obs, cell_type_key=cell_type_key, condition_key=condition_key, donor_key=donor_key)
    keys = [obs[condition_key].rename("condition"),
            obs[donor_key if donor_key is not None else condition_key].rename("donor"),
            obs[cell_type_key].rename("cell_type")]
    counts = pd.Series(np.ones(len(obs), dtype=np.int64)).groupby(
        [k.reset_index(drop=True) for k in keys], observed=True, dropna=True).sum()
    if counts.empty:
        raise EmptySelectionError("No cell has both a condition and a cell type: check the obs columns.")
    counts.index = pd.MultiIndex.from_arrays([counts.index.get_level_values(i).astype(str) for i in range(3)],
                                             names=["condition", "donor", "cell_type"])
    counts = counts[counts > 0]
    table = counts.unstack("cell_type", fill_value=0)
    table = table[sorted(table.columns)]
    long = table.stack().rename("n_cells").reset_index()
    totals = long.groupby(["condition", "donor"])["n_cells"].transform("sum")
    long["n_cells"] = long["n_cells"].astype(np.int64)
    long["proportion"] = long["n_cells"] / totals
    return long.astype({"condition": str, "donor": str, "cell_type": str}).reset_index(drop=True)


@dataclass
class CompositionResult:
    """The change of each cell type's share from condition ``a`` to ``b`` (:func:`composition_shift`) and its test."""

    table: pd.DataFrame
    a: str
    b: str
    method: str = COMPOSITION_METHOD


def composition_shift(obs: pd.DataFrame, a: str, b: str, *, cell_type_key: str = "cell_type",
                      condition_key: str = "disease", donor_key: str | None = "donor_id",
                      pseudocount: float = 1e-3) -> CompositionResult:
    """Change of each cell type's share between conditions ``a`` and ``b``.

    The donor is the unit: proportions are computed per donor and compared with a Welch
    t-test (two-sided, Benjamini-Hochberg over cell types). With fewer than two donors in
    either condition, or no donor column, ``pval`` is NaN and ``note`` says why.

    Parameters
    ----------
    obs
        Per-cell table.
    a, b
        Reference condition (e.g. healthy) and the one compared with it.
    pseudocount
        Added to both mean proportions before ``log2_ratio = log2((mean_prop_b + pc) / (mean_prop_a + pc))``.

    Returns
    -------
    CompositionResult
        Its ``table`` has one row per cell type: ``cell_type, n_cells_a, n_cells_b, prop_a, prop_b``
        (pooled over cells), ``mean_prop_a, mean_prop_b`` (mean over donors), ``log2_ratio,
        n_donors_a, n_donors_b, statistic, pval, padj, note``; sorted by ``log2_ratio`` descending.
        ``method`` names the test.
    """
    if str(a) == str(b):
        raise InputError(f"Both conditions are '{a}': pick two different conditions.")
    require_columns(obs, cell_type_key=cell_type_key, condition_key=condition_key, donor_key=donor_key)
    long = composition(obs, cell_type_key=cell_type_key, condition_key=condition_key, donor_key=donor_key)
    a, b = str(a), str(b)
    present = sorted(long["condition"].unique())
    for value in (a, b):
        if value not in present:
            raise InputError(f"Unknown condition '{value}': choose one of {', '.join(present[:20])}."
                             f"{suggest(value, present)}")
    rows = []
    groups = {c: long[long["condition"] == c] for c in (a, b)}
    n_donors = {c: groups[c]["donor"].nunique() for c in (a, b)}
    totals = {c: groups[c]["n_cells"].sum() for c in (a, b)}
    note = ""
    if donor_key is None:
        note = "No donor column: proportions are pooled over cells and cannot be tested; rebuild with --donor-key."
    elif min(n_donors.values()) < 2:
        note = (f"Too few donors to test: {n_donors[a]} in '{a}' and {n_donors[b]} in '{b}' "
                "(at least 2 per condition are needed).")
    for cell_type in sorted(long["cell_type"].unique()):
        per = {c: groups[c][groups[c]["cell_type"] == cell_type] for c in (a, b)}
        n = {c: int(per[c]["n_cells"].sum()) for c in (a, b)}
        mean = {c: float(per[c]["proportion"].mean()) for c in (a, b)}
        statistic = pval = np.nan
        row_note = note
        if not note:
            pa, pb = per[a]["proportion"].to_numpy(), per[b]["proportion"].to_numpy()
            if np.ptp(np.r_[pa, pb]) == 0 or (np.var(pa) == 0 and np.var(pb) == 0):
                row_note = "No donor-to-donor variation in this cell type's share: the test is undefined."
            else:
                statistic, pval = (float(v) for v in stats.ttest_ind(pb, pa, equal_var=False))
        rows.append({
            "cell_type": cell_type, "n_cells_a": n[a], "n_cells_b": n[b],
            "prop_a": n[a] / totals[a], "prop_b": n[b] / totals[b],
            "mean_prop_a": mean[a], "mean_prop_b": mean[b],
            "log2_ratio": float(np.log2((mean[b] + pseudocount) / (mean[a] + pseudocount))),
            "n_donors_a": int(n_donors[a]), "n_donors_b": int(n_donors[b]),
            "statistic": statistic, "pval": pval, "note": row_note,
        })
    table = pd.DataFrame(rows)
    table.insert(table.columns.get_loc("note"), "padj", bh_with_nan(table["pval"].to_numpy()))
    table = table.sort_values("log2_ratio", ascending=False, kind="stable").reset_index(drop=True)
    return CompositionResult(table=table, a=a, b=b)

