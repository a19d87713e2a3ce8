"""Donor-aware differential expression: pseudobulk DESeq2 per cell type, and its cache in the bundle.

Each donor's cells of one cell type are summed into one pseudobulk sample (the bundle's
``summaries/`` hold these sums already, so nothing is read cell by cell), and condition ``b``
is tested against the reference ``a`` with a negative-binomial GLM, design ``~ condition``
(PyDESeq2: median-of-ratios size factors, shrunken dispersions, Wald test, Benjamini-Hochberg).
The donor, not the cell, is the replicate: this is the inference-grade test; the cell-level
Wilcoxon of :mod:`engine.compare.conditions` is the exploratory fast path.

:func:`precompute_de` tests every cell type x every condition against the reference and writes
the tables into ``summaries/de/`` (``index.json`` lists the contrasts, method and parameters);
:func:`cached_de` reads one back and :func:`contrast_de` answers any contrast, cached or not.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from engine import __version__
from engine.bundle.summaries import Summaries
from engine.errors import EmptySelectionError, InputError, VCellError, suggest
from engine.fileio import atomic_dir, write_json
from engine.progress import Progress, report, scaled

if TYPE_CHECKING:  # pragma: no cover
    from engine.bundle.atlas import Atlas

PSEUDOBULK_METHOD = "pseudobulk DESeq2 (donor-level, PyDESeq2 Wald test)"
CACHE_DIR = ("summaries", "de")
N_CPUS = min(os.cpu_count() or 1, 4)
COLUMNS = ["gene", "log2fc", "lfcSE", "stat", "pval", "padj", "baseMean", "mean_a", "mean_b", "pct_a", "pct_b",
           "n_donors_a", "n_donors_b", "n_cells_a", "n_cells_b"]
# PyDESeq2 warnings worth telling a biologist, by a fragment of their text
_WARNING_NOTES = {
    "residual degrees of freedom is less than 3": "With so few donors, the spread of gene dispersions is poorly "
                                                  "estimated: treat p-values with caution (more donors help).",
    "trend curve fitting did not converge": "The dispersion trend could not be fitted; a mean-based trend was used.",
    "Every gene contains at least one zero": "Every gene is zero in some donor: size factors were fitted iteratively.",
}


@dataclass(frozen=True)
class PseudobulkParams:
    """Parameters of :func:`pseudobulk_de` (recorded in the cache's index).

    Attributes
    ----------
    min_cells
        Donor samples with fewer cells of the cell type are dropped (their sums are too noisy).
    min_pct
        A gene is tested only if at least this fraction of the cell type's cells express it in
        ``a`` or in ``b``.
    min_count, min_total_count
        edgeR ``filterByExpr``: a gene needs ``min_count`` reads scaled to the median library
        size (as counts per million) in at least as many samples as the smaller condition has,
        and ``min_total_count`` reads over all samples.
    """

    min_cells: int = 10
    min_pct: float = 0.05
    min_count: int = 10
    min_total_count: int = 15


@dataclass
class PseudobulkResult:
    """Pseudobulk DESeq2 of condition ``b`` against reference ``a`` within ``cell_type``.

    ``table`` has one row per tested gene (:data:`COLUMNS`, see :func:`pseudobulk_de`); ``notes``
    are plain sentences for the user (dropped donor samples, genes tested, DESeq2 warnings);
    ``n_genes_tested`` of the atlas's ``n_genes`` passed the expression filter; ``cached``: read
    from the bundle's cache (``summaries/de/``) rather than computed now.
    """

    table: pd.DataFrame
    a: str
    b: str
    cell_type: str
    params: PseudobulkParams
    notes: list[str]
    n_genes: int
    n_genes_tested: int
    method: str = PSEUDOBULK_METHOD
    cached: bool = False


# ----------------------------------------------------------------------------- one contrast
def pseudobulk_de(summaries: Summaries, gene_labels: list[str], a: str, b: str, cell_type: str, *,
                  params: PseudobulkParams | None = None, progress: Progress | None = None) -> PseudobulkResult:
    """Pseudobulk DESeq2 of condition ``b`` against reference ``a`` within one cell type.

    Parameters
    ----------
    summaries
        Per (cell type x condition x donor) aggregates with raw-count sums (``counts``).
    gene_labels
        One display label per gene (column of the summaries).
    a, b
        Reference condition (e.g. healthy) and the one compared with it.
    cell_type
        The cell type to test.
    params
        Filters; defaults of :class:`PseudobulkParams`.
    progress
        Progress callback.

    Returns
    -------
    PseudobulkResult
        Its ``table`` has one row per tested gene, sorted by ``stat`` (largest increase first):
        ``gene, log2fc`` (DESeq2 MLE log2 fold change b/a), ``lfcSE, stat`` (Wald), ``pval, padj``
        (BH; NaN for Cook's outliers and independently filtered genes), ``baseMean, mean_a, mean_b``
        (mean log-normalised expression), ``pct_a, pct_b`` (fraction of cells expressing),
        ``n_donors_a, n_donors_b, n_cells_a, n_cells_b``.

    Raises
    ------
    InputError
        No raw counts, only one condition, the same or an unknown condition or cell type, no
        donor column, or fewer than two donors (with at least ``min_cells`` cells) in a condition.
    EmptySelectionError
        The cell type has no cells in ``a`` or ``b``, or no gene passes the expression filter.
    """
    params = params or PseudobulkParams()
    a, b, cell_type = str(a), str(b), str(cell_type)
    report(progress, 0.0, f"Pseudobulk samples of {cell_type}")
    samples, stats, notes = _samples(summaries, a, b, cell_type, params)
    keep = _expressed(stats, samples, params)
    notes.append(f"Tested {keep.sum():,} of {keep.size:,} genes (expressed in at least {params.min_pct:.0%} of "
                 f"the cell type's cells and with enough counts, as edgeR's filterByExpr).")
    if not keep.any():
        raise EmptySelectionError(f"No gene is expressed enough in {cell_type} to test: it has too few cells "
                                  "or reads; pick a larger cell type.")
    report(progress, 0.1, f"DESeq2 on {keep.sum():,} genes x {len(samples)} donors")
    results, fit_notes = _deseq2(stats["counts"][:, keep], samples["condition"].to_numpy())
    notes += fit_notes
    genes = np.flatnonzero(keep)
    condition_stats = _per_condition(stats, samples)
    table = pd.DataFrame({
        "gene": [str(gene_labels[g]) for g in genes],
        "log2fc": results["log2FoldChange"], "lfcSE": results["lfcSE"], "stat": results["stat"],
        "pval": results["pvalue"], "padj": results["padj"], "baseMean": results["baseMean"],
        **{name: values[genes] for name, values in condition_stats.items()},
    })
    for side in ("a", "b"):
        chosen = samples[samples["condition"] == side]
        table[f"n_donors_{side}"] = len(chosen)
        table[f"n_cells_{side}"] = int(chosen["n_cells"].sum())
    untested = int(table["padj"].isna().sum())
    if untested:
        notes.append(f"{untested:,} genes have no adjusted p-value (a donor outlier by Cook's distance, or too "
                     "little signal to pass DESeq2's independent filtering).")
    table = table[COLUMNS].sort_values("stat", ascending=False, kind="stable", na_position="last")
    table = table.reset_index(drop=True)
    report(progress, 1.0, "Pseudobulk DE done")
    return PseudobulkResult(table=table, a=a, b=b, cell_type=cell_type, params=params, notes=notes,
                            n_genes=int(keep.size), n_genes_tested=int(keep.sum()))


def _samples(summaries: Summaries, a: str, b: str, cell_type: str, params: PseudobulkParams
             ) -> tuple[pd.DataFrame, dict[str, np.ndarray], list[str]]:
    """The donor samples of ``cell_type`` in ``a`` and ``b`` (``condition`` is ``"a"``/``"b"``) and their stats."""
    if summaries.counts is None:
        raise InputError("This bundle has no raw counts (it was built from log-normalised values), so pseudobulk "
                         "DE is unavailable: rebuild it from raw counts, or use the cell-level Wilcoxon test.")
    groups = summaries.groups.astype({"cell_type": str, "disease": str, "donor_id": str})
    conditions = sorted(groups["disease"].unique())
    if len(conditions) < 2:
        raise InputError(f"This atlas has only one condition ('{conditions[0]}'): there is nothing to compare.")
    if a == b:
        raise InputError(f"Both conditions are '{a}': pick two different conditions.")
    for value, what, choices in ((a, "condition", conditions), (b, "condition", conditions),
                                 (cell_type, "cell type", sorted(groups["cell_type"].unique()))):
        _check_choice(value, what, choices)
    mask = (groups["cell_type"] == cell_type).to_numpy() & groups["disease"].isin([a, b]).to_numpy()
    mask &= groups["n_cells"].to_numpy() > 0
    present = set(groups.loc[mask, "disease"])
    for value in (a, b):
        if value not in present:
            raise EmptySelectionError(f"No '{cell_type}' cells in condition '{value}': pick another cell type "
                                      "or condition.")
    table, stats = summaries.aggregate(["disease", "donor_id"], mask=mask)
    table["condition"] = np.where(table["disease"] == a, "a", "b")
    notes = []
    small = table["n_cells"] < params.min_cells
    if small.any():
        dropped = ", ".join(f"{d} ({n} cells)" for d, n in zip(table.loc[small, "donor_id"],
                                                                 table.loc[small, "n_cells"]))
        notes.append(f"Dropped {small.sum()} donor sample(s) with fewer than {params.min_cells} {cell_type} cells: "
                     f"{dropped}.")
    if (table["donor_id"] == "all").all():
        raise InputError("This atlas has no donor column, so donors cannot be compared: rebuild it with --donor-key, "
                         "or use the cell-level Wilcoxon test to explore.")
    for value, side in ((a, "a"), (b, "b")):
        n_all = int((table["condition"] == side).sum())
        n_ok = int(((table["condition"] == side) & ~small).sum())
        if n_ok < 2:
            raise InputError(f"Too few donors to test {cell_type} in '{value}': {n_ok} of its {n_all} donor(s) have "
                             f"at least {params.min_cells} of these cells, and pseudobulk DE needs at least 2 per "
                             "condition. Use the cell-level Wilcoxon test to explore.")
    rows = ~small.to_numpy()
    return (table[rows].reset_index(drop=True), {k: v[rows] for k, v in stats.items()}, notes)


def _expressed(stats: dict[str, np.ndarray], samples: pd.DataFrame, params: PseudobulkParams) -> np.ndarray:
    """Genes worth testing: expressed in enough cells and passing edgeR's filterByExpr rule."""
    counts = stats["counts"]
    library = counts.sum(axis=1)
    cpm_cutoff = params.min_count / max(float(np.median(library)), 1.0) * 1e6
    cpm = counts / np.maximum(library, 1.0)[:, None] * 1e6
    smallest = int(samples["condition"].value_counts().min())
    by_counts = ((cpm >= cpm_cutoff).sum(axis=0) >= smallest) & (counts.sum(axis=0) >= params.min_total_count)
    frac = _per_condition(stats, samples)
    by_cells = np.maximum(frac["pct_a"], frac["pct_b"]) >= params.min_pct
    return by_counts & by_cells


def _per_condition(stats: dict[str, np.ndarray], samples: pd.DataFrame) -> dict[str, np.ndarray]:
    """Cell-weighted mean log-expression and fraction expressing per side (``mean_a`` ... ``pct_b``)."""
    out = {}
    for side in ("a", "b"):
        rows = (samples["condition"] == side).to_numpy()
        weights = samples.loc[rows, "n_cells"].to_numpy(dtype=np.float64)
        out[f"mean_{side}"] = weights @ stats["mean"][rows] / weights.sum()
        out[f"pct_{side}"] = weights @ stats["frac_expressing"][rows] / weights.sum()
    return {k: out[k] for k in ("mean_a", "mean_b", "pct_a", "pct_b")}


def _deseq2(counts: np.ndarray, condition: np.ndarray) -> tuple[pd.DataFrame, list[str]]:
    """Fit ``~ condition`` and test b vs a; PyDESeq2's prints are silenced, its warnings become notes.

    PyDESeq2 fits genes in :data:`N_CPUS` processes (more only add start-up time at these sizes).
    """
    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.default_inference import DefaultInference
    from pydeseq2.ds import DeseqStats

    samples = [f"s{i}" for i in range(counts.shape[0])]
    frame = pd.DataFrame(np.rint(counts).astype(np.int64), index=samples,
                         columns=[f"g{i}" for i in range(counts.shape[1])])
    metadata = pd.DataFrame({"condition": condition}, index=samples)
    inference = DefaultInference(n_cpus=N_CPUS)
    sink = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(sink), \
            contextlib.redirect_stderr(sink):
        warnings.simplefilter("always")
        dds = DeseqDataSet(counts=frame, metadata=metadata, design="~condition", inference=inference, quiet=True)
        dds.deseq2()
        result = DeseqStats(dds, contrast=["condition", "b", "a"], inference=inference, quiet=True)
        result.summary()
    notes = []
    for warning in caught:
        if issubclass(warning.category, (FutureWarning, DeprecationWarning)):
            continue
        text = str(warning.message)
        note = next((n for key, n in _WARNING_NOTES.items() if key in text), f"DESeq2: {text}")
        if note not in notes:
            notes.append(note)
    return result.results_df.reset_index(drop=True), notes


# ----------------------------------------------------------------------------- atlas: contrasts and cache
def reference_condition(atlas: Atlas, reference: str | None = None) -> str:
    """The condition every other is compared with.

    ``reference`` if given, else the atlas's known reference (healthy / control), else the
    first condition alphabetically.
    """
    conditions = sorted(str(c) for c in atlas.summaries.groups["disease"].unique())
    chosen = reference if reference is not None else atlas.reference_condition
    if chosen is None:
        return conditions[0]
    _check_choice(str(chosen), "reference condition", conditions)
    return str(chosen)


def de_contrasts(atlas: Atlas, *, cell_types: list[str] | None = None, conditions: list[str] | None = None,
                 reference: str | None = None) -> list[tuple[str, str, str]]:
    """``(cell_type, a, b)`` for every cell type x every non-reference condition (``a`` = reference)."""
    groups = atlas.summaries.groups.astype({"cell_type": str, "disease": str})
    a = reference_condition(atlas, reference)
    all_types = sorted(groups["cell_type"].unique())
    others = [c for c in sorted(groups["disease"].unique()) if c != a]
    for value in cell_types or []:
        _check_choice(value, "cell type", all_types)
    for value in conditions or []:
        _check_choice(value, "condition", others)
    return [(t, a, b) for t in (cell_types or all_types) for b in (conditions or others)]


def _check_choice(value: str, what: str, choices: list[str]) -> None:
    """An InputError listing the valid values (and close matches) when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise InputError(f"Unknown {what} '{value}': choose one of {', '.join(choices[:20])}."
                         f"{suggest(value, choices)}")


def _cache_path(atlas: Atlas) -> Path:
    return atlas.path.joinpath(*CACHE_DIR)


def _read_index(atlas: Atlas) -> dict | None:
    """The cache's index, or ``None`` when absent or made for another gene list."""
    path = _cache_path(atlas) / "index.json"
    if not path.exists():
        return None
    index = json.loads(path.read_text())
    return index if index.get("gene_hash") == atlas.manifest.gene_hash else None


def _key(cell_type: str, a: str, b: str) -> tuple[str, str, str]:
    return str(cell_type), str(a), str(b)


def cached_de(atlas: Atlas, a: str, b: str, cell_type: str, *,
              params: PseudobulkParams | None = None) -> PseudobulkResult | None:
    """The cached pseudobulk result of ``b`` vs ``a`` in ``cell_type``, or ``None`` when not cached.

    A cache made with other ``params`` (default :class:`PseudobulkParams`) or for another gene
    list counts as absent. The table is a contrast's parquet file; everything else comes from
    ``index.json``.
    """
    params = params or PseudobulkParams()
    index = _read_index(atlas)
    if index is None or index["params"] != asdict(params):
        return None
    entry = next((e for e in index["contrasts"] if _key(e["cell_type"], e["a"], e["b"]) == _key(cell_type, a, b)),
                 None)
    if entry is None:
        return None
    table = pd.read_parquet(_cache_path(atlas) / entry["file"])
    table.attrs = {}  # caches written before PseudobulkResult also kept index.json's fields in the parquet metadata
    return PseudobulkResult(table=table, a=entry["a"], b=entry["b"], cell_type=entry["cell_type"], params=params,
                            notes=list(entry["notes"]), n_genes=int(entry["n_genes"]),
                            n_genes_tested=int(entry["n_genes_tested"]), method=index["method"], cached=True)


def contrast_de(atlas: Atlas, a: str, b: str, cell_type: str, *, params: PseudobulkParams | None = None,
                use_cache: bool = True, progress: Progress | None = None) -> PseudobulkResult:
    """Pseudobulk DE of ``b`` vs ``a`` in ``cell_type``: from the cache when there, else computed now.

    Nothing is written (the app reads bundles only); see :func:`pseudobulk_de` for the table.
    """
    cached = cached_de(atlas, a, b, cell_type, params=params) if use_cache else None
    if cached is not None:
        report(progress, 1.0, "Pseudobulk DE read from the bundle's cache")
        return cached
    return pseudobulk_de(atlas.summaries, atlas.genes.labels, a, b, cell_type, params=params, progress=progress)


def precompute_de(atlas: Atlas, *, cell_types: list[str] | None = None, conditions: list[str] | None = None,
                  reference: str | None = None, params: PseudobulkParams | None = None,
                  progress: Progress | None = None) -> pd.DataFrame:
    """Test every cell type x every non-reference condition and cache the tables in ``summaries/de/``.

    The reference is ``reference``, else the atlas's known reference condition, else the first
    condition alphabetically. Contrasts that cannot be tested (too few donors, a cell type absent
    from a condition) are listed as skipped with the reason. Earlier cached contrasts made with
    the same parameters are kept; the directory is replaced atomically.

    Returns
    -------
    pandas.DataFrame
        One row per contrast: ``cell_type, a, b, n_genes_tested, n_up, n_down`` (padj < 0.05),
        ``seconds, skipped`` (the reason, or ``""``).
    """
    params = params or PseudobulkParams()
    contrasts = de_contrasts(atlas, cell_types=cell_types, conditions=conditions, reference=reference)
    old = _read_index(atlas)
    keep_old = old is not None and old["params"] == asdict(params)
    todo = {_key(*c) for c in contrasts}
    entries = [e for e in old["contrasts"] if _key(e["cell_type"], e["a"], e["b"]) not in todo] if keep_old else []
    skipped = [e for e in old["skipped"] if _key(e["cell_type"], e["a"], e["b"]) not in todo] if keep_old else []
    rows = []
    with atomic_dir(_cache_path(atlas), overwrite=True) as tmp:
        for entry in entries:
            shutil.copy2(_cache_path(atlas) / entry["file"], tmp / entry["file"])
        used = {e["file"] for e in entries}
        for i, (cell_type, a, b) in enumerate(contrasts):
            step = scaled(progress, i / len(contrasts), (i + 1) / len(contrasts))
            report(step, 0.0, f"{cell_type}: {b} vs {a} ({i + 1}/{len(contrasts)})")
            start = time.perf_counter()
            try:
                result = pseudobulk_de(atlas.summaries, atlas.genes.labels, a, b, cell_type, params=params)
            except VCellError as exc:
                skipped.append({"cell_type": cell_type, "a": a, "b": b, "reason": str(exc)})
                rows.append({"cell_type": cell_type, "a": a, "b": b, "skipped": str(exc)})
                continue
            file = next(f for n in range(len(used) + 1) if (f := f"contrast-{n:04d}.parquet") not in used)
            used.add(file)
            table = result.table
            table.to_parquet(tmp / file)
            significant = table["padj"] < 0.05
            summary = {"n_genes_tested": result.n_genes_tested,
                       "n_up": int((significant & (table["log2fc"] > 0)).sum()),
                       "n_down": int((significant & (table["log2fc"] < 0)).sum())}
            entries.append({"cell_type": cell_type, "a": a, "b": b, "file": file, "n_genes": result.n_genes,
                            **summary, "notes": result.notes})
            rows.append({"cell_type": cell_type, "a": a, "b": b, **summary,
                         "seconds": round(time.perf_counter() - start, 2), "skipped": ""})
        write_json(tmp / "index.json", {
            "method": PSEUDOBULK_METHOD, "engine_version": __version__, "pydeseq2_version": _pydeseq2_version(),
            "params": asdict(params), "design": "~ condition", "reference": contrasts[0][1] if contrasts else None,
            "gene_hash": atlas.manifest.gene_hash, "contrasts": entries, "skipped": skipped,
        })
    report(progress, 1.0, f"pseudobulk DE cached for {len(entries)} contrast(s)")
    return pd.DataFrame(rows, columns=["cell_type", "a", "b", "n_genes_tested", "n_up", "n_down", "seconds",
                                       "skipped"])


def _pydeseq2_version() -> str:
    from importlib.metadata import version

    return version("pydeseq2")
