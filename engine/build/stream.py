"""The streaming first half of ``vcell build``: input -> store, gene statistics, PCA embedding.

For atlases too large to hold in memory (DESIGN.md, "Scale"). The input's matrix stays on
disk and is read in row blocks twice:

1. counts -> log-normalised block -> :class:`~engine.data.hvg.GeneStats`, per-gene
   value counts, the SOMA store (both layers), and the rows of the PCA sample;
2. after the highly variable genes and the PCA fit: the embedding of every block into a
   memory-mapped ``obsm/X_pca.npy``, the gene-major copy (:class:`~engine.data.store.GeneMajorWriter`)
   and, when the input has cell types, the group summaries.

The result equals the in-memory path's (:func:`engine.build.pipeline.prepare_in_memory`); only
summaries of inputs without cell types (clustered later) need a third pass. Each pass and the
PCA fit are recorded in the build's checkpoint (:mod:`engine.build.checkpoint`), so that an
interrupted build resumed with ``--resume`` skips them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from engine.build.checkpoint import CHECKPOINT_DIR, PCA_MODEL, BuildCheckpoint
from engine.build.prepare import BLOCK, Prepared, clean_obs, gene_summary, gene_table_for, harmonise, pca_sample
from engine.bundle.summaries import Summaries, SummaryAccumulator
from engine.data.blocks import iter_expression, open_rows, plan_matrices
from engine.data.hvg import GeneStats
from engine.data.store import GeneMajorWriter, StoreWriter, update_store_axes
from engine.models.checkpoint import load_checkpoint, save_checkpoint
from engine.models.pca import PCAModel, fit_pca
from engine.progress import Progress, report

STREAM_MIN_CELLS = 200_000
"""Inputs with more cells than this are built by streaming (unless ``BuildOptions.stream`` says)."""


def count_cells(source: str | os.PathLike) -> int:
    """Number of cells of ``source``, reading its obs only."""

    rows = open_rows(source)
    try:
        return rows.n_obs
    finally:
        rows.close()


def prepare_streaming(source: str | os.PathLike, options, tmp: Path, progress: Progress | None = None,
                      checkpoint=None):
    """Read ``source`` in blocks into ``tmp`` (store, ``obsm/X_pca.npy``); see the module docstring.

    Parameters
    ----------
    source
        Input atlas.
    options
        :class:`engine.build.pipeline.BuildOptions`.
    tmp
        The bundle directory being written.
    progress
        Progress callback (``0..1`` over the two passes).
    checkpoint
        :class:`engine.build.checkpoint.BuildCheckpoint` of a resumable build: the passes and
        the PCA fit are recorded there, and skipped when a resumed build had done them.

    Returns
    -------
    engine.build.pipeline.Prepared
    """

    ckpt = checkpoint if checkpoint is not None else BuildCheckpoint.disabled()
    rows = open_rows(source)
    try:
        generated = rows.adata.uns.get("vcell_generated")
        adata, mapping = harmonise(rows.adata, options)
        n, n_genes = adata.n_obs, adata.n_vars
        ckpt.check_shape(n, n_genes)
        plan = plan_matrices(rows)
        obs = clean_obs(adata.obs)
        written_columns = list(obs.columns)  # obs gains cell_type later when the input has none
        sample, sample_rows = pca_sample(n, options), None
        if ckpt.done("pass1") is not None:
            ckpt.skipped(progress, 0.5, "pass 1/2")
            saved = ckpt.load_arrays("pass1")
            nnz, stats = saved.pop("nnz"), GeneStats.from_state(saved)
        else:
            ckpt.begin("pass1", "store")
            placeholder = gene_table_for(adata.var, options).assign(  # the columns gene_summary adds, in order
                highly_variable=False, mean=np.float32(0), frac_expressing=np.float32(0))
            stats, nnz, sample_rows = _pass1(plan, adata.obs_names, obs, placeholder, sample, tmp, BLOCK, progress)
            ckpt.save_arrays("pass1", {"nnz": nnz, **stats.state()})
            ckpt.save_sparse("pca_sample", sample_rows)
            ckpt.complete("pass1", n_cells=n, n_genes=n_genes)
        genes = gene_summary(adata.var, stats, options)
        hvg_idx = np.flatnonzero(genes["highly_variable"].to_numpy())
        if ckpt.done("pca") is not None:
            ckpt.skipped(progress, 0.55, "fitting PCA")
            model = PCAModel.from_checkpoint(load_checkpoint(tmp / PCA_MODEL))
        else:
            report(progress, 0.5, "fitting PCA")
            ckpt.begin("pca", PCA_MODEL)
            if sample_rows is None:  # pass 1 was done by the interrupted build
                sample_rows = ckpt.load_sparse("pca_sample")
            model = fit_pca(sample_rows[:, hvg_idx], list(genes.index[hvg_idx]),
                            n_components=options.n_pcs, seed=options.seed)
            del sample_rows
            if ckpt.root is not None:
                save_checkpoint(tmp / PCA_MODEL, model.to_checkpoint())
            ckpt.complete("pca")
        with_summaries = "cell_type" in obs
        if ckpt.done("pass2") is not None:
            ckpt.skipped(progress, 1.0, "pass 2/2")
            summaries = Summaries.load(ckpt.dir / "summaries") if with_summaries else None
        else:
            ckpt.begin("pass2", "obsm/X_pca.npy", "store/by_gene", f"{CHECKPOINT_DIR}/summaries")
            summaries = _pass2(plan, adata.obs_names, obs if with_summaries else None, model, hvg_idx, nnz, tmp,
                               BLOCK, progress)
            if summaries is not None and ckpt.root is not None:
                summaries.save(ckpt.dir / "summaries")
            ckpt.complete("pass2")
    finally:
        rows.close()

    def summarise(final_obs: pd.DataFrame):
        if summaries is not None:
            return summaries
        return _summarise_again(source, final_obs, n_genes, plan.is_counts, BLOCK)

    def finish_store(final_obs: pd.DataFrame) -> None:
        # the store was created before the gene statistics (and any clusters) were known
        update_store_axes(tmp / "store", final_obs if list(final_obs.columns) != written_columns else None, genes)

    return Prepared(obs=obs, genes=genes, mapping=mapping, generated=generated, matrix_notes=plan.notes,
                    model=model, n_fit=len(sample), embedding=np.load(tmp / "obsm" / "X_pca.npy", mmap_mode="r"),
                    summarise=summarise, finish_store=finish_store)


def _pass1(plan, obs_names, obs: pd.DataFrame, var: pd.DataFrame, sample: np.ndarray, tmp: Path, block: int,
           progress: Progress | None):
    """Pass 1: the SOMA store, gene statistics, per-gene value counts and the PCA sample's rows."""

    n, n_genes = len(obs), len(var)
    stats, nnz, sample_blocks = GeneStats(n_genes), np.zeros(n_genes, dtype=np.int64), []
    store = StoreWriter(tmp / "store", obs, var, with_counts=plan.is_counts)
    try:
        for start, lognorm, counts in iter_expression(plan, obs_names, block):
            report(progress, 0.5 * start / n, f"pass 1/2: normalising and storing ({start:,}/{n:,} cells)")
            stats.update(lognorm)
            nnz += np.bincount(lognorm.indices, minlength=n_genes)
            store.write(start, {"lognorm": lognorm} | ({"counts": counts} if counts is not None else {}))
            stop = start + lognorm.shape[0]
            sample_blocks.append(lognorm[sample[(sample >= start) & (sample < stop)] - start])
    finally:
        store.close()
    return stats, nnz, sp.vstack(sample_blocks, format="csr")


