"""Healthy vs disease: cell selection, cell-level differential expression, and the comparison.

The core functions take plain data (a pandas ``obs`` table, a scipy sparse matrix of
log-normalised values, cells x genes, and gene labels) so they run on any AnnData;
:func:`compare_conditions` is a thin wrapper over an :class:`~engine.bundle.atlas.Atlas`.

The DE test here is the exploratory fast path: a cell-level Wilcoxon rank-sum test (cells are
not independent replicates, so its p-values are optimistic). The donor-aware pseudobulk DESeq2
test lives in :mod:`engine.compare.pseudobulk` and composition in :mod:`engine.compare.composition`;
``compare_conditions(..., method="pseudobulk")`` uses the former.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from engine.bundle.select import role_column, select_cells, subsample
from engine.compare.composition import composition_shift
from engine.compare.pseudobulk import contrast_de
from engine.errors import EmptySelectionError, InputError, MissingKeyError, suggest
from engine.progress import Progress, report, scaled
from engine.stats import benjamini_hochberg

if TYPE_CHECKING:  # pragma: no cover
    from engine.bundle.atlas import Atlas

WILCOXON_METHOD = "wilcoxon (cell-level, exploratory)"
DE_METHODS = ("wilcoxon", "pseudobulk")
_BLOCK_NNZ = 4_000_000  # nonzeros ranked at once in rank_genes_wilcoxon (~250 MB peak)


def _ranksum_block(data: np.ndarray, rows: np.ndarray, counts: np.ndarray, n_a: int, n: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Rank sums of group B (rows >= n_a) and tie sums for a block of CSC columns.

    Zeros are ranked implicitly (they are the smallest values, all tied), so only the
    nonzeros are sorted.
    """
    n_genes = counts.size
    if data.dtype == np.float32:
        # one uint64 sort key per nonzero: gene | value bits (order-preserving for x >= 0) | in B
        key = np.repeat(np.arange(n_genes, dtype=np.uint64), counts) << np.uint64(33)
        key |= data.view(np.uint32).astype(np.uint64) << np.uint64(1)
        key |= (rows >= n_a).astype(np.uint64)
        key.sort()
        gene = (key >> np.uint64(33)).astype(np.int64)
        value = key >> np.uint64(1)  # gene and value bits: equal exactly when both are equal
        in_b = (key & np.uint64(1)).astype(bool)
        del key
    else:
        gene = np.repeat(np.arange(n_genes), counts)
        order = np.lexsort((data, gene))
        value, gene, in_b = data[order], gene[order], rows[order] >= n_a
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    new = np.ones(value.size, dtype=bool)
    new[1:] = (gene[1:] != gene[:-1]) | (value[1:] != value[:-1])
    tie_start = np.flatnonzero(new)
    tie_len = np.diff(np.r_[tie_start, value.size]).astype(np.float64)
    zeros = (n - counts).astype(np.float64)
    # average rank of each tie group: zeros come first, then the group's place among nonzeros
    tie_gene = gene[tie_start]
    tie_rank = zeros[tie_gene] + (tie_start - starts[tie_gene]) + (tie_len + 1) / 2
    rank = np.repeat(tie_rank, tie_len.astype(np.int64))
    nnz_b = np.bincount(gene[in_b], minlength=n_genes)
    rank_sum = np.bincount(gene[in_b], weights=rank[in_b], minlength=n_genes)
    n_b = n - n_a
    rank_sum += (n_b - nnz_b) * (zeros + 1) / 2
    ties = np.bincount(tie_gene, weights=tie_len**3 - tie_len, minlength=n_genes) + zeros**3 - zeros
    return rank_sum, ties


@dataclass
class WilcoxonResult:
    """The cell-level Wilcoxon DE table of :func:`rank_genes_wilcoxon`, its test and group sizes."""

    table: pd.DataFrame
    n_cells_a: int
    n_cells_b: int
    pseudocount: float
    method: str = WILCOXON_METHOD


