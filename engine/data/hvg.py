"""Per-gene statistics of log-normalised values, and highly variable genes.

:class:`GeneStats` accumulates per-gene means, variances and expressing-cell counts block by
block (so millions of cells stream through it, and shares from several processes merge);
:func:`select_hvg` picks genes from those statistics by Seurat-style normalised dispersion.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from engine.data.normalise import as_csr
from engine.errors import InputError

__all__ = ["MIN_CELLS_HVG", "GeneStats", "select_hvg", "normalised_dispersion"]

MIN_CELLS_HVG = 3
"""Genes expressed in fewer cells than this are never highly variable."""


class GeneStats:
    """Per-gene statistics of log-normalised values, accumulated over blocks of cells.

    Holds the mean and variance of the values and of their ``expm1`` (for Seurat-style
    dispersion), and how many cells express each gene; merged with Chan's parallel update
    in float64, so block order and size do not matter.

    Parameters
    ----------
    n_genes
        Number of genes; taken from the first block when not given.
    """

    def __init__(self, n_genes: int | None = None):
        self._n_genes = n_genes
        self._n = 0
        self._acc: dict[str, np.ndarray] = {}
        self._n_expressing: np.ndarray | None = None

    def update(self, block: Any) -> GeneStats:
        """Add a block (cells × genes, CSR or dense) of log-normalised values; returns ``self``."""
        block = as_csr(block)
        if not block.has_canonical_format:
            block = block.copy()
            block.sum_duplicates()
        if self._n_genes is None:
            self._n_genes = block.shape[1]
        if block.shape[1] != self._n_genes:
            raise InputError(f"A block has {block.shape[1]} genes but earlier blocks had {self._n_genes}: "
                             "give every block the same genes.")
        n_b = block.shape[0]
        if n_b == 0:
            return self
        genes, values = block.indices, block.data.astype(np.float64)
        expressing = np.bincount(genes[values != 0], minlength=self._n_genes)
        self._n_expressing = expressing if self._n_expressing is None else self._n_expressing + expressing
        with np.errstate(over="ignore"):
            expm1 = np.expm1(values)
        for key, data in (("log", values), ("expm1", expm1)):
            # sums over the stored values only: absent entries are zeros and add nothing
            mean_b = np.bincount(genes, weights=data, minlength=self._n_genes) / n_b
            sum_sq = np.bincount(genes, weights=data * data, minlength=self._n_genes)
            m2_b = np.maximum(sum_sq - n_b * mean_b**2, 0.0)
            if self._n == 0:
                self._acc[key + "_mean"], self._acc[key + "_m2"] = mean_b, m2_b
            else:
                self._merge(key, self._n, n_b, mean_b, m2_b)
        self._n += n_b
        return self

    def merge(self, other: GeneStats) -> GeneStats:
        """Add the cells accumulated in ``other`` (e.g. another process's share); returns ``self``."""
        if other._n == 0:
            return self
        if self._n == 0:
            self._n_genes, self._acc = other._n_genes, {k: v.copy() for k, v in other._acc.items()}
            self._n_expressing, self._n = other._n_expressing.copy(), other._n
            return self
        for key in ("log", "expm1"):
            self._merge(key, self._n, other._n, other._acc[key + "_mean"], other._acc[key + "_m2"])
        self._n_expressing = self._n_expressing + other._n_expressing
        self._n += other._n
        return self

    def state(self) -> dict[str, np.ndarray]:
        """The accumulated state as arrays (for :meth:`from_state`, e.g. a build checkpoint)."""
        state = {"n": np.int64(self._n), "n_genes": np.int64(self.n_genes)}
        state.update({f"acc_{k}": v for k, v in self._acc.items()})
        if self._n_expressing is not None:
            state["n_expressing"] = self._n_expressing
        return state

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> GeneStats:
        """Rebuild the statistics saved by :meth:`state`."""
        stats = cls(int(state["n_genes"]) or None)
        stats._n = int(state["n"])
        stats._acc = {k[4:]: np.asarray(v) for k, v in state.items() if k.startswith("acc_")}
        stats._n_expressing = np.asarray(state["n_expressing"]) if "n_expressing" in state else None
        return stats

    def _merge(self, key: str, n_a: int, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        mean_a, m2_a = self._acc[key + "_mean"], self._acc[key + "_m2"]
        n = n_a + n_b
        delta = mean_b - mean_a
        self._acc[key + "_mean"] = mean_a + delta * (n_b / n)
        self._acc[key + "_m2"] = m2_a + m2_b + delta**2 * (n_a * n_b / n)

    @property
    def n_cells(self) -> int:
        """Cells seen so far."""
        return self._n

    @property
    def n_genes(self) -> int:
        """Genes per cell (0 before the first block)."""
        return self._n_genes or 0

    @property
    def mean(self) -> np.ndarray:
        """Mean log-normalised value per gene (float64)."""
        return self._get("log_mean")

    @property
    def var(self) -> np.ndarray:
        """Unbiased variance of the log-normalised values per gene (zeros with < 2 cells)."""
        return self._variance("log_m2")

    @property
    def mean_expm1(self) -> np.ndarray:
        """Mean of ``expm1`` of the values (normalised counts) per gene."""
        return self._get("expm1_mean")

    @property
    def var_expm1(self) -> np.ndarray:
        """Unbiased variance of ``expm1`` of the values per gene."""
        return self._variance("expm1_m2")

    @property
    def n_expressing(self) -> np.ndarray:
        """Cells with a non-zero value, per gene."""
        if self._n_expressing is None:
            return np.zeros(self.n_genes, dtype=np.int64)
        return self._n_expressing.copy()

    def _get(self, key: str) -> np.ndarray:
        return self._acc[key].copy() if key in self._acc else np.zeros(self.n_genes)

    def _variance(self, key: str) -> np.ndarray:
        if self._n < 2:
            return np.zeros(self.n_genes)
        return self._acc[key] / (self._n - 1)


def select_hvg(stats: GeneStats, n_top: int = 2000, n_bins: int = 20) -> np.ndarray:
    """Highly variable genes by Seurat-style normalised dispersion.

    Dispersion is ``log(var / mean)`` of the normalised counts (``expm1`` scale), z-scored
    within ``n_bins`` bins of ``log1p(mean)``, as scanpy's ``flavor="seurat"`` does.

    Parameters
    ----------
    stats
        Statistics of the log-normalised values of every cell.
    n_top
        How many genes to select; all eligible genes when fewer are eligible.
    n_bins
        Number of mean bins.

    Returns
    -------
    numpy.ndarray
        Boolean mask over genes; genes expressed in fewer than 3 cells are never selected.
    """
    if stats.n_cells == 0:
        raise InputError("No cells were given to select highly variable genes from: give at least one cell.")
    eligible = stats.n_expressing >= MIN_CELLS_HVG
    mask = np.zeros(stats.n_genes, dtype=bool)
    if eligible.sum() <= n_top:
        mask[eligible] = True
        return mask
    norm = normalised_dispersion(stats, n_bins=n_bins, eligible=eligible)
    order = np.argsort(-norm, kind="stable")
    mask[order[:n_top]] = True
    return mask


def normalised_dispersion(stats: GeneStats, n_bins: int = 20, eligible: np.ndarray | None = None) -> np.ndarray:
    """Seurat-style normalised dispersion per gene; ``-inf`` for genes not ``eligible``."""
    if eligible is None:
        eligible = stats.n_expressing >= MIN_CELLS_HVG
    mean = stats.mean_expm1
    mean[mean == 0] = 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        dispersion = stats.var_expm1 / mean
        dispersion[dispersion == 0] = np.nan
        dispersion = np.log(dispersion)
    log_mean = np.log1p(mean)
    frame = pd.DataFrame({"mean": log_mean[eligible], "disp": dispersion[eligible]})
    frame["bin"] = pd.cut(frame["mean"], bins=n_bins)
    grouped = frame.groupby("bin", observed=True)["disp"]
    bin_mean = grouped.transform("mean")
    bin_std = grouped.transform("std")
    single = bin_std.isna()  # one-gene bins: scanpy's convention, z = 1
    bin_std[single] = bin_mean[single]
    bin_mean[single] = 0.0
    norm = np.full(stats.n_genes, -np.inf)
    values = ((frame["disp"] - bin_mean) / bin_std).to_numpy()
    norm[np.flatnonzero(eligible)] = np.where(np.isfinite(values), values, -np.inf)
    return norm