def _pass2(plan, obs_names, obs: pd.DataFrame | None, model, hvg_idx: np.ndarray, nnz: np.ndarray, tmp: Path,
           block: int, progress: Progress | None):
    """Pass 2: the PCA embedding, the gene-major copy and (given ``obs`` with cell types) the summaries."""

    n = len(obs_names)
    (tmp / "obsm").mkdir(exist_ok=True)
    embedding = np.lib.format.open_memmap(tmp / "obsm" / "X_pca.npy", mode="w+", dtype=np.float32,
                                          shape=(n, model.n_components))
    by_gene = GeneMajorWriter(tmp / "store" / "by_gene", nnz, n)
    summaries = SummaryAccumulator(obs, len(nnz), with_counts=plan.is_counts) if obs is not None else None
    for start, lognorm, counts in iter_expression(plan, obs_names, block):
        report(progress, 0.55 + 0.45 * start / n, f"pass 2/2: embedding ({start:,}/{n:,} cells)")
        embedding[start:start + lognorm.shape[0]] = model.transform(lognorm[:, hvg_idx])
        by_gene.write(start, lognorm)
        if summaries is not None:
            _add_summaries(summaries, start, lognorm, counts)
    by_gene.close()
    embedding.flush()
    del embedding
    return summaries.result() if summaries is not None else None


def _summarise_again(source, final_obs: pd.DataFrame, n_genes: int, with_counts: bool, block: int):
    """The summaries in one more pass (the cell types were only computed after pass 2: clusters)."""

    again = open_rows(source)
    try:
        accumulator = SummaryAccumulator(final_obs, n_genes, with_counts=with_counts)
        for start, lognorm, counts in iter_expression(plan_matrices(again), final_obs.index, block):
            _add_summaries(accumulator, start, lognorm, counts)
        return accumulator.result()
    finally:
        again.close()


def _add_summaries(accumulator, start: int, lognorm: sp.csr_matrix, counts: sp.csr_matrix | None) -> None:
    accumulator.add_lognorm(start, lognorm)
    if counts is not None:
        accumulator.add_counts(start, counts)
