"""Gene identifiers: Ensembl IDs and symbols, and fast look-up of genes by either.

:func:`gene_table` reads both kinds of identifier from an AnnData ``var`` table;
:class:`GeneIndex` resolves what a user types (``isg15``, ``ENSG00000187608.9``) to a column
number and gives the label to show.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from engine.errors import GeneNotFoundError, InputError, suggest

ENSEMBL_PATTERN = re.compile(r"^ENS[A-Z]*G\d{11}(\.\d+)?$")
ID_COLUMNS = ("gene_ids", "feature_id", "ensembl_id", "gene_id")
SYMBOL_COLUMNS = ("feature_name", "gene_symbols", "gene_symbol", "gene_name", "symbol")
_MIN_ENSEMBL_FRACTION = 0.5  # a column is Ensembl IDs when at least this fraction matches


def is_ensembl(name: str) -> bool:
    """True when ``name`` looks like an Ensembl gene ID (optionally versioned)."""
    return bool(ENSEMBL_PATTERN.match(str(name)))


def strip_version(gene_id: str) -> str:
    """``ENSG00000187608.9`` → ``ENSG00000187608``; other names unchanged."""
    gene_id = str(gene_id)
    return gene_id.split(".", 1)[0] if is_ensembl(gene_id) else gene_id


def gene_table(var: pd.DataFrame, gene_map: pd.DataFrame | None = None) -> pd.DataFrame:
    """Ensembl ID and symbol of every gene in ``var``.

    Parameters
    ----------
    var
        An AnnData ``var`` table; IDs and symbols are read from its index or from the
        columns in :data:`ID_COLUMNS` / :data:`SYMBOL_COLUMNS`.
    gene_map
        Optional two-column table (Ensembl ID, symbol), e.g. from :func:`read_gene_map`,
        used to fill whichever side ``var`` lacks.

    Returns
    -------
    pandas.DataFrame
        Index = ``var.index`` (same order), columns ``gene_id`` and ``gene_symbol`` (object
        dtype; ``None`` where unknown). IDs keep their version suffix as given.
    """
    index = [str(v) for v in var.index]
    ids = _only_ensembl(index)
    symbols = [None if i else v for v, i in zip(_clean(index), ids)]
    for column in _columns(var, ID_COLUMNS):
        values = var[column].astype(object).to_numpy()
        if _ensembl_fraction(values) >= _MIN_ENSEMBL_FRACTION:
            ids = [i if i else v for i, v in zip(ids, _only_ensembl(values))]
            break
    for column in _columns(var, SYMBOL_COLUMNS):
        values = _clean(var[column].astype(object).to_numpy())
        if _ensembl_fraction(values) < _MIN_ENSEMBL_FRACTION:
            symbols = [s if s else (None if v is None or is_ensembl(v) else v) for s, v in zip(symbols, values)]
            break

    if gene_map is not None and len(gene_map):
        id_col, symbol_col = gene_map.columns[:2]
        pairs = [(str(i).strip(), str(s).strip()) for i, s in zip(gene_map[id_col], gene_map[symbol_col])
                 if not _missing(i) and not _missing(s)]
        to_symbol = {strip_version(i): s for i, s in reversed(pairs)}
        to_id = {s.upper(): i for i, s in reversed(pairs)}
        symbols = [s if s or not i else to_symbol.get(strip_version(i)) for s, i in zip(symbols, ids)]
        ids = [i if i or not s else to_id.get(s.upper()) for s, i in zip(symbols, ids)]

    return pd.DataFrame({"gene_id": ids, "gene_symbol": symbols}, index=var.index, dtype=object)


def read_gene_map(path: str | os.PathLike) -> pd.DataFrame:
    """Read a user-given table of Ensembl ID ↔ gene symbol (TSV or CSV).

    The file needs at least two columns; the one holding Ensembl IDs is found by content
    (the other first column is the symbol), with or without a header line.

    Returns
    -------
    pandas.DataFrame
        Columns ``gene_id`` (Ensembl) and ``gene_symbol``, one row per mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Gene map file '{path}' does not exist: give a TSV or CSV of Ensembl ID and symbol.")
    try:
        table = pd.read_csv(path, sep=_separator(path), engine="python", header=None, dtype=str, comment="#")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"Gene map file '{path}' could not be read as a table ({err}): give a TSV or CSV "
                         "with an Ensembl ID column and a symbol column.") from None
    if table.shape[1] < 2:
        raise InputError(f"Gene map file '{path}' has {table.shape[1]} column: give a TSV or CSV with an "
                         "Ensembl ID column and a symbol column.")
    fractions = [_ensembl_fraction(table[c].dropna().to_numpy()) for c in table.columns]
    id_col = int(np.argmax(fractions))
    if fractions[id_col] < _MIN_ENSEMBL_FRACTION:
        raise InputError(f"Gene map file '{path}' has no column of Ensembl IDs (like ENSG00000187608): give a "
                         "table with an Ensembl ID column and a symbol column.")
    symbol_col = next(c for c in range(table.shape[1]) if c != id_col)
    out = pd.DataFrame({"gene_id": table.iloc[:, id_col], "gene_symbol": table.iloc[:, symbol_col]})
    out = out[out["gene_id"].map(lambda v: is_ensembl(str(v).strip()))].dropna()
    out["gene_id"] = out["gene_id"].str.strip()
    out["gene_symbol"] = out["gene_symbol"].str.strip()
    return out.reset_index(drop=True)


