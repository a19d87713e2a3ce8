"""Shared statistics: multiple-testing correction (one home for it across the engine)."""

from __future__ import annotations

import numpy as np


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
