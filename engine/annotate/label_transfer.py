"""Label transfer: cell types for unlabelled cells from a labelled reference, by kNN in the reference's PCA.

The method (scanpy ``ingest`` style, with FAISS):

1. **Genes.** Reference and query genes are matched by Ensembl ID (version ignored) or symbol
   (:func:`match_genes`); too small an overlap is refused with advice (a ``--gene-map``).
2. **Normalisation.** Both sides are log-normalised the same way (counts per 10,000, ``log1p``,
   :func:`engine.data.normalise.normalise_log1p`) over the *shared* genes when both have raw counts, so
   that genes present on only one side do not skew library sizes; otherwise the stored
   log-normalised values are used.
3. **Embedding.** A PCA is fitted on the reference's highly variable genes among the shared genes
   (:func:`engine.models.pca.fit_pca`: standardised with the reference's mean and scale); the query is
   projected into it with the reference's parameters.
4. **Vote.** Each query cell's ``k`` nearest reference cells (cosine, an exact or IVF FAISS index from
   :func:`engine.space.index.build_index`) vote with weight ``1 / (cosine distance + 0.001)``; the label with the
   largest weight wins and its share of the weight is the cell's *confidence*. Cells whose confidence is
   below ``threshold`` are called ``"unknown"``.

Everything streams over blocks of query cells, so a query of millions of cells is never held densely.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from engine.annotate.cell_data import (
    CHUNK,
    MIN_INFORMATIVE_FRACTION,
    MIN_SHARED_GENES,
    CellData,
    GeneMatch,
    informative_genes,
    match_genes,
    read_cells,
    shared_blocks,
    shared_expression,
)
from engine.data.hvg import GeneStats, select_hvg
from engine.data.schema import UNKNOWN
from engine.errors import InputError
from engine.models.pca import fit_pca
from engine.progress import Progress, report, scaled
from engine.space.index import build_index, search

METHOD = "label transfer (kNN in reference PCA)"
DEFAULT_K = 15
DEFAULT_THRESHOLD = 0.5
"""Vote share below which a cell is called ``"unknown"``: below it no label has a majority. Measured
(benchmarks/RESULTS.md): 0.04% unknown on held-out Kang donors, 5% (mostly ambiguous T cells) across data sets."""
_EPS = 1e-3  # added to cosine distances so a duplicate cell cannot outvote all others alone

__all__ = ["METHOD", "DEFAULT_K", "DEFAULT_THRESHOLD", "CellData", "read_cells", "GeneMatch", "match_genes",
           "LabelTransfer", "fit_transfer", "TransferResult", "transfer_labels", "label_summary"]


# -- fit and predict ---------------------------------------------------------------------------------------
@dataclass
class TransferResult:
    """Transferred labels of every query cell.

    Attributes
    ----------
    labels
        Predicted cell type, ``"unknown"`` where the confidence is below the threshold.
    predicted
        The winning label before the threshold.
    confidence
        Share of the distance-weighted vote won by the winning label, in ``[0, 1]``.
    info
        Method, reference, ``k``, ``threshold``, ``n_unknown``, gene overlap, normalisation, ...
    """

    labels: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def summary(self) -> pd.DataFrame:
        """Per cell type: ``n_cells``, ``fraction``, ``mean_confidence`` (:func:`label_summary`)."""
        return label_summary(self.labels, self.confidence)


def label_summary(labels: np.ndarray, confidence: np.ndarray) -> pd.DataFrame:
    """Per cell type: ``cell_type``, ``n_cells``, ``fraction``, ``mean_confidence``, largest first."""
    frame = pd.DataFrame({"cell_type": np.asarray(labels).astype(str), "confidence": np.asarray(confidence)})
    table = frame.groupby("cell_type", observed=True)["confidence"].agg(n_cells="size", mean_confidence="mean")
    table["fraction"] = table["n_cells"] / max(len(frame), 1)
    return table.reset_index()[["cell_type", "n_cells", "fraction", "mean_confidence"]] \
        .sort_values(["n_cells", "cell_type"], ascending=[False, True], ignore_index=True)


@dataclass
class LabelTransfer:
    """A reference fitted for one query's genes: PCA, FAISS index of the reference cells, their labels.

    Attributes
    ----------
    match
        The shared genes (:class:`GeneMatch`).
    hvg
        Positions, within the shared genes, of the genes the PCA uses.
    pca
        The :class:`~engine.models.pca.PCAModel` fitted on the reference.
    index
        FAISS inner-product index of the reference's L2-normalised PCA embedding.
    classes, codes
        The reference's cell types and each reference cell's code into ``classes``.
    use_counts
        Renormalise both sides from raw counts over the shared genes.
    info
        How the fit was made (for the manifest).
    """

    match: GeneMatch
    hvg: np.ndarray
    pca: object
    index: object
    classes: np.ndarray
    codes: np.ndarray
    use_counts: bool
    info: dict = field(default_factory=dict)

    def embed(self, block: sp.csr_matrix) -> np.ndarray:
        """L2-normalised PCA embedding of a block of log-normalised cells x shared genes."""
        return _embed(self.pca, self.hvg, block)

    def vote(self, embedding: np.ndarray, k: int = DEFAULT_K) -> tuple[np.ndarray, np.ndarray]:
        """Winning class code and its vote share for each row of a normalised ``embedding``."""

        similarity, ids = search(self.index, embedding, k)
        valid = ids >= 0
        weights = np.where(valid, 1.0 / (np.maximum(1.0 - similarity, 0.0) + _EPS), 0.0)
        votes = np.zeros((len(embedding), len(self.classes)))
        rows = np.repeat(np.arange(len(embedding)), ids.shape[1])
        np.add.at(votes, (rows[valid.ravel()], self.codes[ids[valid]]), weights[valid])
        best = votes.argmax(axis=1)
        total = votes.sum(axis=1)
        confidence = np.divide(votes[np.arange(len(votes)), best], total, out=np.zeros(len(votes)), where=total > 0)
        return best, confidence.astype(np.float32)

    def predict(self, query: CellData, *, k: int = DEFAULT_K, threshold: float = DEFAULT_THRESHOLD,
                chunk: int = CHUNK, progress: Progress | None = None) -> TransferResult:
        """Transfer labels to every cell of ``query`` (streamed in blocks of ``chunk`` cells)."""
        _check_settings(k, threshold)
        if query.n_cells == 0:
            raise InputError("The query has no cells: give a data set or bundle with at least one cell.")
        best = np.empty(query.n_cells, dtype=np.int64)
        confidence = np.empty(query.n_cells, dtype=np.float32)
        for start, block in shared_blocks(query, self.match.query, self.use_counts, chunk):
            report(progress, start / query.n_cells, f"voting ({start:,}/{query.n_cells:,} cells)")
            stop = start + block.shape[0]
            best[start:stop], confidence[start:stop] = self.vote(self.embed(block), k)
        predicted = self.classes[best]
        labels = np.where(confidence >= threshold, predicted, UNKNOWN).astype(object)
        n_unknown = int((labels == UNKNOWN).sum())
        info = {"method": METHOD, **self.info, "k": int(min(k, len(self.codes))), "threshold": float(threshold),
                "metric": "cosine", "vote": "1 / (cosine distance + 0.001)", "n_query_cells": int(query.n_cells),
                "n_unknown": n_unknown, "mean_confidence": float(confidence.mean())}
        report(progress, 1.0, f"{query.n_cells - n_unknown:,} cells labelled, {n_unknown:,} unknown")
        return TransferResult(labels=labels, predicted=predicted.astype(object), confidence=confidence, info=info)


def _embed(pca, hvg: np.ndarray, block: sp.csr_matrix) -> np.ndarray:
    import faiss

    emb = np.ascontiguousarray(pca.transform(block[:, hvg]), dtype=np.float32)
    faiss.normalize_L2(emb)  # cosine similarity = inner product of unit vectors
    return emb


def _check_settings(k: int, threshold: float) -> None:
    if int(k) < 1:
        raise InputError(f"k must be at least 1 (got {k}).")
    if not 0.0 <= float(threshold) <= 1.0:
        raise InputError(f"The confidence threshold must be between 0 and 1 (got {threshold}).")


def fit_transfer(reference: CellData, query_genes: pd.DataFrame, *, use_counts: bool = True, n_hvg: int = 2000,
                 n_pcs: int = 50, pca_sample: int = 50_000, seed: int = 0,
                 min_shared_genes: int = MIN_SHARED_GENES, min_informative_fraction: float = MIN_INFORMATIVE_FRACTION,
                 progress: Progress | None = None) -> LabelTransfer:
    """Fit the reference's PCA on its highly variable shared genes and index its cells.

    Parameters
    ----------
    reference
        Labelled cells (cells labelled ``"unknown"`` are left out of the vote).
    query_genes
        The query's gene table.
    use_counts
        Renormalise from raw counts over the shared genes (ignored when the reference has no counts).
    n_hvg, n_pcs
        Highly variable shared genes, and principal components.
    pca_sample
        At most this many reference cells (seeded sample) fit the PCA; all are indexed.
    min_shared_genes, min_informative_fraction
        Gene-overlap limits of :func:`match_genes`.
    """

    if reference.labels is None:
        raise InputError(f"The reference {reference.source} has no cell-type labels.")
    keep = np.flatnonzero(reference.labels != UNKNOWN)
    if len(keep) < 2:
        raise InputError(f"The reference {reference.source} has {len(keep)} labelled cells: give at least two.")
    if len(keep) < reference.n_cells:
        reference = reference.subset(keep)
    use_counts = bool(use_counts and reference.has_counts)
    report(progress, 0.0, "matching genes")
    match = match_genes(reference.genes, query_genes, informative_genes(reference, n_hvg),
                        min_shared=min_shared_genes, min_fraction=min_informative_fraction)
    report(progress, 0.2, "selecting highly variable shared genes")
    stats = GeneStats(match.n_shared)
    for _, block in shared_blocks(reference, match.reference, use_counts):
        stats.update(block)
    hvg = np.flatnonzero(select_hvg(stats, n_top=n_hvg))
    report(progress, 0.4, f"fitting PCA on {len(hvg):,} genes")
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(reference.n_cells, min(reference.n_cells, pca_sample), replace=False))
    genes = [str(reference.genes.index[i]) for i in match.reference[hvg]]
    pca = fit_pca(shared_expression(reference, sample, match.reference, use_counts)[:, hvg], genes, n_components=n_pcs,
                  seed=seed)
    report(progress, 0.6, "embedding and indexing the reference")
    blocks = shared_blocks(reference, match.reference, use_counts)
    embedding = np.vstack([_embed(pca, hvg, block) for _, block in blocks])
    index, index_info = build_index(embedding, metric="ip", seed=seed)
    classes, codes = np.unique(reference.labels, return_inverse=True)
    info = {"reference": reference.source, "reference_cell_type_key": reference.label_key,
            "n_reference_cells": int(reference.n_cells), "reference_cell_types": [str(c) for c in classes],
            "genes": match.to_dict(), "n_hvg": int(len(hvg)), "n_pcs": int(pca.n_components),
            "normalisation": ("log1p(counts / total * 1e4), totals over the shared genes" if use_counts
                              else "stored log-normalised values (no raw counts on both sides)"),
            "index": index_info.factory, "seed": seed}
    report(progress, 1.0, "reference ready")
    return LabelTransfer(match=match, hvg=hvg, pca=pca, index=index, classes=classes, codes=codes,
                         use_counts=use_counts, info=info)


def transfer_labels(reference, query, *, k: int = DEFAULT_K, threshold: float = DEFAULT_THRESHOLD,
                    reference_cell_type_key: str | None = None, gene_map=None, n_hvg: int = 2000, n_pcs: int = 50,
                    seed: int = 0, min_shared_genes: int = MIN_SHARED_GENES,
                    min_informative_fraction: float = MIN_INFORMATIVE_FRACTION,
                    progress: Progress | None = None) -> TransferResult:
    """Annotate ``query`` from ``reference``: the whole method in one call.

    Parameters
    ----------
    reference
        A :class:`CellData`, bundle, ``.h5ad`` path or AnnData with a cell-type column.
    query
        A :class:`CellData`, bundle, path or AnnData (labels not needed).
    k
        Neighbours that vote.
    threshold
        Confidence below which a cell is ``"unknown"`` (``0`` labels every cell).
    reference_cell_type_key
        The reference's cell-type column (guessed when ``None``).
    gene_map
        Ensembl ID ↔ symbol table or TSV path, used on both sides.
    n_hvg, n_pcs, seed
        Embedding settings (:func:`fit_transfer`).
    min_shared_genes, min_informative_fraction
        Gene-overlap limits.
    progress
        Progress callback.

    Returns
    -------
    TransferResult
        ``labels``, ``predicted``, ``confidence`` per query cell, ``info``, and ``summary`` per cell type.

    Raises
    ------
    InputError
        No cells, no cell-type column, too few shared genes, bad ``k`` or ``threshold``.
    """

    _check_settings(k, threshold)
    if not isinstance(reference, CellData):
        reference = read_cells(reference, cell_type_key=reference_cell_type_key, gene_map=gene_map)
    if not isinstance(query, CellData):
        query = read_cells(query, gene_map=gene_map, labelled=False)
    if query.n_cells == 0:
        raise InputError("The query has no cells: give a data set or bundle with at least one cell.")
    transfer = fit_transfer(reference, query.genes, use_counts=query.has_counts, n_hvg=n_hvg, n_pcs=n_pcs, seed=seed,
                            min_shared_genes=min_shared_genes, min_informative_fraction=min_informative_fraction,
                            progress=scaled(progress, 0.0, 0.3))
    return transfer.predict(query, k=k, threshold=threshold, progress=scaled(progress, 0.3, 1.0))