def rank_genes_wilcoxon(X_a: sp.spmatrix | np.ndarray, X_b: sp.spmatrix | np.ndarray,
                        gene_labels: Sequence[str], *, pseudocount: float = 0.1,
                        progress: Progress | None = None) -> WilcoxonResult:
    """Cell-level Wilcoxon rank-sum test of group B against group A for every gene.

    Exploratory: cells are treated as independent replicates, which they are not (cells of
    one donor are correlated), so p-values are optimistic; use donor-level pseudobulk DE for
    inference. The statistic equals scanpy's ``rank_genes_groups(method="wilcoxon",
    tie_correct=True, reference=A)``: the tie-corrected normal approximation of the
    Mann-Whitney U, no continuity correction. Genes are ranked in blocks of columns with the
    zeros handled implicitly (one integer sort per block), so memory stays O(nonzeros) and
    nothing is densified.

    Parameters
    ----------
    X_a, X_b
        Non-negative log-normalised values (``log1p`` of counts per 10,000), cells x genes.
    gene_labels
        One label per column.
    pseudocount
        Added, in normalised counts per 10,000, to both linear-scale means in the fold change.
    progress
        Optional ``progress(fraction, message)`` callback.

    Returns
    -------
    WilcoxonResult
        Its ``table``: ``gene, log2fc, mean_a, mean_b, pct_a, pct_b, score, pval, padj`` sorted by
        ``score`` descending (up in B first). ``log2fc = log2((mean(expm1 B) + pc) / (mean(expm1 A) + pc))``,
        the fold change of mean normalised expression (unlike scanpy's ``expm1`` of the mean
        log value); ``mean_*`` are means of the log-normalised values; ``pct_*`` the fraction of
        cells with a nonzero value; ``score`` the z-score (positive: higher in B); ``padj``
        Benjamini-Hochberg. ``method`` is "wilcoxon (cell-level, exploratory)".
    """
    X_a, X_b = (sp.csr_matrix(X) if not sp.issparse(X) else X.tocsr() for X in (X_a, X_b))
    n_a, n_b = X_a.shape[0], X_b.shape[0]
    if n_a == 0 or n_b == 0:
        raise EmptySelectionError(f"Group {'A' if n_a == 0 else 'B'} has no cells: pick a non-empty selection.")
    if X_a.shape[1] != X_b.shape[1] or X_a.shape[1] != len(gene_labels):
        raise InputError(f"The groups have {X_a.shape[1]} and {X_b.shape[1]} genes but {len(gene_labels)} "
                         "gene labels were given: pass matrices over the same genes and one label per gene.")
    n, n_genes = n_a + n_b, X_a.shape[1]
    report(progress, 0.0, "Combining groups")
    X = sp.vstack([X_a, X_b], format="csr")
    exact32 = X.dtype == np.float32 or np.array_equal(X.data.astype(np.float32).astype(X.dtype), X.data)
    X = X.astype(np.float32 if exact32 else np.float64).tocsc()
    X.eliminate_zeros()
    if X.nnz and not np.isfinite(X.data).all():
        raise InputError("Expression has NaN or infinite values: pass finite log-normalised values.")
    if X.nnz and X.data.min() < 0:
        raise InputError("Expression has negative values (scaled data?): pass non-negative log-normalised values.")
    rank_sum = np.zeros(n_genes)
    ties = np.zeros(n_genes)
    counts = np.diff(X.indptr)
    left = 0
    while left < n_genes:
        target = X.indptr[left] + _BLOCK_NNZ
        right = max(left + 1, int(np.searchsorted(X.indptr, target, side="right")) - 1)
        right = min(right, n_genes)
        lo, hi = X.indptr[left], X.indptr[right]
        rank_sum[left:right], ties[left:right] = _ranksum_block(
            X.data[lo:hi], X.indices[lo:hi], counts[left:right], n_a, n)
        report(progress, 0.05 + 0.9 * right / n_genes, f"Ranking genes {right:,}/{n_genes:,}")
        left = right
    tie_factor = 1.0 - ties / (float(n) ** 3 - n) if n > 1 else np.ones(n_genes)
    with np.errstate(divide="ignore", invalid="ignore"):
        sd = np.sqrt(tie_factor * n_a * n_b * (n + 1) / 12.0)
        score = (rank_sum - n_b * (n + 1) / 2.0) / sd
    score[~np.isfinite(score)] = 0.0
    pval = 2 * stats.norm.sf(np.abs(score))

    def means(M: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lin = M.copy().astype(np.float64)
        lin.data = np.expm1(lin.data)
        size = M.shape[0]
        return (np.asarray(M.sum(axis=0)).ravel() / size, np.asarray(lin.sum(axis=0)).ravel() / size,
                np.asarray((M > 0).sum(axis=0)).ravel() / size)

    mean_a, lin_a, pct_a = means(X_a)
    mean_b, lin_b, pct_b = means(X_b)
    table = pd.DataFrame({
        "gene": [str(g) for g in gene_labels],
        "log2fc": np.log2((lin_b + pseudocount) / (lin_a + pseudocount)),
        "mean_a": mean_a, "mean_b": mean_b, "pct_a": pct_a, "pct_b": pct_b,
        "score": score, "pval": pval, "padj": benjamini_hochberg(pval),
    })
    table = table.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    report(progress, 1.0, "Differential expression done")
    return WilcoxonResult(table=table, n_cells_a=int(n_a), n_cells_b=int(n_b), pseudocount=pseudocount)


@dataclass
class VolcanoResult:
    """A DE table ready for a volcano plot (:func:`volcano_frame`) and the thresholds of its categories."""

    table: pd.DataFrame
    lfc_threshold: float
    padj_threshold: float


def volcano_frame(de: pd.DataFrame, *, lfc_threshold: float = 1.0, padj_threshold: float = 0.05,
                  max_neg_log10: float = 300.0) -> VolcanoResult:
    """A copy of a DE table ready for a volcano plot.

    Adds ``neg_log10_padj`` (``-log10 padj``, clipped to ``[0, max_neg_log10]`` so padj = 0 stays
    finite) and ``category``: ``"up"`` (padj < threshold and log2fc >= lfc_threshold), ``"down"``
    (padj < threshold and log2fc <= -lfc_threshold) or ``"n.s."``.
    """
    for column in ("log2fc", "padj"):
        if column not in de.columns:
            raise MissingKeyError(f"The DE table has no '{column}' column: pass a table from rank_genes_wilcoxon.")
    out = de.copy()
    padj = out["padj"].to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore"):
        out["neg_log10_padj"] = np.clip(-np.log10(np.nan_to_num(padj, nan=1.0)), 0.0, max_neg_log10)
    significant = padj < padj_threshold
    lfc = out["log2fc"].to_numpy(dtype=np.float64)
    out["category"] = np.where(significant & (lfc >= lfc_threshold), "up",
                               np.where(significant & (lfc <= -lfc_threshold), "down", "n.s."))
    return VolcanoResult(table=out, lfc_threshold=lfc_threshold, padj_threshold=padj_threshold)


# ----------------------------------------------------------------------------- atlas wrapper
@dataclass
class CompareResult:
    """Condition ``b`` compared with condition ``a`` (``a`` is the reference, e.g. healthy).

    ``composition`` is the :func:`composition_shift` table over all cell types (``None`` when
    the atlas has no cell-type column) and ``composition_method`` its test; ``de`` the
    differential-expression table within ``cell_type`` (all cells when ``None``), made by
    ``method``; ``cached``: the pseudobulk table was read from the bundle's cache.
    """

    a: str
    b: str
    cell_type: str | None
    composition: pd.DataFrame | None
    de: pd.DataFrame
    n_cells_a: int
    n_cells_b: int
    subsampled: bool
    method: str
    warnings: list[str] = field(default_factory=list)
    composition_method: str | None = None
    cached: bool = False


def compare_conditions(atlas: Atlas, a: str, b: str, *, cell_type: str | None = None,
                       max_cells_per_group: int | None = 20_000, seed: int = 0, method: str = "wilcoxon",
                       progress: Progress | None = None) -> CompareResult:
    """Compare condition ``b`` against ``a`` in an atlas: composition shift and DE genes.

    Parameters
    ----------
    atlas
        An opened atlas bundle.
    a, b
        Reference condition (e.g. healthy) and the one compared with it.
    cell_type
        Restrict DE to this cell type; ``None`` uses all cells (``"wilcoxon"`` only).
    max_cells_per_group
        Larger groups are subsampled reproducibly (``seed``) to this many cells (``"wilcoxon"``).
    method
        ``"wilcoxon"``: cell-level rank-sum test, the exploratory fast path (seconds on any
        size, optimistic p-values). ``"pseudobulk"``: donor-level DESeq2 per cell type (needs
        raw counts and two donors per condition), read from the bundle's cache when
        ``vcell de`` precomputed it, else computed from the summaries (a few seconds); see
        :func:`engine.compare.pseudobulk.pseudobulk_de` for its table.
    seed
        Seed of the subsampling.
    progress
        Progress callback.

    Returns
    -------
    CompareResult
        The composition shift over all cell types (:func:`composition_shift`; ``None`` without a
        cell-type column) and the differential-expression table of ``b`` against ``a``.
    """
    if method not in DE_METHODS:
        raise InputError(f"Unknown DE method '{method}': use one of {', '.join(DE_METHODS)}."
                         f"{suggest(method, DE_METHODS)}")
    obs, roles = atlas.obs, atlas.roles
    role_column(obs, roles, "condition")
    if str(a) == str(b):
        raise InputError(f"Both conditions are '{a}': pick two different conditions.")
    if method == "pseudobulk" and cell_type is None:
        raise InputError("Pseudobulk DE compares donors within one cell type: pick a cell type.")
    report(progress, 0.0, "Selecting cells")
    cells_a = select_cells(obs, condition=a, cell_type=cell_type, roles=roles)
    cells_b = select_cells(obs, condition=b, cell_type=cell_type, roles=roles)
    composition_fields = {"composition": None, "composition_method": None}
    if roles.get("cell_type") is not None and roles["cell_type"] in obs.columns:
        donor_key = roles.get("donor") if roles.get("donor") in obs.columns else None
        composition = composition_shift(obs, a, b, cell_type_key=roles["cell_type"],
                                        condition_key=roles["condition"], donor_key=donor_key)
        composition_fields = {"composition": composition.table, "composition_method": composition.method}
    if method == "pseudobulk":

        de = contrast_de(atlas, a, b, cell_type, progress=scaled(progress, 0.1, 1.0))
        return CompareResult(a=str(a), b=str(b), cell_type=cell_type, de=de.table, n_cells_a=int(cells_a.size),
                             n_cells_b=int(cells_b.size), subsampled=False, method=de.method,
                             warnings=list(de.notes), cached=de.cached, **composition_fields)
    sub_a = subsample(cells_a, max_cells_per_group, seed, 0)
    sub_b = subsample(cells_b, max_cells_per_group, seed, 1)
    subsampled = sub_a.size < cells_a.size or sub_b.size < cells_b.size
    warnings = []
    if subsampled:
        warnings.append(f"Subsampled to {max_cells_per_group:,} cells per condition for the DE test (seed {seed}).")
    report(progress, 0.1, "Reading expression")
    X_a = atlas.expression(sub_a)
    X_b = atlas.expression(sub_b)
    de = rank_genes_wilcoxon(X_a, X_b, atlas.genes.labels, progress=scaled(progress, 0.2, 1.0))
    return CompareResult(a=str(a), b=str(b), cell_type=cell_type, de=de.table, n_cells_a=int(sub_a.size),
                         n_cells_b=int(sub_b.size), subsampled=subsampled, method=de.method, warnings=warnings,
                         **composition_fields)
