"""Gene identifiers: Ensembl IDs and symbols, and fast look-up of genes by either.

:func:`gene_table` reads both kinds of identifier from an AnnData ``var`` table;
:class:`GeneIndex` resolves what a user types (``isg15``, ``ENSG00000187608.9``) to a column
number and gives the label to show.

The GENCODE tables shipped in ``data/`` (human and mouse, :func:`shipped_gene_map`) pair symbols
with Ensembl IDs offline: :func:`complete_gene_table` fills the side a gene table lacks, with the
species guessed from the genes (:func:`guess_species`). Gene matching (label transfer, applying a
model to an atlas, gene search) uses it by default; a user's gene map is applied first and wins.
"""

from __future__ import annotations

import functools
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd

from engine.errors import GeneNotFoundError, InputError, suggest

ENSEMBL_PATTERN = re.compile(r"^ENS[A-Z]*G\d{11}(\.\d+)?$")
ID_COLUMNS = ("gene_ids", "feature_id", "ensembl_id", "gene_id")
SYMBOL_COLUMNS = ("feature_name", "gene_symbols", "gene_symbol", "gene_name", "symbol")
_MIN_ENSEMBL_FRACTION = 0.5  # a column is Ensembl IDs when at least this fraction matches
SHIPPED_SPECIES = {"human": "homo_sapiens", "mouse": "mus_musculus"}
"""Species with a shipped GENCODE table, ``data/genes_<name>.csv.gz``."""
ID_PREFIXES = {"ENSG": "human", "ENSMUSG": "mouse"}
"""Ensembl gene-ID prefix of each shipped species."""
MIN_SPECIES_FRACTION = 0.1
MIN_SPECIES_GENES = 200
"""Symbols are taken for a species when at least :data:`MIN_SPECIES_FRACTION` of them, or
:data:`MIN_SPECIES_GENES` of them, are its GENCODE symbols."""
_ID_PREFIX = re.compile(r"^(ENS[A-Z]*G)\d{11}")


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
        pairs = [(str(i).strip(), str(s).strip()) for i, s in zip(ids, symbols) if not _missing(i) and not _missing(s)]
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


def shipped_gene_map(species: str = "human") -> pd.DataFrame:
    """The GENCODE Ensembl ID ↔ symbol table shipped in ``data/`` (see ``data/README.md``).

    Parameters
    ----------
    species
        ``"human"`` (GENCODE 48) or ``"mouse"`` (GENCODE M37).

    Returns
    -------
    pandas.DataFrame
        Columns ``gene_id`` (no version), ``gene_symbol``, ``gene_type``; one row per GENCODE gene with a
        symbol. A copy: the file is read once per process.

    Raises
    ------
    InputError
        No table is shipped for ``species``.
    engine.errors.MissingDataError
        The table file is not installed.
    """
    return _read_shipped(_check_species(species)).copy()


def shipped_lookup(species: str = "human") -> GeneLookup:
    """:class:`GeneLookup` of :func:`shipped_gene_map` (cached); symbols naming several genes get no ID."""
    return _shipped_lookup(_check_species(species))


def guess_species(ids: Iterable = (), symbols: Iterable = ()) -> str | None:
    """The shipped species that a set of genes belongs to, or ``None``.

    Parameters
    ----------
    ids
        Ensembl IDs (``None`` entries ignored): the commonest prefix decides (``ENSG`` human,
        ``ENSMUSG`` mouse, any other prefix ``None``).
    symbols
        Used when there are no IDs: the species whose GENCODE symbols they overlap most (exact case first,
        so ``Cd14`` is mouse and ``CD14`` human), provided :data:`MIN_SPECIES_FRACTION` or
        :data:`MIN_SPECIES_GENES` of them are its symbols.

    Returns
    -------
    str or None
        ``"human"``, ``"mouse"``, or ``None`` when neither fits.
    """
    prefixes = Counter(m.group(1) for i in ids if not _missing(i) and (m := _ID_PREFIX.match(str(i))))
    if prefixes:
        return ID_PREFIXES.get(prefixes.most_common(1)[0][0])
    names = {str(s) for s in symbols if not _missing(s) and str(s)}
    if not names:
        return None
    upper = {n.upper() for n in names}
    scores = {species: (len(names & exact), len(upper & folded))
              for species in SHIPPED_SPECIES for exact, folded in [_shipped_symbols(species)]}
    best = max(scores, key=scores.get)
    found = scores[best][1]
    return best if found and found >= min(MIN_SPECIES_FRACTION * len(upper), MIN_SPECIES_GENES) else None