class GeneIndex:
    """Resolve gene names typed by a user to column numbers, by symbol or Ensembl ID.

    Parameters
    ----------
    table
        Output of :func:`gene_table` (index = var names, columns ``gene_id``,
        ``gene_symbol``). A ``var`` table or a list of names is also accepted and passed
        through :func:`gene_table`.
    """

    def __init__(self, table: pd.DataFrame | pd.Index | Iterable[str]):
        if not isinstance(table, pd.DataFrame):
            table = pd.DataFrame(index=pd.Index([str(n) for n in table]))
        if not {"gene_id", "gene_symbol"} <= set(table.columns):
            table = gene_table(table)
        self._ids = [None if _missing(v) else str(v) for v in table["gene_id"]]
        self._symbols = [None if _missing(v) else str(v) for v in table["gene_symbol"]]
        self._names = [str(n) for n in table.index]
        self._labels = [s or i or n for s, i, n in zip(self._symbols, self._ids, self._names)]
        lookup: dict[str, int] = {}
        # later entries never overwrite earlier ones: the first gene with a name wins;
        # symbols outrank ids, which outrank raw var names.
        for keys in (self._symbols, [i and strip_version(i) for i in self._ids], self._ids, self._names):
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
        return self._lookup.get(strip_version(key)) if is_ensembl(key) else None


def _separator(path: Path) -> str:
    """Tab, comma or whitespace, from the first data line of ``path``."""
    with open(path, errors="replace") as fh:
        for line in fh:
            if line.strip() and not line.startswith("#"):
                return "\t" if "\t" in line else "," if "," in line else r"\s+"
    return "\t"


def _ensembl_fraction(values) -> float:
    values = [str(v) for v in values if not _missing(v)]
    if not values:
        return 0.0
    return sum(bool(ENSEMBL_PATTERN.match(v)) for v in values) / len(values)


def _only_ensembl(values) -> list[str | None]:
    return [str(v) if not _missing(v) and ENSEMBL_PATTERN.match(str(v)) else None for v in values]


def _clean(values) -> list[str | None]:
    return [None if _missing(v) or not str(v).strip() else str(v) for v in values]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _columns(var: pd.DataFrame, candidates: tuple[str, ...]) -> list[str]:
    by_lower = {str(c).lower(): c for c in var.columns}
    return [by_lower[c] for c in candidates if c in by_lower]
