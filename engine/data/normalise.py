"""Raw counts vs normalised input, and normalisation.

Everything here works on row blocks (CSR) so that atlases of millions of cells can be streamed
through it: :func:`iter_row_blocks` cuts any matrix (in memory, backed ``.h5ad``, h5py) into CSR
blocks; :func:`detect_matrix_kind` and :func:`check_counts` look at a few rows; :func:`choose_counts`
/ :func:`choose_lognorm` pick the input's raw counts or log-normalised values; :func:`normalise_log1p`
normalises one block. Per-gene statistics and highly variable genes are :mod:`engine.data.hvg`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anndata as ad
import numpy as np
import scipy.sparse as sp

from engine.errors import InputError

TARGET_SUM = 1e4
"""Counts per cell after normalisation (the paper's default)."""

COUNTS_LAYERS = ("counts", "raw_counts", "umi_counts")
LOGNORM_LAYERS = ("logcounts", "log1p", "lognorm", "log_normalized", "normalized", "data")
_LOG_MAX = 15.0  # log1p-normalised values stay far below this (log1p(1e4) ≈ 9.2)
_INT_TOL = 1e-4


def iter_row_blocks(X: Any, chunk_rows: int = 10_000) -> Iterator[tuple[int, sp.csr_matrix]]:
    """Yield ``(start_row, block)`` with ``block`` a CSR matrix of up to ``chunk_rows`` rows.

    ``X`` may be a SciPy sparse matrix, a NumPy array, an h5py dataset or a backed AnnData
    matrix; only one block is held in memory at a time.
    """
    n = X.shape[0]
    for start in range(0, n, max(int(chunk_rows), 1)):
        stop = min(start + chunk_rows, n)
        yield start, as_csr(X[start:stop])


def to_csr(X: Any, dtype: np.dtype = np.float32) -> sp.csr_matrix:
    """Load any matrix (in memory or backed) as one CSR matrix of ``dtype``."""
    if sp.issparse(X) or isinstance(X, np.ndarray):
        return sp.csr_matrix(X, dtype=dtype)
    blocks = [block.astype(dtype) for _, block in iter_row_blocks(X)]
    return sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix(X.shape, dtype=dtype)


def detect_matrix_kind(X: Any, n_rows: int = 2000) -> str:
    """Say whether a matrix holds raw counts, log-normalised or scaled values.

    Parameters
    ----------
    X
        Cells × genes; SciPy sparse, NumPy, h5py or backed AnnData matrix.
    n_rows
        How many rows to look at (evenly spread blocks; all rows when fewer).

    Returns
    -------
    str
        ``"scaled"`` when any value is negative; ``"counts"`` when every value is a
        non-negative integer; otherwise ``"lognorm"`` (non-negative, non-integer:
        normalised values, nearly always log1p; :func:`looks_logged` tells whether the log
        was taken). NaN and inf are ignored here; :func:`check_counts` reports them.
    """
    values = _finite(_sample_values(X, n_rows))
    if values.size == 0:
        return "counts"
    if values.min() < 0:
        return "scaled"
    if np.all(np.abs(values - np.rint(values)) <= _INT_TOL):
        return "counts"
    return "lognorm"


def looks_logged(X: Any, n_rows: int = 2000) -> bool:
    """True when non-negative normalised values look log-transformed.

    They do when the largest value is below ~15, or when ``expm1`` of each row sums to
    roughly the same total (log1p of per-cell normalised counts).
    """
    block = _sample_rows(X, n_rows)
    data = _finite(block.data)
    if data.size == 0 or data.max() < _LOG_MAX:
        return True
    with np.errstate(over="ignore"):
        totals = np.asarray(block.expm1().sum(axis=1)).ravel()
    totals = totals[np.isfinite(totals) & (totals > 0)]
    return totals.size > 0 and float(np.std(totals) / np.mean(totals)) < 0.05


def check_counts(X: Any, *, obs_names: Any = None, name: str = "X", what: str = "raw counts",
                 chunk_rows: int = 10_000) -> None:
    """Raise :class:`~engine.errors.InputError` if ``X`` has NaN, infinite or negative values.

    Parameters
    ----------
    X
        The raw counts (any matrix type :func:`iter_row_blocks` reads), checked block by block.
    obs_names
        Cell names, to say where the first bad value is.
    name
        How to call the matrix in the message (``"X"``, ``"layers['counts']"``).
    what
        What the matrix should hold, for the message (``"raw counts"``, ``"log-normalised values"``).
    """
    problems = {"NaN": [0, None], "infinite": [0, None], "negative": [0, None]}
    for start, block in iter_row_blocks(X, chunk_rows):
        data = block.data
        if data.size == 0:
            continue
        rows = None
        for label, bad in (("NaN", np.isnan(data)), ("infinite", np.isinf(data)), ("negative", data < 0)):
            count = int(bad.sum())
            if not count:
                continue
            if problems[label][1] is None:
                rows = rows if rows is not None else np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
                problems[label][1] = start + int(rows[np.argmax(bad)])
            problems[label][0] += count
    found = [(label, n, row) for label, (n, row) in problems.items() if n]
    if not found:
        return
    parts = [f"{n:,} {label} value{'s' if n > 1 else ''} (first in cell {_cell(obs_names, row)})"
             for label, n, row in found]
    raise InputError(f"{name} has {' and '.join(parts)}, which {what} cannot have: give a file whose {what} "
                     "are finite and non-negative (fix or drop those cells first).")


def choose_counts(adata: ad.AnnData) -> tuple[sp.csr_matrix | None, str]:
    """Find the raw counts of ``adata``.

    Looks at ``layers['counts']`` (and ``raw_counts``, ``umi_counts``), then ``adata.raw.X``
    (subset to ``var_names``), then ``adata.X``, and takes the first that holds counts.

    Returns
    -------
    counts, description
        CSR float32 counts aligned with ``adata.var_names`` and where they came from, e.g.
        ``"layers['counts']"``; or ``(None, reason)`` when there are no raw counts (the
        caller can still use :func:`choose_lognorm`).

    Raises
    ------
    InputError
        The counts found hold NaN, infinite or negative values.
    """
    label, matrix, description = find_counts(matrix_candidates(adata, COUNTS_LAYERS))
    if matrix is None:
        return None, description
    counts = to_csr(matrix)
    check_counts(counts, obs_names=adata.obs_names, name=label)
    return counts, label


def find_counts(candidates: list[tuple[str, Any]]) -> tuple[str | None, Any, str]:
    """The first of ``candidates`` (``(label, matrix)`` pairs) that holds raw counts, not loaded.

    Returns
    -------
    label, matrix, description
        ``(label, matrix, label)`` for the counts found, or ``(None, None, reason)``.
    """
    kinds = []
    for label, matrix in candidates:
        kind = detect_matrix_kind(matrix)
        kinds.append((label, kind))
        if kind == "counts":
            return label, matrix, label
    if not kinds:
        return None, None, "the atlas has no expression matrix"
    described = "; ".join(f"{label} is {_KIND_WORDS[kind]}" for label, kind in kinds)
    return None, None, f"{described}; no raw counts"


def choose_lognorm(adata: ad.AnnData, target_sum: float = TARGET_SUM) -> tuple[sp.csr_matrix, str]:
    """Log-normalised values of ``adata``, from raw counts where possible.

    Counts (see :func:`choose_counts`) are normalised with :func:`normalise_log1p`; without
    counts an existing log-normalised matrix is used (``X``, then ``.raw``, then layers);
    normalised values that were never log-transformed are normalised and log1p'd.

    Returns
    -------
    values, description
        CSR float32 aligned with ``adata.var_names``, and where it came from.

    Raises
    ------
    InputError
        Only scaled values (negative numbers) exist, or no matrix at all.
    """
    counts, where = choose_counts(adata)
    if counts is not None:
        return normalise_log1p(counts, target_sum), f"log1p of {where} normalised to {target_sum:,.0f} per cell"
    label, matrix = find_lognorm(matrix_candidates(adata, LOGNORM_LAYERS, layers_first=False))
    values = to_csr(matrix)
    check_counts(values, obs_names=adata.obs_names, name=label, what="normalised values")
    logged = looks_logged(values)
    return (values if logged else normalise_log1p(values, target_sum)), lognorm_description(label, logged, target_sum)


def find_lognorm(candidates: list[tuple[str, Any]]) -> tuple[str, Any]:
    """The first of ``candidates`` holding normalised (non-negative, non-integer) values, not loaded.

    Raises
    ------
    InputError
        Only scaled values (negative numbers) exist, or no matrix at all.
    """
    for label, matrix in candidates:
        if detect_matrix_kind(matrix) == "lognorm":
            return label, matrix
    if not candidates:
        raise InputError("The atlas has no expression matrix in X, .raw or layers: give a file with raw counts.")
    raise InputError("X holds scaled values (negative numbers) and there are no raw counts in layers['counts'] "
                     "or .raw: give the file with raw counts.")


def lognorm_description(label: str, logged: bool, target_sum: float = TARGET_SUM) -> str:
    """How log-normalised values were obtained from the normalised matrix ``label``."""
    if logged:
        return f"{label} (already log-normalised)"
    return f"log1p of {label} (normalised, not logged) rescaled to {target_sum:,.0f} per cell"


def normalise_log1p(counts_block: Any, target_sum: float = TARGET_SUM) -> sp.csr_matrix:
    """Scale each cell to ``target_sum`` counts, then take ``log1p`` (CSR float32).

    Cells with no counts stay all-zero (never NaN). Works on one block at a time.
    """
    block = as_csr(counts_block)
    totals = np.asarray(block.sum(axis=1), dtype=np.float64).ravel()
    scale = np.zeros_like(totals)
    np.divide(float(target_sum), totals, out=scale, where=totals > 0)
    out = sp.csr_matrix((np.empty(block.nnz, dtype=np.float32), block.indices.copy(), block.indptr.copy()),
                        shape=block.shape)
    scaled = block.data.astype(np.float64) * np.repeat(scale, np.diff(block.indptr))
    out.data[:] = np.log1p(scaled)
    return out


_KIND_WORDS = {"lognorm": "log-normalised", "scaled": "scaled (negative values)", "counts": "counts"}


def matrix_candidates(adata: ad.AnnData, layer_names: tuple[str, ...],
                layers_first: bool = True) -> list[tuple[str, Any]]:
    """(label, matrix) pairs aligned with ``adata.var_names``: layers, .raw, X (or X, .raw, layers); nothing is loaded."""
    layers = [(f"layers['{name}']", adata.layers[name]) for name in layer_names if name in adata.layers]
    raw = []
    if adata.raw is not None:
        raw_names = adata.raw.var_names
        if raw_names.equals(adata.var_names):
            raw = [(".raw.X", adata.raw.X)]
        elif adata.var_names.isin(raw_names).all() and raw_names.is_unique:
            columns = raw_names.get_indexer(adata.var_names)
            raw = [(".raw.X", _ColumnSubset(adata.raw.X, columns))]
    x = [("X", adata.X)] if adata.X is not None else []
    return layers + raw + x if layers_first else x + raw + layers


class _ColumnSubset:
    """Lazy column subset of a matrix: row slices read only the rows asked for."""

    def __init__(self, matrix: Any, columns: np.ndarray):
        self._matrix, self._columns = matrix, columns
        self.shape = (matrix.shape[0], len(columns))

    def __getitem__(self, rows: slice) -> sp.csr_matrix:
        return as_csr(self._matrix[rows])[:, self._columns]


def as_csr(block: Any, dtype: np.dtype | None = None) -> sp.csr_matrix:
    """A block (SciPy sparse or array-like) as CSR, cast to ``dtype`` when given."""
    if sp.issparse(block):
        out = block.tocsr()
    else:
        out = sp.csr_matrix(np.asarray(block))
    if dtype is not None and out.dtype != dtype:
        out = out.astype(dtype)
    return out


def _sample_rows(X: Any, n_rows: int) -> sp.csr_matrix:
    """Up to ``n_rows`` rows of ``X`` in 4 evenly spread contiguous blocks (cheap on disk too)."""
    n = X.shape[0]
    if n <= n_rows:
        return as_csr(X[0:n])
    size = max(n_rows // 4, 1)
    starts = np.linspace(0, n - size, 4).astype(int)
    return sp.vstack([as_csr(X[s:s + size]) for s in starts], format="csr")


def _sample_values(X: Any, n_rows: int) -> np.ndarray:
    return np.asarray(_sample_rows(X, n_rows).data, dtype=np.float64)


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def _cell(obs_names: Any, row: int) -> str:
    if obs_names is not None and row < len(obs_names):
        return f"'{obs_names[row]}'"
    return f"{row}"
