"""Embedding shift: how far cells of one cell type move between two conditions, donors as the unit.

For each cell type, every donor with enough cells of that type contributes one centroid in the
embedding. The observed shift is the distance between the mean donor centroid of condition ``b``
and that of condition ``a``. Its null distribution comes from permuting the condition labels
among those donors (exactly, over all relabellings, when there are few donors), so the p-value
asks whether the two conditions' donors differ more than donors assigned at random would.
Shifts are also given relative to the typical distance between two donors of the same
condition, so a shift of 2 means "twice as far as donors differ from each other".
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from math import comb

import numpy as np
import pandas as pd
import scipy.sparse as sp

from engine.bundle.select import check_value
from engine.compare.composition import require_columns
from engine.errors import EmptySelectionError, InputError
from engine.stats import bh_with_nan

METHOD = ("distance between mean donor centroids in the embedding; null from permuting conditions "
          "among donors (two-sided in effect: distances are non-negative)")


def donor_centroids(embedding: np.ndarray, donor_codes: np.ndarray, n_donors: int, min_cells: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Mean embedding per donor and cell counts; donors with fewer than ``min_cells`` get NaN rows."""
    counts = np.bincount(donor_codes, minlength=n_donors)
    indicator = sp.csr_matrix((np.ones(len(donor_codes)), (donor_codes, np.arange(len(donor_codes)))),
                              shape=(n_donors, len(donor_codes)))
    sums = np.asarray(indicator @ embedding)
    with np.errstate(invalid="ignore", divide="ignore"):
        centroids = sums / counts[:, None]
    centroids[counts < min_cells] = np.nan
    return centroids, counts


