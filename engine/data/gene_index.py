"""Fast look-up of genes by what a user types: symbol or Ensembl ID, any case, with or without version."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from engine.data.gencode import complete_gene_table, shipped_symbol
from engine.data.genes import column_values, gene_table, is_ensembl, strip_version
from engine.errors import GeneNotFoundError, suggest


class GeneIndex:
    """Resolve gene names typed by a user to column numbers, by symbol or Ensembl ID.

    Parameters
    ----------
    table
        Output of :func:`gene_table` (index = var names, columns ``gene_id``,
        ``gene_symbol``). A ``var`` table or a list of names is also accepted and passed
        through :func:`gene_table`. Missing IDs and symbols are filled from the shipped
        GENCODE table (:func:`complete_gene_table`), so an atlas named by Ensembl IDs is
        searched, resolved and labelled by symbol too.
    """

    def __init__(self, table: pd.DataFrame | pd.Index | Iterable[str]):
        if not isinstance(table, pd.DataFrame):
            table = pd.DataFrame(index=pd.Index([str(n) for n in table]))
        if not {"gene_id", "gene_symbol"} <= set(table.columns):
            table = gene_table(table)
        given_ids, given_symbols = column_values(table, "gene_id"), column_values(table, "gene_symbol")
        completed = complete_gene_table(table)
        self._ids, self._symbols = column_values(completed, "gene_id"), column_values(completed, "gene_symbol")
        self._names = [str(n) for n in table.index]
        self._labels = [s or i or n for s, i, n in zip(self._symbols, self._ids, self._names)]
        lookup: dict[str, int] = {}
        # later entries never overwrite earlier ones: the first gene with a name wins;
        # symbols outrank ids, which outrank raw var names, which outrank names from the shipped table.
        for keys in (given_symbols, [i and strip_version(i) for i in given_ids], given_ids, self._names,
                     self._symbols, self._ids):
            for position, key in enumerate(keys):
                if key:
                    lookup.setdefault(key.upper(), position)
        self._lookup = lookup
        self._upper_labels = [label.upper() for label in self._labels]
        self._sorted = sorted(range(len(self._labels)), key=lambda p: self._upper_labels[p])

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def labels(self) -> list[str]:
        """Display label of every gene: the symbol where known, else the ID."""
        return list(self._labels)

    def label(self, i: int) -> str:
        """Display label of gene ``i``."""
        return self._labels[int(i)]

    def resolve(self, query: str) -> int:
        """Column number of one gene (case-insensitive symbol or ID; ID version ignored).

        Raises
        ------
        GeneNotFoundError
            The gene is not in this atlas.
        """
        position = self._find(query)
        if position is None:
            raise GeneNotFoundError(
                f"Gene '{query}' is not in this atlas's {len(self)} genes: check the spelling or use "
                f"a symbol or Ensembl ID from the atlas.{suggest(str(query), self._labels)}"
            )
        return position

    def resolve_many(self, queries: Iterable[str]) -> np.ndarray:
        """Column numbers of several genes; every unknown name is reported at once."""
        queries = [queries] if isinstance(queries, str) else list(queries)
        found = [self._find(q) for q in queries]
        unknown = [q for q, f in zip(queries, found) if f is None]
        if unknown:
            hints = "".join(suggest(str(q), self._labels, n=1) for q in unknown[:5])
            names = ", ".join(f"'{q}'" for q in unknown)
            raise GeneNotFoundError(
                f"{len(unknown)} gene{'s are' if len(unknown) > 1 else ' is'} not in this atlas's "
                f"{len(self)} genes ({names}): check the spelling or use symbols or Ensembl IDs from "
                f"the atlas.{hints}"
            )
        return np.asarray(found, dtype=np.int64)

    def search(self, prefix: str, limit: int = 20) -> list[str]:
        """Labels for autocomplete: those starting with ``prefix`` first, then those containing it."""
        text = str(prefix).strip().upper()
        if not text:
            return [self._labels[p] for p in self._sorted[:limit]]
        starts = [p for p in self._sorted if self._upper_labels[p].startswith(text)]
        out = starts[:limit]
        if len(out) < limit:
            chosen = set(out)
            out += [p for p in self._sorted if p not in chosen and text in self._upper_labels[p]][: limit - len(out)]
        if len(out) < limit and text.startswith("ENS"):
            chosen = set(out)
            out += [p for p, i in enumerate(self._ids) if i and p not in chosen and i.upper().startswith(text)][
                : limit - len(out)]
        return [self._labels[p] for p in out]

    def _find(self, query: str) -> int | None:
        key = str(query).strip().upper()
        if key in self._lookup:
            return self._lookup[key]
        if not is_ensembl(key):
            return None
        if strip_version(key) in self._lookup:
            return self._lookup[strip_version(key)]
        symbol = shipped_symbol(key)  # an ID the atlas lacks, for a symbol it has
        return self._lookup.get(symbol.upper()) if symbol else None
