"""The shipped GENCODE tables (``data/genes_*.csv.gz``): Ensembl ID <-> symbol for human and mouse.

Species are guessed from the identifiers (``ENSG`` human, ``ENSMUSG`` mouse; symbols by overlap),
and :func:`complete_gene_table` fills whichever side of a gene table is missing.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable

import pandas as pd

from engine.data.genes import GeneLookup, column_values, is_missing
from engine.data.shipped import shipped_file
from engine.errors import InputError

SHIPPED_SPECIES = {"human": "homo_sapiens", "mouse": "mus_musculus"}
"""Species with a shipped GENCODE table, ``data/genes_<name>.csv.gz``."""


ID_PREFIXES = {"ENSG": "human", "ENSMUSG": "mouse"}
"""Ensembl gene-ID prefix of each shipped species."""


MIN_SPECIES_FRACTION = 0.1


MIN_SPECIES_GENES = 200
"""Symbols are taken for a species when at least :data:`MIN_SPECIES_FRACTION` of them, or
:data:`MIN_SPECIES_GENES` of them, are its GENCODE symbols."""


_ID_PREFIX = re.compile(r"^(ENS[A-Z]*G)\d{11}")


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
    prefixes = Counter(m.group(1) for i in ids if not is_missing(i) and (m := _ID_PREFIX.match(str(i))))
    if prefixes:
        return ID_PREFIXES.get(prefixes.most_common(1)[0][0])
    names = {str(s) for s in symbols if not is_missing(s) and str(s)}
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
    ids, symbols = column_values(genes, "gene_id"), column_values(genes, "gene_symbol")
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