def _labellings(n: int, n_b: int, n_permutations: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Boolean rows marking which of ``n`` donors are in ``b``: all of them when few, else random ones."""
    if comb(n, n_b) <= n_permutations:
        rows = np.zeros((comb(n, n_b), n), dtype=bool)
        for i, chosen in enumerate(combinations(range(n), n_b)):
            rows[i, list(chosen)] = True
        return rows, True
    rows = np.zeros((n_permutations, n), dtype=bool)
    for i in range(n_permutations):
        rows[i, rng.choice(n, n_b, replace=False)] = True
    return rows, False


def _shift(centroids: np.ndarray, in_b: np.ndarray) -> np.ndarray:
    """Distance between mean ``b`` and mean ``a`` centroid, for each labelling row of ``in_b``."""
    weights_b = in_b / in_b.sum(axis=1, keepdims=True)
    weights_a = ~in_b / (~in_b).sum(axis=1, keepdims=True)
    return np.linalg.norm((weights_b - weights_a) @ centroids, axis=1)


def _within_spread(centroids: np.ndarray, in_b: np.ndarray) -> float:
    """Median distance between two donors of the same condition (NaN when no such pair exists)."""
    distances = []
    for group in (centroids[in_b], centroids[~in_b]):
        for i, j in combinations(range(len(group)), 2):
            distances.append(np.linalg.norm(group[i] - group[j]))
    return float(np.median(distances)) if distances else float("nan")


@dataclass
class ShiftResult:
    """Per cell type, how far condition ``b``'s cells sit from ``a``'s in an embedding (:func:`embedding_shift`).

    ``embedding`` names the bundle's embedding (``None`` when an array was passed); ``method``
    describes the test.
    """

    table: pd.DataFrame
    a: str
    b: str
    method: str = METHOD
    embedding: str | None = None


def embedding_shift(embedding: np.ndarray, obs: pd.DataFrame, a: str, b: str, *, cell_type_key: str = "cell_type",
                    condition_key: str = "disease", donor_key: str = "donor_id", min_cells: int = 10,
                    n_permutations: int = 1000, seed: int = 0) -> ShiftResult:
    """Per cell type, the shift of condition ``b``'s cells away from condition ``a``'s in an embedding.

    Parameters
    ----------
    embedding
        ``(n_cells, dim)`` cell embedding (e.g. ``atlas.embedding()``), rows aligned with ``obs``.
    obs
        Per-cell table with the cell-type, condition and donor columns.
    a, b
        Reference condition (e.g. healthy) and the one compared with it.
    min_cells
        Donors with fewer cells of a cell type are left out for that cell type.
    n_permutations
        Random relabellings for the null; when the donors allow fewer distinct relabellings,
        all of them are used (an exact test) and ``min_pval`` says how small ``pval`` can get.

    Returns
    -------
    ShiftResult
        Its ``table`` has one row per cell type: ``cell_type, n_cells_a, n_cells_b, n_donors_a,
        n_donors_b, shift, null_mean, relative_shift`` (shift / median within-condition donor distance),
        ``pval, min_pval, padj, exact, note``; sorted by ``relative_shift`` descending.

    Raises
    ------
    InputError
        Same condition twice, a missing column, or an embedding whose rows do not match ``obs``.
    EmptySelectionError
        When no cell type has donors in both conditions.
    """
    if str(a) == str(b):
        raise InputError(f"Both conditions are '{a}': pick two different conditions.")
    require_columns(obs, cell_type_key=cell_type_key, condition_key=condition_key, donor_key=donor_key)
    for value in (a, b):
        check_value(obs, condition_key, value, "condition")
    embedding = np.asarray(embedding)
    if embedding.ndim != 2 or len(embedding) != len(obs):
        raise InputError(f"The embedding has {len(embedding):,} rows but there are {len(obs):,} cells.")
    conditions = obs[condition_key].astype(str).to_numpy()
    in_pair = np.flatnonzero((conditions == str(a)) | (conditions == str(b)))
    donors = obs[donor_key].astype(str).to_numpy()[in_pair]
    cell_types = obs[cell_type_key].astype(str).to_numpy()[in_pair]
    donor_codes, donor_names = pd.factorize(donors)
    donor_is_b = pd.Series(conditions[in_pair] == str(b)).groupby(donor_codes).agg(["min", "max"])
    if (donor_is_b["min"] != donor_is_b["max"]).any():
        raise InputError("Some donors have cells in both conditions: the donor cannot be the unit of a "
                         "between-condition permutation test here.")
    donor_in_b = donor_is_b["max"].to_numpy().astype(bool)
    rng = np.random.default_rng(seed)
    rows = []
    for cell_type in sorted(set(cell_types)):
        members = cell_types == cell_type
        centroids, counts = donor_centroids(embedding[in_pair[members]].astype(np.float64), donor_codes[members],
                                            len(donor_names), min_cells)
        usable = ~np.isnan(centroids).any(axis=1)
        n_a, n_b = int((usable & ~donor_in_b).sum()), int((usable & donor_in_b).sum())
        row = {"cell_type": cell_type, "n_cells_a": int(counts[~donor_in_b].sum()),
               "n_cells_b": int(counts[donor_in_b].sum()), "n_donors_a": n_a, "n_donors_b": n_b,
               "shift": np.nan, "null_mean": np.nan, "relative_shift": np.nan, "pval": np.nan,
               "min_pval": np.nan, "exact": False, "note": ""}
        if n_a == 0 or n_b == 0:
            row["note"] = (f"No donor with at least {min_cells} cells of this type in "
                           f"'{a if n_a == 0 else b}'.")
            rows.append(row)
            continue
        kept = centroids[usable]
        observed_labels = donor_in_b[usable]
        row["shift"] = float(_shift(kept, observed_labels[None, :])[0])
        row["relative_shift"] = row["shift"] / _within_spread(kept, observed_labels) \
            if n_a + n_b > 2 else np.nan
        if n_a < 2 or n_b < 2:
            row["note"] = (f"Too few donors to test: {n_a} in '{a}' and {n_b} in '{b}' with at least "
                           f"{min_cells} cells (2 per condition are needed).")
        else:
            labellings, exact = _labellings(n_a + n_b, n_b, n_permutations, rng)
            null = _shift(kept, labellings)
            row["null_mean"] = float(null.mean())
            row["exact"] = exact
            if exact:  # the observed labelling is one of the enumerated ones
                row["pval"] = float((null >= row["shift"] - 1e-12).mean())
                # swapping the two groups gives the same distance when they have equal sizes
                row["min_pval"] = (2.0 if n_a == n_b else 1.0) / len(labellings)
            else:
                row["pval"] = float((1 + (null >= row["shift"] - 1e-12).sum()) / (1 + len(null)))
                row["min_pval"] = 1.0 / (1 + len(null))
            if row["min_pval"] > 0.05:
                row["note"] = (f"With {n_a} + {n_b} donors only {len(labellings)} relabellings exist, so the "
                               f"p-value cannot go below {row['min_pval']:.2f}: read the shift, not the p-value.")
        rows.append(row)
    table = pd.DataFrame(rows)
    if table["shift"].isna().all():
        raise EmptySelectionError(f"No cell type has donors with at least {min_cells} cells in both '{a}' and '{b}'.")
    table.insert(table.columns.get_loc("exact"), "padj", bh_with_nan(table["pval"].to_numpy()))
    table = table.sort_values(["relative_shift", "shift"], ascending=False, na_position="last", kind="stable")
    return ShiftResult(table=table.reset_index(drop=True), a=str(a), b=str(b))


def atlas_embedding_shift(atlas, a: str, b: str, *, embedding: str | None = None, **options) -> ShiftResult:
    """:func:`embedding_shift` on an atlas bundle's (default) embedding and harmonised roles."""
    roles = atlas.roles
    for role in ("cell_type", "condition", "donor"):
        if roles.get(role) is None:
            raise InputError(f"This atlas has no {role.replace('_', ' ')} column: the embedding shift needs cell "
                             "types, conditions and donors (rebuild with --cell-type-key/--condition-key/--donor-key, "
                             "or run `vcell annotate`).")
    name = embedding or atlas.default_embedding
    result = embedding_shift(atlas.embedding(name), atlas.obs, a, b, cell_type_key=roles["cell_type"],
                             condition_key=roles["condition"], donor_key=roles["donor"], **options)
    result.embedding = name
    return result
