"""The streaming first half of ``vcell build``: input -> store, gene statistics, PCA embedding.

For atlases too large to hold in memory (DESIGN.md, "Scale"). The input's matrix stays on
disk and is read in row blocks twice:

1. counts -> log-normalised block -> :class:`~engine.data.normalise.GeneStats`, per-gene
   value counts, the SOMA store (both layers), and the rows of the PCA sample;
2. after the highly variable genes and the PCA fit: the embedding of every block into a
   memory-mapped ``obsm/X_pca.npy``, the gene-major copy (:class:`~engine.data.store.GeneMajorWriter`)
   and, when the input has cell types, the group summaries.

The result equals the in-memory path's (:func:`engine.build.prepare_in_memory`); only
summaries of inputs without cell types (clustered later) need a third pass.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from engine.progress import Progress, report

STREAM_MIN_CELLS = 200_000
"""Inputs with more cells than this are built by streaming (unless ``BuildOptions.stream`` says)."""


def count_cells(source: str | os.PathLike) -> int:
    """Number of cells of ``source``, reading its obs only."""
    from engine.data.blocks import open_rows

    rows = open_rows(source)
    try:
        return rows.n_obs
    finally:
        rows.close()


def prepare_streaming(source: str | os.PathLike, options, tmp: Path, progress: Progress | None = None):
    """Read ``source`` in blocks into ``tmp`` (store, ``obsm/X_pca.npy``); see the module docstring.

    Parameters
    ----------
    source
        Input atlas.
    options
        :class:`engine.build.BuildOptions`.
    tmp
        The bundle directory being written.
    progress
        Progress callback (``0..1`` over the two passes).

    Returns
    -------
    engine.build.Prepared
    """
    from engine.build import BLOCK, Prepared, clean_obs, gene_summary, gene_table_for, harmonise, pca_sample
    from engine.data.blocks import iter_expression, open_rows, plan_matrices
    from engine.data.normalise import GeneStats
    from engine.data.store import GeneMajorWriter, StoreWriter
    from engine.models.pca import fit_pca
    from engine.summaries import SummaryAccumulator

    rows = open_rows(source)
    try:
        generated = rows.adata.uns.get("vcell_generated")
        adata, mapping = harmonise(rows.adata, options)
        n, n_genes = adata.n_obs, adata.n_vars
        plan = plan_matrices(rows)
        obs = clean_obs(adata.obs)
        written_columns = list(obs.columns)  # obs gains cell_type later when the input has none
        stats, nnz = GeneStats(n_genes), np.zeros(n_genes, dtype=np.int64)
        sample = pca_sample(n, options)
        sample_blocks = []
        placeholder = gene_table_for(adata.var, options).assign(  # the columns gene_summary adds, in order
            highly_variable=False, mean=np.float32(0), frac_expressing=np.float32(0))
        store = StoreWriter(tmp / "store", obs, placeholder, with_counts=plan.is_counts)
        try:
            for start, lognorm, counts in iter_expression(plan, adata.obs_names, BLOCK):
                report(progress, 0.5 * start / n, f"pass 1/2: normalising and storing ({start:,}/{n:,} cells)")
                stats.update(lognorm)
                nnz += np.bincount(lognorm.indices, minlength=n_genes)
                store.write(start, {"lognorm": lognorm} | ({"counts": counts} if counts is not None else {}))
                stop = start + lognorm.shape[0]
                sample_blocks.append(lognorm[sample[(sample >= start) & (sample < stop)] - start])
            genes = gene_summary(adata.var, stats, options)
            hvg_idx = np.flatnonzero(genes["highly_variable"].to_numpy())
            report(progress, 0.5, "fitting PCA")
            model = fit_pca(sp.vstack(sample_blocks, format="csr")[:, hvg_idx], list(genes.index[hvg_idx]),
                            n_components=options.n_pcs, seed=options.seed)
            del sample_blocks
            (tmp / "obsm").mkdir()
            embedding = np.lib.format.open_memmap(tmp / "obsm" / "X_pca.npy", mode="w+", dtype=np.float32,
                                                  shape=(n, model.n_components))
            by_gene = GeneMajorWriter(tmp / "store" / "by_gene", nnz, n)
            summaries = SummaryAccumulator(obs, n_genes, with_counts=plan.is_counts) if "cell_type" in obs else None
            for start, lognorm, counts in iter_expression(plan, adata.obs_names, BLOCK):
                report(progress, 0.55 + 0.45 * start / n, f"pass 2/2: embedding ({start:,}/{n:,} cells)")
                embedding[start:start + lognorm.shape[0]] = model.transform(lognorm[:, hvg_idx])
                by_gene.write(start, lognorm)
                if summaries is not None:
                    _add_summaries(summaries, start, lognorm, counts)
            by_gene.close()
            embedding.flush()
        except BaseException:
            store.close()
            raise
    finally:
        rows.close()

    def summarise(final_obs: pd.DataFrame):
        if summaries is not None:
            return summaries.result()
        again = open_rows(source)  # the cell types were only now computed (clusters): one more pass
        try:
            accumulator = SummaryAccumulator(final_obs, n_genes, with_counts=plan.is_counts)
            for start, lognorm, counts in iter_expression(plan_matrices(again), final_obs.index, BLOCK):
                _add_summaries(accumulator, start, lognorm, counts)
            return accumulator.result()
        finally:
            again.close()

    def finish_store(final_obs: pd.DataFrame) -> None:
        try:  # the store was created before the gene statistics (and any clusters) were known
            store.update_axes(final_obs if list(final_obs.columns) != written_columns else None, genes)
        finally:
            store.close()

    return Prepared(obs=obs, genes=genes, mapping=mapping, generated=generated, matrix_notes=plan.notes,
                    model=model, n_fit=len(sample), embedding=np.load(tmp / "obsm" / "X_pca.npy", mmap_mode="r"),
                    summarise=summarise, finish_store=finish_store)


def _add_summaries(accumulator, start: int, lognorm: sp.csr_matrix, counts: sp.csr_matrix | None) -> None:
    accumulator.add_lognorm(start, lognorm)
    if counts is not None:
        accumulator.add_counts(start, counts)
