"""Shared statistics: multiple-testing correction and bootstrap resampling (one home for each across the engine)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from engine.errors import InputError


# ----------------------------------------------------------------------------- differential expression
def benjamini_hochberg(pvals: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (monotone, capped at 1)."""
    p = np.asarray(pvals, dtype=np.float64)
    if p.size == 0:
        return p.copy()
    order = np.argsort(p)
    ranked = p[order] * p.size / np.arange(1, p.size + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(p)
    out[order] = np.minimum(ranked, 1.0)
    return out


def bh_with_nan(pvals: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values over the finite ``pvals``; NaN stays NaN."""
    out = np.full(len(pvals), np.nan)
    ok = np.isfinite(pvals)
    out[ok] = benjamini_hochberg(pvals[ok])
    return out


# ----------------------------------------------------------------------------- resampling
def bootstrap_weights(n: int, n_boot: int, rng: np.random.Generator | int | None = None, *,
                      groups: np.ndarray | None = None) -> np.ndarray:
    """Bootstrap resampling multiplicities of ``n`` items, one column per draw.

    Without ``groups`` each draw takes ``n`` items with replacement (a multinomial count per
    item). With ``groups`` (e.g. the donor of each cell) the groups are the units: each draw
    takes as many groups as there are, with replacement, and every item of a drawn group counts
    as often as its group was drawn, so correlated items (the cells of one donor) move together.

    Parameters
    ----------
    n
        Number of items (cells).
    n_boot
        Number of bootstrap draws; 0 or less gives an ``(n, 0)`` array.
    rng
        A generator (drawn from in place, so a caller's random stream continues after it) or a seed.
    groups
        Optional per-item labels of the resampled units, length ``n`` (a missing label is a group of its own).

    Returns
    -------
    numpy.ndarray
        ``(n, max(n_boot, 0))`` float64 multiplicities; a weighted mean over items with column
        ``b`` is the statistic of draw ``b``.

    Raises
    ------
    InputError
        When ``groups`` does not have one label per item.
    """
    n_boot = max(int(n_boot), 0)
    if n_boot == 0:
        return np.zeros((n, 0))
    rng = np.random.default_rng(rng)
    if groups is None:
        return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).T.astype(np.float64)
    groups = np.asarray(groups)
    if groups.shape[0] != n:
        raise InputError(f"{groups.shape[0]} group labels for {n} items: pass one label per item.")
    codes, uniques = pd.factorize(groups, use_na_sentinel=False)
    draws = rng.integers(0, uniques.size, size=(n_boot, uniques.size))
    per_group = np.stack([np.bincount(d, minlength=uniques.size) for d in draws], axis=1)
    return per_group[codes].astype(np.float64)
