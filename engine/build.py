"""``vcell build``: turn an input atlas into a bundle.

harmonise -> expression store -> embedding (PCA) -> FAISS index -> (clusters when the input
has no cell types) -> UMAP layout -> group summaries -> manifest; with ``--model`` a learned
encoder is then pretrained (or loaded) and its embedding becomes the default (engine.embed). Everything is written
into a temporary directory that is renamed to the bundle path only when every step has
succeeded, so a failure never leaves a half-written bundle. For streaming builds that
directory is ``<out>.partial/``, kept on failure with a checkpoint after each long step, so an
interrupted build continues with ``resume=True`` (``vcell build --resume``;
:mod:`engine.build_checkpoint`).

The first half (reading, normalising, gene statistics, PCA) runs in memory for small inputs
(:func:`prepare_in_memory`) and in row blocks for large ones (:mod:`engine.build_stream`,
chosen by :data:`engine.build_stream.STREAM_MIN_CELLS` or ``BuildOptions.stream``); both
produce the same bundle.
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

from engine.atlas import FORMAT, FORMAT_VERSION, gene_hash, provenance
from engine.embed import check_model_seeds
from engine.errors import InputError
from engine.fileio import atomic_dir, write_json, write_npy
from engine.data.normalise import iter_row_blocks
from engine.progress import Progress, report, scaled

BLOCK = 20_000


@dataclass
class BuildOptions:
    """Options of :func:`build_atlas` (CLI flags of the same names)."""

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
    model_seeds: int = 1  # masked autoencoders trained with seeds seed..seed+N-1 (mae / gp-mae; engine.embed)
    de: bool = False  # precompute pseudobulk DE into summaries/de/ (engine.pseudobulk; roughly doubles build time)
    stream: bool | None = None  # read the input in row blocks (engine.build_stream); None: when it is large


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
    from engine.data.normalise import check_counts, choose_counts, choose_lognorm, normalise_log1p

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


def build_atlas(source: str | os.PathLike, out: str | os.PathLike, options: BuildOptions | None = None, *,
                overwrite: bool = False, command: str | None = None,
                progress: Progress | None = None, resume: bool = False) -> Path:
    """Build an atlas bundle from ``source`` (.h5ad, SOMA experiment, generator output).

    Parameters
    ----------
    source
        Input atlas path or URI.
    out
        Bundle directory to write (conventionally ``NAME.vcell``).
    options
        Harmonisation keys and method parameters.
    overwrite
        Replace an existing bundle at ``out``.
    command
        The command line to record in the manifest.
    progress
        Progress callback.
    resume
        Continue an interrupted streaming build from its partial directory ``<out>.partial/``,
        skipping the steps it completed (:mod:`engine.build_checkpoint`). Without it, an existing
        partial directory is an error. In-memory builds (small inputs) ignore it: they are
        quick and never leave a partial directory.

    Returns
    -------
    The bundle path.

    Raises
    ------
    InputError
        ``out`` exists (without ``overwrite``); a partial directory exists without ``resume``, or
        was made from another input or with other options.
    """
    from engine.build_checkpoint import resumable_build
    from engine.build_stream import STREAM_MIN_CELLS, count_cells, prepare_streaming

    options = options or BuildOptions()
    check_model_seeds(options.model, options.model_seeds)  # before any work
    overall = progress  # with --model, pretraining dominates: the PCA bundle gets the first 40% of the bar
    progress = scaled(overall, 0.0, 0.4) if options.model else overall
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists: choose another --out or pass --overwrite.")
    report(progress, 0.0, "reading input")
    stream = options.stream if options.stream is not None else count_cells(source) > STREAM_MIN_CELLS
    if stream:
        with resumable_build(out, source, options, overwrite=overwrite, resume=resume, progress=progress) as ckpt:
            prepared = prepare_streaming(source, options, ckpt.root, scaled(progress, 0.0, 0.3), checkpoint=ckpt)
            _finish_bundle(ckpt.root, prepared, source, options, command, progress, overall, ckpt)
    else:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            prepared = prepare_in_memory(source, options, tmp, scaled(progress, 0.0, 0.3))
            _finish_bundle(tmp, prepared, source, options, command, progress, overall)
    report(overall, 1.0, f"bundle written to {out}")
    return out


def prepare_in_memory(source: str | os.PathLike, options: BuildOptions, tmp: Path,
                      progress: Progress | None = None) -> Prepared:
    """The first half of a build with the whole matrix in memory (small atlases).

    Reads and harmonises ``source``, normalises, selects genes, fits PCA and writes
    ``obsm/X_pca.npy`` into ``tmp``; the store is written by ``finish_store``.
    """
    from engine.data.normalise import GeneStats
    from engine.data.read import read_source
    from engine.data.store import write_store
    from engine.models.pca import fit_pca
    from engine.summaries import compute_summaries

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
    from engine.data.schema import harmonise_obs

    adata, mapping = harmonise_obs(adata, cell_type_key=options.cell_type_key,
                                   condition_key=options.condition_key, donor_key=options.donor_key,
                                   batch_key=options.batch_key, reference_condition=options.reference_condition)
    if adata.n_obs < 10:
        raise InputError(f"The input has {adata.n_obs} cells; an atlas needs at least 10.")
    return adata, mapping


def gene_table_for(var: pd.DataFrame, options: BuildOptions) -> pd.DataFrame:
    """The bundle's gene table from the input's var (ids, symbols; no statistics yet)."""
    from engine.data.genes import gene_table, read_gene_map

    genes = gene_table(var, read_gene_map(options.gene_map) if options.gene_map else None)
    genes.index = genes.index.astype(str)
    return genes


def gene_summary(var: pd.DataFrame, stats, options: BuildOptions) -> pd.DataFrame:
    """The gene table with ``highly_variable``, ``mean`` and ``frac_expressing`` from ``stats``."""
    from engine.data.normalise import select_hvg

    genes = gene_table_for(var, options)
    genes["highly_variable"] = select_hvg(stats, n_top=options.n_hvg)
    genes["mean"] = stats.mean.astype(np.float32)
    genes["frac_expressing"] = (stats.n_expressing / max(stats.n_cells, 1)).astype(np.float32)
    return genes


def pca_sample(n: int, options: BuildOptions) -> np.ndarray:
    """The sorted, reproducible sample of cells PCA is fitted on."""
    rng = np.random.default_rng(options.seed)
    return np.sort(rng.choice(n, min(n, options.pca_sample), replace=False))


def _finish_bundle(tmp: Path, prepared: Prepared, source, options: BuildOptions, command: str | None,
                   progress: Progress | None, overall: Progress | None, checkpoint=None) -> None:
    """Index, clusters, layout, store, summaries, tables and manifest: the second half of a build.

    With a ``checkpoint`` (:class:`engine.build_checkpoint.BuildCheckpoint`) the index,
    clusters, layout and store / summaries steps are recorded, and skipped when done before;
    DE and ``--model`` are redone from their start.
    """
    from engine.build_checkpoint import CHECKPOINT_DIR, BuildCheckpoint
    from engine.cluster import leiden_clusters
    from engine.data.genes import is_ensembl
    from engine.evaluate import knn_label_agreement
    from engine.index import build_index, load_index, save_index
    from engine.layout import umap_layout
    from engine.models.checkpoint import save_checkpoint

    ckpt = checkpoint if checkpoint is not None else BuildCheckpoint.disabled()
    ckpt.restore_pca_bundle()  # an interrupted DE / --model step is redone from the PCA bundle
    obs, genes, model, embedding = prepared.obs, prepared.genes, prepared.model, prepared.embedding
    mapping, hvg, n = prepared.mapping, genes["highly_variable"].to_numpy(), len(embedding)
    roles = {"cell_type": "cell_type" if "cell_type" in obs else None,
             "condition": "disease" if "disease" in obs else None,
             "donor": "donor_id" if "donor_id" in obs else None,
             "batch": "batch" if "batch" in obs else None}
    index_path = tmp / "index" / "X_pca.faiss"
    if (done := ckpt.done("index")) is not None:
        ckpt.skipped(progress, 0.4, "building FAISS index")
        index_info, quality = done["index_info"], done["quality"]
        index = load_index(index_path, nprobe=index_info.get("nprobe"))
    else:
        report(progress, 0.3, "building FAISS index")
        ckpt.begin("index", "index")
        index, info = build_index(embedding, seed=options.seed)
        index_info = info.to_dict()
        index_path.parent.mkdir()
        save_index(index, index_path)
        quality = {"pca_explained_variance": float(model.explained_variance_ratio.sum()),
                   "index_recall_at_10": info.recall_at_10 if info.recall_at_10 is not None else 1.0}
        if roles["cell_type"] is not None:
            quality.update(knn_label_agreement(index, embedding, obs["cell_type"], seed=options.seed))
        ckpt.complete("index", index_info=index_info, quality=quality)
    cell_type_source = mapping.get("cell_type", {}) or {}
    if roles["cell_type"] is None:
        clusters = f"{CHECKPOINT_DIR}/clusters.parquet"
        if ckpt.done("clusters") is not None:
            ckpt.skipped(progress, 0.45, "clustering")
            obs["cell_type"] = pd.read_parquet(tmp / clusters)["cell_type"].array  # categorical, as computed
        else:
            report(progress, 0.4, "clustering (the input has no cell types)")
            obs["cell_type"] = leiden_clusters(index, embedding, seed=options.seed)
            if ckpt.root is not None:
                obs[["cell_type"]].to_parquet(tmp / clusters)
            ckpt.complete("clusters")
        roles["cell_type"] = "cell_type"
        cell_type_source = {"source": None, "method": "leiden clusters on the PCA kNN graph",
                            "note": "no cell-type labels in the input; clusters stand in until label transfer"}

    if (done := ckpt.done("layout")) is not None:
        ckpt.skipped(progress, 0.75, "computing the UMAP layout")
        layout_params = done["params"]
    else:
        report(progress, 0.45, "computing the UMAP layout")
        ckpt.begin("layout", "obsm/X_umap.npy")
        coords = np.lib.format.open_memmap(tmp / "obsm" / "X_umap.npy", mode="w+", dtype=np.float32, shape=(n, 2))
        coords, layout_params = umap_layout(embedding, n_landmarks=options.n_landmarks, seed=options.seed,
                                            progress=scaled(progress, 0.45, 0.75), out=coords)
        coords.flush()
        del coords
        ckpt.complete("layout", params=layout_params)

    if ckpt.done("summaries") is not None:
        ckpt.skipped(progress, 0.9, "writing the expression store and summarising groups")
    else:
        report(progress, 0.75, "writing the expression store")
        prepared.finish_store(obs)
        report(progress, 0.85, "summarising groups")
        ckpt.begin("summaries", "summaries")
        prepared.summarise(obs).save(tmp / "summaries")
        ckpt.complete("summaries")
    obs.to_parquet(tmp / "cells.parquet")
    genes.to_parquet(tmp / "genes.parquet")
    save_checkpoint(tmp / "model", model.to_checkpoint())
    report(progress, 0.95, "writing the manifest")
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "n_cells": int(n),
        "n_genes": int(len(genes)),
        "gene_hash": gene_hash(list(genes.index)),
        "genes": {"index": "ensembl" if all(map(is_ensembl, genes.index)) else "symbol",
                  "with_ensembl_id": int(genes["gene_id"].notna().sum()),
                  "with_symbol": int(genes["gene_symbol"].notna().sum())},
        "roles": roles,
        "harmonisation": {**mapping, "cell_type": cell_type_source},
        "reference_condition": mapping.get("reference_condition"),
        "matrices": prepared.matrix_notes,
        "normalisation": {"target_sum": 1e4, "log1p": True},
        "hvg": {"n_top": int(hvg.sum()), "flavor": "seurat dispersion, 20 mean bins"},
        "embedding": {"default": "X_pca", "available": ["X_pca"]},
        "model": {"name": "pca", "n_components": model.n_components,
                  "explained_variance": float(model.explained_variance_ratio.sum()),
                  "fit_cells": int(prepared.n_fit), "genes": "highly_variable", "seed": options.seed},
        "index": {"path": "index/X_pca.faiss", "embedding": "X_pca", **index_info},
        "layout": {"embedding": "X_pca", **layout_params},
        "quality": quality,
        "provenance": provenance(str(source), command, prepared.generated),
    }
    write_json(tmp / "manifest.json", manifest)
    if options.de or options.model:
        ckpt.keep_pca_bundle()
    if options.de and prepared.matrix_notes.get("counts") is not None:
        from engine.atlas import Atlas
        from engine.pseudobulk import precompute_de

        precompute_de(Atlas(tmp), progress=scaled(progress, 0.95, 0.995))
    if options.model:
        from engine.embed import add_learned_embedding

        manifest = add_learned_embedding(tmp, manifest, options.model, epochs=options.epochs, seed=options.seed,
                                         n_seeds=options.model_seeds, n_landmarks=options.n_landmarks,
                                         progress=scaled(overall, 0.4, 0.995))
        write_json(tmp / "manifest.json", manifest)


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
