"""Gene identifiers: Ensembl IDs and symbols.

:func:`gene_table` reads both kinds of identifier from an AnnData ``var`` table; a user's gene map
(:func:`read_gene_map`) fills the missing side through a :class:`GeneLookup`. The shipped GENCODE
tables are in :mod:`engine.data.gencode` (used by default wherever genes are matched) and the look-up
of what a user types in :mod:`engine.data.gene_index`.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd

from engine.errors import InputError

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


# -- the shipped GENCODE tables --------------------------------------------------------------------------
@dataclass(frozen=True)
class GeneLookup:
    """Ensembl ID → symbol and symbol → Ensembl ID look-ups of one gene map.

    Attributes
    ----------
    to_symbol
        Ensembl ID without version → symbol (read-only).
    to_id
        Upper-case symbol → Ensembl ID (read-only).
    """

    to_symbol: Mapping[str, str]
    to_id: Mapping[str, str]

    @classmethod
    def from_pairs(cls, ids: Iterable, symbols: Iterable, *, unique_symbols: bool = False) -> GeneLookup:
        """Look-ups from paired IDs and symbols (pairs missing either are skipped; the first pair wins).

        Parameters
        ----------
        ids, symbols
            Ensembl IDs (with or without version) and their symbols, in the same order.
        unique_symbols
            Give no ID to a symbol (compared case-insensitively) that names several genes, instead of the
            first one's.
        """
        pairs = [(str(i).strip(), str(s).strip()) for i, s in zip(ids, symbols) if not is_missing(i) and not is_missing(s)]
        to_id = {s.upper(): i for i, s in reversed(pairs)}
        if unique_symbols:
            counts = Counter(s.upper() for _, s in pairs)
            to_id = {s: i for s, i in to_id.items() if counts[s] == 1}
        return cls(to_symbol=MappingProxyType({strip_version(i): s for i, s in reversed(pairs)}),
                   to_id=MappingProxyType(to_id))

    def fill(self, ids: Sequence[str | None], symbols: Sequence[str | None]) -> tuple[list, list]:
        """Fill the missing (``None``) IDs and symbols of paired lists; known values are kept.

        Returns
        -------
        ids, symbols
            New lists of the same length.
        """
        symbols = [s if s or not i else self.to_symbol.get(strip_version(i)) for s, i in zip(symbols, ids)]
        ids = [i if i or not s else self.to_id.get(s.upper()) for s, i in zip(symbols, ids)]
        return ids, symbols


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
        ids, symbols = GeneLookup.from_pairs(gene_map[id_col], gene_map[symbol_col]).fill(ids, symbols)

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


def _separator(path: Path) -> str:
    """Tab, comma or whitespace, from the first data line of ``path``."""
    with open(path, errors="replace") as fh:
        for line in fh:
            if line.strip() and not line.startswith("#"):
                return "\t" if "\t" in line else "," if "," in line else r"\s+"
    return "\t"


def _ensembl_fraction(values) -> float:
    values = [str(v) for v in values if not is_missing(v)]
    if not values:
        return 0.0
    return sum(bool(ENSEMBL_PATTERN.match(v)) for v in values) / len(values)


def _only_ensembl(values) -> list[str | None]:
    return [str(v) if not is_missing(v) and ENSEMBL_PATTERN.match(str(v)) else None for v in values]


def _clean(values) -> list[str | None]:
    return [None if is_missing(v) or not str(v).strip() else str(v) for v in values]


def is_missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def column_values(genes: pd.DataFrame, name: str) -> list[str | None]:
    """A gene table's column as strings, ``None`` where missing or blank (all ``None`` when absent)."""
    return _clean(genes[name].tolist()) if name in genes.columns else [None] * len(genes)


def _columns(var: pd.DataFrame, candidates: tuple[str, ...]) -> list[str]:
    by_lower = {str(c).lower(): c for c in var.columns}
    return [by_lower[c] for c in candidates if c in by_lower]