def complete_gene_table(genes: pd.DataFrame, species: str | None = None) -> pd.DataFrame:
    """A gene table with its missing Ensembl IDs and symbols filled from the shipped GENCODE table.

    Parameters
    ----------
    genes
        A gene table (columns ``gene_id`` and ``gene_symbol``, as from :func:`gene_table`; a missing column
        counts as all unknown). Known values are never replaced, so a user's gene map applied by
        :func:`gene_table` wins over the shipped table.
    species
        ``"human"`` or ``"mouse"``; ``None`` guesses it (:func:`guess_species`) and, when that fails,
        leaves the genes as they are.

    Returns
    -------
    pandas.DataFrame
        A copy of ``genes`` (same index and other columns) with ``gene_id`` and ``gene_symbol`` filled where
        the table knows them. Symbols are matched case-insensitively, IDs without their version; a filled
        ID has no version, and a symbol naming several GENCODE genes gets none.

    Raises
    ------
    InputError
        ``species`` has no shipped table.
    """
    ids, symbols = _column(genes, "gene_id"), _column(genes, "gene_symbol")
    species = _check_species(species) if species is not None else guess_species(ids, symbols)
    if species is not None:
        ids, symbols = _shipped_lookup(species).fill(ids, symbols)
    out = genes.copy()
    out["gene_id"] = pd.Series(ids, index=genes.index, dtype=object)
    out["gene_symbol"] = pd.Series(symbols, index=genes.index, dtype=object)
    return out


def shipped_symbol(gene_id: str) -> str | None:
    """GENCODE symbol of one Ensembl ID (any version; species from its prefix), or ``None``."""
    match = _ID_PREFIX.match(str(gene_id).strip().upper())
    species = ID_PREFIXES.get(match.group(1)) if match else None
    return _shipped_lookup(species).to_symbol.get(match.group(0)) if species else None  # group 0: no version


def _check_species(species: str) -> str:
    """``species`` when a table is shipped for it; else one clear sentence."""
    if species not in SHIPPED_SPECIES:
        raise InputError(f"No gene table is shipped for species {species!r}: use one of "
                         f"{', '.join(map(repr, SHIPPED_SPECIES))}, or give a TSV of Ensembl ID and symbol "
                         "with --gene-map.")
    return species


@functools.cache
def _read_shipped(species: str) -> pd.DataFrame:
    from engine.data.shipped import shipped_file

    path = shipped_file(f"genes_{SHIPPED_SPECIES[species]}.csv.gz")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    return table.rename(columns={"ensembl_id": "gene_id", "symbol": "gene_symbol"})


@functools.cache
def _shipped_lookup(species: str) -> GeneLookup:
    table = _read_shipped(species)
    return GeneLookup.from_pairs(table["gene_id"], table["gene_symbol"], unique_symbols=True)


@functools.cache
def _shipped_symbols(species: str) -> tuple[frozenset[str], frozenset[str]]:
    """The species' GENCODE symbols as written and upper-cased."""
    symbols = _read_shipped(species)["gene_symbol"]
    return frozenset(symbols), frozenset(symbols.str.upper())


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
        given_ids, given_symbols = _column(table, "gene_id"), _column(table, "gene_symbol")
        completed = complete_gene_table(table)
        self._ids, self._symbols = _column(completed, "gene_id"), _column(completed, "gene_symbol")
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
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def _column(genes: pd.DataFrame, name: str) -> list[str | None]:
    """A gene table's column as strings, ``None`` where missing or blank (all ``None`` when absent)."""
    return _clean(genes[name].tolist()) if name in genes.columns else [None] * len(genes)


def _columns(var: pd.DataFrame, candidates: tuple[str, ...]) -> list[str]:
    by_lower = {str(c).lower(): c for c in var.columns}
    return [by_lower[c] for c in candidates if c in by_lower]
