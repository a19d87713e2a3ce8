"""The first half of ``vcell build`` in memory, and the pieces both halves share.

Options (:class:`BuildOptions`), what the first half hands to the second (:class:`Prepared`),
harmonisation, gene tables and statistics, the PCA sample. Small inputs are prepared here
with the whole matrix in memory (:func:`prepare_in_memory`); large ones in row blocks
(:mod:`engine.build.stream`); both produce the same bundle.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from engine.bundle.summaries import compute_summaries
from engine.data.genes import gene_table, read_gene_map
from engine.data.hvg import GeneStats, select_hvg
from engine.data.normalise import (
    check_counts,
    choose_counts,
    choose_lognorm,
    iter_row_blocks,
    normalise_log1p,
)
from engine.data.read import read_source
from engine.data.schema import harmonise_obs
from engine.data.store import write_store
from engine.errors import InputError
from engine.fileio import write_npy
from engine.models.pca import fit_pca
from engine.progress import Progress, report

BLOCK = 20_000


@dataclass
class BuildOptions:
    """Options of :func:`~engine.build.pipeline.build_atlas` (CLI flags of the same names).

    Parameters
    ----------
    cell_type_key, condition_key, donor_key, batch_key
        obs columns holding cell types, the condition / disease, donors (or samples) and batches;
        guessed when ``None``.
    reference_condition
        The healthy / control condition value (e.g. ``"Healthy"``); guessed when ``None``.
    gene_map
        TSV/CSV of Ensembl ID and gene symbol, to fill the missing side.
    n_hvg, n_pcs
        Highly variable genes for the embedding, and PCA components.
    pca_sample
        Cells PCA is fitted on (a seeded sample; all cells when fewer).
    n_landmarks
        Landmarks of the UMAP layout; the other cells are placed by their neighbours.
    model
        Learned embedding: ``mae``, ``gp-mae``, ``byol``, ``barlow`` or a model checkpoint directory;
        ``None``: PCA only.
    epochs
        Pretraining epochs with a method as ``model``.
    seed
        Seed of every random step.
    model_seeds
        Masked autoencoders trained with seeds ``seed .. seed + N - 1`` (``mae`` / ``gp-mae``;
        :mod:`engine.build.embed`), for the virtual cell's model-seed uncertainty.
    de
        Precompute pseudobulk DE into ``summaries/de/`` (:mod:`engine.compare.pseudobulk`; roughly
        doubles build time).
    stream
        Read the input in row blocks (:mod:`engine.build.stream`); ``None``: when it has more than
        :data:`~engine.build.stream.STREAM_MIN_CELLS` cells.
    """

    cell_type_key: str | None = None
    condition_key: str | None = None
    donor_key: str | None = None
    batch_key: str | None = None
    reference_condition: str | None = None
    gene_map: str | None = None
    n_hvg: int = 2000
    n_pcs: int = 50
    pca_sample: int = 50_000
    n_landmarks: int = 15_000
    model: str | None = None
    epochs: int = 10
    seed: int = 0
    model_seeds: int = 1
    de: bool = False
    stream: bool | None = None


@dataclass
class Prepared:
    """What the first half of a build (in memory or streaming) hands to the second.

    ``embedding`` is the PCA embedding (already written as ``obsm/X_pca.npy``; memory-mapped
    when streamed); ``summarise(obs)`` and ``finish_store(obs)`` complete the summaries and
    the expression store once the final cell table (with any clusters) is known.
    """

    obs: pd.DataFrame
    genes: pd.DataFrame
    mapping: dict
    generated: Any
    matrix_notes: dict
    model: Any
    n_fit: int
    embedding: np.ndarray
    summarise: Callable[[pd.DataFrame], Any]
    finish_store: Callable[[pd.DataFrame], None]


def prepare_matrices(adata) -> tuple[sp.csr_matrix, sp.csr_matrix | None, dict]:
    """Find raw counts (or log-normalised values) and return ``(lognorm, counts, notes)``."""

    counts, counts_source = choose_counts(adata)
    if counts is not None:
        check_counts(counts)
        lognorm = sp.vstack([normalise_log1p(b) for _, b in iter_row_blocks(counts, BLOCK)], format="csr")
        notes = {"counts": counts_source, "lognorm": "log1p(counts / total * 1e4)"}
    else:
        lognorm, lognorm_source = choose_lognorm(adata)
        notes = {"counts": None, "lognorm": lognorm_source,
                 "warning": "No raw counts in the input: pseudobulk and count models are unavailable."}
    lognorm = sp.csr_matrix(lognorm, dtype=np.float32)
    if not np.isfinite(lognorm.data).all():
        raise InputError("The expression matrix contains NaN or infinite values: fix the input file.")
    return lognorm, counts, notes


def prepare_in_memory(source: str | os.PathLike, options: BuildOptions, tmp: Path,
                      progress: Progress | None = None) -> Prepared:
    """The first half of a build with the whole matrix in memory (small atlases).

    Reads and harmonises ``source``, normalises, selects genes, fits PCA and writes
    ``obsm/X_pca.npy`` into ``tmp``; the store is written by ``finish_store``.
    """

    adata = read_source(source)
    generated = adata.uns.get("vcell_generated")
    adata, mapping = harmonise(adata, options)
    report(progress, 0.15, "normalising")
    lognorm, counts, matrix_notes = prepare_matrices(adata)
    stats = GeneStats()
    for _, block in iter_row_blocks(lognorm, BLOCK):
        stats.update(block)
    genes = gene_summary(adata.var, stats, options)
    obs = clean_obs(adata.obs)
    del adata

    report(progress, 0.5, "fitting PCA")
    hvg_idx = np.flatnonzero(genes["highly_variable"].to_numpy())
    sample = pca_sample(lognorm.shape[0], options)
    model = fit_pca(lognorm[sample][:, hvg_idx], list(genes.index[hvg_idx]), n_components=options.n_pcs,
                    seed=options.seed)
    embedding = np.vstack([model.transform(b[:, hvg_idx]) for _, b in iter_row_blocks(lognorm, BLOCK)])
    (tmp / "obsm").mkdir()
    write_npy(tmp / "obsm" / "X_pca.npy", embedding.astype(np.float32))

    def summarise(final_obs: pd.DataFrame):
        return compute_summaries(final_obs, iter_row_blocks(lognorm, BLOCK), lognorm.shape[1],
                                 iter_row_blocks(counts, BLOCK) if counts is not None else None)

    def finish_store(final_obs: pd.DataFrame) -> None:
        write_store(tmp / "store", final_obs, genes, lognorm, counts)

    return Prepared(obs=obs, genes=genes, mapping=mapping, generated=generated, matrix_notes=matrix_notes,
                    model=model, n_fit=len(sample), embedding=embedding, summarise=summarise,
                    finish_store=finish_store)


def harmonise(adata, options: BuildOptions):
    """:func:`engine.data.schema.harmonise_obs` with the options' keys; at least 10 cells."""

    adata, mapping = harmonise_obs(adata, cell_type_key=options.cell_type_key,
                                   condition_key=options.condition_key, donor_key=options.donor_key,
                                   batch_key=options.batch_key, reference_condition=options.reference_condition)
    if adata.n_obs < 10:
        raise InputError(f"The input has {adata.n_obs} cells; an atlas needs at least 10.")
    return adata, mapping


