"""Per-group expression summaries: the bundle's ``summaries/`` directory.

One row per (cell type x condition x donor) group that has cells, with, for every gene:
the sum and sum of squares of log-normalised values, the number of expressing cells, and
the pseudobulk (summed raw counts). Dot plots, composition and pseudobulk DE read these
instead of the cells, so the app answers instantly. They are accumulated block by block.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from engine.errors import BundleError
from engine.fileio import write_npy

GROUP_COLUMNS = ("cell_type", "disease", "donor_id")


@dataclass
class Summaries:
    """Group table plus ``(n_groups, n_genes)`` statistics.

    Attributes
    ----------
    groups
        One row per group: the grouping columns (``"all"`` where a role is absent) and
        ``n_cells``.
    sum, sum_sq
        Sum and sum of squares of log-normalised values (float64).
    n_expressing
        Cells with a nonzero value (int64).
    counts
        Summed raw counts (pseudobulk, float64), or ``None`` without raw counts.
    """

    groups: pd.DataFrame
    sum: np.ndarray
    sum_sq: np.ndarray
    n_expressing: np.ndarray
    counts: np.ndarray | None = None

    def save(self, path: str | os.PathLike) -> None:
        """Write into directory ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.groups.to_parquet(path / "groups.parquet")
        for name in ("sum", "sum_sq", "n_expressing", "counts"):
            value = getattr(self, name)
            if value is not None:
                write_npy(path / f"{name}.npy", value)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Summaries:
        """Read a directory written by :meth:`save`."""
        path = Path(path)
        if not (path / "groups.parquet").exists():
            raise BundleError(f"Summaries are missing in {path}: rebuild the bundle with `vcell build`.")
        arrays = {name: np.load(path / f"{name}.npy") if (path / f"{name}.npy").exists() else None
                  for name in ("sum", "sum_sq", "n_expressing", "counts")}
        return cls(groups=pd.read_parquet(path / "groups.parquet"), **arrays)

    def aggregate(self, by: Sequence[str], genes: np.ndarray | None = None,
                  mask: np.ndarray | None = None) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
        """Collapse groups to the levels of ``by`` (e.g. ``["cell_type", "disease"]``).

        Returns the collapsed group table (with ``n_cells``) and a dict of per-gene
        ``mean`` (log-normalised), ``var``, ``frac_expressing`` and, when available,
        ``counts``, each ``(n_collapsed, n_genes_selected)``.
        """
        groups = self.groups if mask is None else self.groups[mask]
        rows = np.flatnonzero(mask) if mask is not None else np.arange(len(self.groups))
        cols = slice(None) if genes is None else np.asarray(genes)
        keys = groups[list(by)].astype(str)
        codes, uniques = pd.MultiIndex.from_frame(keys).factorize()
        indicator = sp.csr_matrix((np.ones(len(rows)), (codes, np.arange(len(rows)))),
                                  shape=(len(uniques), len(rows)))
        n = indicator @ groups["n_cells"].to_numpy(dtype=np.float64)
        total = np.asarray(indicator @ self.sum[rows][:, cols])
        total_sq = np.asarray(indicator @ self.sum_sq[rows][:, cols])
        expressing = np.asarray(indicator @ self.n_expressing[rows][:, cols])
        mean = total / n[:, None]
        var = np.maximum(total_sq / n[:, None] - mean**2, 0.0)
        stats = {"mean": mean, "var": var, "frac_expressing": expressing / n[:, None]}
        if self.counts is not None:
            stats["counts"] = np.asarray(indicator @ self.counts[rows][:, cols])
        table = pd.DataFrame(list(uniques), columns=list(by))
        table["n_cells"] = n.astype(np.int64)
        return table, stats


def group_codes(obs: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """Assign each cell its (cell type x condition x donor) group.

    Returns per-cell group codes and the group table (without ``n_cells``).
    """
    keys = pd.DataFrame({c: obs[c].astype(str).to_numpy() if c in obs else "all" for c in GROUP_COLUMNS},
                        index=obs.index)
    codes, uniques = pd.MultiIndex.from_frame(keys).factorize()
    return codes.astype(np.int64), pd.DataFrame(list(uniques), columns=list(GROUP_COLUMNS))


def compute_summaries(obs: pd.DataFrame, lognorm_blocks: Iterable[tuple[int, sp.csr_matrix]],
                      n_genes: int, count_blocks: Iterable[tuple[int, sp.csr_matrix]] | None = None) -> Summaries:
    """Accumulate :class:`Summaries` over blocks of cells.

    Parameters
    ----------
    obs
        Harmonised cell table (CELLxGENE column names).
    lognorm_blocks
        ``(start, block)`` pairs of log-normalised values, covering all cells.
    n_genes
        Number of genes (block width).
    count_blocks
        The same for raw counts, or ``None``.
    """
    accumulator = SummaryAccumulator(obs, n_genes, with_counts=count_blocks is not None)
    for start, block in lognorm_blocks:
        accumulator.add_lognorm(start, block)
    for start, block in count_blocks if count_blocks is not None else ():
        accumulator.add_counts(start, block)
    return accumulator.result()


class SummaryAccumulator:
    """:class:`Summaries` accumulated block by block, in any order (for single-pass builds).

    Parameters
    ----------
    obs
        Harmonised cell table (CELLxGENE column names).
    n_genes
        Number of genes (block width).
    with_counts
        Raw-count blocks will be added (pseudobulk).
    """

    def __init__(self, obs: pd.DataFrame, n_genes: int, with_counts: bool = False):
        self._codes, self._groups = group_codes(obs)
        n_groups = len(self._groups)
        self._total = np.zeros((n_groups, n_genes))
        self._total_sq = np.zeros((n_groups, n_genes))
        self._expressing = np.zeros((n_groups, n_genes), dtype=np.int64)
        self._pseudobulk = np.zeros((n_groups, n_genes)) if with_counts else None

    def add_lognorm(self, start: int, block: sp.spmatrix) -> None:
        """Add log-normalised values of the cells ``start .. start + len(block)``."""
        indicator = self._indicator(start, block.shape[0])
        block = sp.csr_matrix(block, dtype=np.float64)
        self._total += (indicator @ block).toarray()
        self._total_sq += (indicator @ block.multiply(block)).toarray()
        self._expressing += (indicator @ (block != 0).astype(np.float64)).toarray().astype(np.int64)

    def add_counts(self, start: int, block: sp.spmatrix) -> None:
        """Add raw counts of the cells ``start .. start + len(block)``."""
        self._pseudobulk += (self._indicator(start, block.shape[0]) @ sp.csr_matrix(block, dtype=np.float64)).toarray()

    def result(self) -> Summaries:
        """The summaries of every block added."""
        groups = self._groups.copy()
        groups["n_cells"] = np.bincount(self._codes, minlength=len(groups)).astype(np.int64)
        return Summaries(groups=groups, sum=np.asarray(self._total), sum_sq=np.asarray(self._total_sq),
                         n_expressing=np.asarray(self._expressing), counts=self._pseudobulk)

    def _indicator(self, start: int, n_rows: int) -> sp.csr_matrix:
        return _indicator(self._codes[start:start + n_rows], len(self._groups))


def _indicator(codes: np.ndarray, n_groups: int) -> sp.csr_matrix:
    """``(n_groups, len(codes))`` 0/1 matrix mapping cells to their group."""
    return sp.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(n_groups, len(codes)))
