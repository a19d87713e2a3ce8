"""Matching genes across data sets: by Ensembl ID or symbol, case-insensitive, ID versions ignored.

One home for "which of these genes is that one": applying a model to an atlas, writing the union of
data sets for pretraining, and mapping gene sets onto a model's genes all use :class:`GeneMatcher`.
Symbols and Ensembl IDs also pair up through the shipped GENCODE tables
(:func:`engine.data.gencode.complete_gene_table`), so genes named by symbols match genes named by IDs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from engine.data.gencode import complete_gene_table
from engine.data.genes import gene_table, is_ensembl, strip_version


def _key(name: Any) -> str | None:
    """Matching key of a gene name: upper case, Ensembl version stripped; ``None`` when missing or blank."""
    if name is None or name is pd.NA or (isinstance(name, float) and np.isnan(name)):
        return None
    text = str(name).strip()
    return (strip_version(text) if is_ensembl(text) else text).upper() or None


def _key_levels(genes: pd.DataFrame | Sequence[Any]) -> list[list[str | None]]:
    """Matching keys of genes, one list per level, in order of precedence.

    The levels are the genes' own Ensembl IDs, their own symbols and their row names (for a list of names:
    the names), then, where a gene lacks its own, the ID and symbol the shipped GENCODE table gives it
    (:func:`engine.data.gencode.complete_gene_table`).
    """
    if not isinstance(genes, pd.DataFrame):
        genes = gene_table(pd.DataFrame(index=pd.Index([str(g) if _key(g) else "" for g in genes], dtype=object)))
    completed = complete_gene_table(genes)
    levels = []
    for column in ("gene_id", "gene_symbol"):
        levels.append([_key(n) for n in genes[column]] if column in genes.columns else [None] * len(genes))
    levels.append([_key(str(n)) for n in genes.index])
    for own, column in zip(levels[:2], ("gene_id", "gene_symbol")):
        levels.append([None if key else _key(name) for key, name in zip(own, completed[column])])
    return levels


class GeneMatcher:
    """Positions of genes among a fixed list of ``genes``, whatever identifiers either side uses.

    Parameters
    ----------
    genes
        The genes to find positions in: a gene table (columns ``gene_id`` and ``gene_symbol``, as from
        :func:`engine.data.genes.gene_table`) or a list of names. The first gene with a name wins.

    Notes
    -----
    Each queried gene is looked up by its Ensembl ID, then its symbol, then its name; the target's IDs
    outrank its symbols, which outrank its names, which outrank the IDs and symbols GENCODE gives it.
    """

    def __init__(self, genes: pd.DataFrame | Sequence[Any]):
        self._lookup: dict[str, int] = {}
        for level in _key_levels(genes):
            for position, key in enumerate(level):
                if key:
                    self._lookup.setdefault(key, position)

    def positions(self, query: pd.DataFrame | Sequence[Any]) -> np.ndarray:
        """Position of each queried gene (a gene table or a list of names); ``-1`` where it is not found.

        Parameters
        ----------
        query
            The genes to find, in order.

        Returns
        -------
        numpy.ndarray
            ``int64`` positions, one per queried gene.
        """
        keys = zip(*_key_levels(query))
        return np.array([next((self._lookup[k] for k in gene if k in self._lookup), -1) for gene in keys],
                        dtype=np.int64)