def gene_table_for(var: pd.DataFrame, options: BuildOptions) -> pd.DataFrame:
    """The bundle's gene table from the input's var (ids, symbols; no statistics yet)."""

    genes = gene_table(var, read_gene_map(options.gene_map) if options.gene_map else None)
    genes.index = genes.index.astype(str)
    return genes


def gene_summary(var: pd.DataFrame, stats, options: BuildOptions) -> pd.DataFrame:
    """The gene table with ``highly_variable``, ``mean`` and ``frac_expressing`` from ``stats``."""

    genes = gene_table_for(var, options)
    genes["highly_variable"] = select_hvg(stats, n_top=options.n_hvg)
    genes["mean"] = stats.mean.astype(np.float32)
    genes["frac_expressing"] = (stats.n_expressing / max(stats.n_cells, 1)).astype(np.float32)
    return genes


def pca_sample(n: int, options: BuildOptions) -> np.ndarray:
    """The sorted, reproducible sample of cells PCA is fitted on."""
    rng = np.random.default_rng(options.seed)
    return np.sort(rng.choice(n, min(n, options.pca_sample), replace=False))


def clean_obs(obs: pd.DataFrame) -> pd.DataFrame:
    """A parquet-safe copy: string index, text columns as categoricals of str."""
    obs = obs.copy()
    obs.index = obs.index.astype(str)
    for column in obs.columns:
        values = obs[column]
        if isinstance(values.dtype, pd.CategoricalDtype):
            obs[column] = values.cat.rename_categories([str(c) for c in values.cat.categories]) \
                if not all(isinstance(c, str) for c in values.cat.categories) else values
        elif values.dtype == object or pd.api.types.is_string_dtype(values) or pd.api.types.is_bool_dtype(values):
            obs[column] = pd.Categorical(values.astype(str))
    return obs
