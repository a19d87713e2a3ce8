"""Dot-plot data: mean expression and % expressing of chosen genes per (cell type x condition), from summaries."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from engine.bundle.summaries import Summaries
from engine.errors import EmptySelectionError, InputError


def dot_plot_table(summaries: Summaries, genes: Sequence[int], labels: Sequence[str], *,
                   conditions: Sequence[str] | None = None, cell_types: Sequence[str] | None = None,
                   min_cells: int = 1) -> pd.DataFrame:
    """Per (cell type, condition, gene): mean log-expression and the fraction of expressing cells.

    Read from the bundle's per-group summaries, so it costs nothing per cell.

    Parameters
    ----------
    summaries
        The bundle's :class:`~engine.bundle.summaries.Summaries`.
    genes, labels
        Gene positions and their display names (same length).
    conditions, cell_types
        Restrict to these values (``None``: all).
    min_cells
        Leave out (cell type, condition) groups with fewer cells.

    Returns
    -------
    pandas.DataFrame
        Long table ``cell_type, condition, gene, n_cells, mean, frac_expressing, scaled_mean``;
        ``scaled_mean`` is the mean divided by the gene's largest mean over the rows shown (0–1).
    """
    genes = np.asarray(genes, dtype=np.int64)
    if len(genes) == 0:
        raise EmptySelectionError("No genes to plot: pick at least one gene.")
    if len(genes) != len(labels):
        raise InputError(f"{len(genes)} gene positions but {len(labels)} labels.")
    groups = summaries.groups
    mask = np.ones(len(groups), dtype=bool)
    if conditions is not None:
        mask &= groups["disease"].astype(str).isin([str(c) for c in conditions]).to_numpy()
    if cell_types is not None:
        mask &= groups["cell_type"].astype(str).isin([str(c) for c in cell_types]).to_numpy()
    if not mask.any():
        raise EmptySelectionError("No cells in the chosen cell types and conditions.")
    table, stats = summaries.aggregate(["cell_type", "disease"], genes=genes, mask=mask)
    keep = table["n_cells"].to_numpy() >= min_cells
    if not keep.any():
        raise EmptySelectionError(f"No cell type x condition group has at least {min_cells} cells.")
    table = table[keep].reset_index(drop=True)
    mean, frac = stats["mean"][keep], stats["frac_expressing"][keep]
    peak = mean.max(axis=0)
    scaled = np.divide(mean, peak, out=np.zeros_like(mean), where=peak > 0)
    n_rows, n_genes = mean.shape
    long = pd.DataFrame({
        "cell_type": np.repeat(table["cell_type"].to_numpy(), n_genes),
        "condition": np.repeat(table["disease"].to_numpy(), n_genes),
        "gene": np.tile(np.asarray(labels, dtype=object), n_rows),
        "n_cells": np.repeat(table["n_cells"].to_numpy(), n_genes),
        "mean": mean.ravel(), "frac_expressing": frac.ravel(), "scaled_mean": scaled.ravel()})
    return long.sort_values(["cell_type", "condition"], kind="stable").reset_index(drop=True)


def top_genes(de: pd.DataFrame, n: int = 10, *, lfc_column: str = "log2fc", padj_column: str = "padj",
              gene_column: str = "gene") -> list[str]:
    """The ``n`` most up- and ``n`` most down-regulated significant genes of a DE table (up first).

    Genes are ranked by adjusted p-value, then by the size of the fold change; when fewer than
    ``n`` genes are significant in a direction, the strongest non-significant ones fill in.
    """
    for column in (lfc_column, padj_column, gene_column):
        if column not in de.columns:
            raise InputError(f"The DE table has no column '{column}' (it has {', '.join(map(str, de.columns))}).")
    valid = de.dropna(subset=[lfc_column, padj_column])
    chosen: list[str] = []
    for sign in (1, -1):
        part = valid[np.sign(valid[lfc_column]) == sign]
        order = part.assign(_abs=part[lfc_column].abs()).sort_values([padj_column, "_abs"], ascending=[True, False])
        chosen += [str(g) for g in order[gene_column].head(n)]
    return list(dict.fromkeys(chosen))
