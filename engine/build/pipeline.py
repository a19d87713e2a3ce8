"""``vcell build``: turn an input atlas into a bundle.

harmonise -> expression store -> embedding (PCA) -> FAISS index -> (clusters when the input
has no cell types) -> UMAP layout -> group summaries -> manifest; with ``--model`` a learned
encoder is then pretrained (or loaded) and its embedding becomes the default (engine.build.embed). Everything is written
into a temporary directory that is renamed to the bundle path only when every step has
succeeded, so a failure never leaves a half-written bundle. For streaming builds that
directory is ``<out>.partial/``, kept on failure with a checkpoint after each long step, so an
interrupted build continues with ``resume=True`` (``vcell build --resume``;
:mod:`engine.build.checkpoint`).

The first half (reading, normalising, gene statistics, PCA) runs in memory for small inputs
(:func:`prepare_in_memory`) and in row blocks for large ones (:mod:`engine.build.stream`,
chosen by :data:`engine.build.stream.STREAM_MIN_CELLS` or ``BuildOptions.stream``); both
produce the same bundle.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from engine.build.checkpoint import CHECKPOINT_DIR, BuildCheckpoint, resumable_build
from engine.build.embed import add_learned_embedding, check_model_seeds
from engine.build.prepare import BuildOptions, Prepared, prepare_in_memory
from engine.build.stream import STREAM_MIN_CELLS, count_cells, prepare_streaming
from engine.bundle.atlas import Atlas
from engine.bundle.manifest import (
    FORMAT,
    FORMAT_VERSION,
    Embeddings,
    GeneIds,
    Harmonisation,
    Hvg,
    IndexEntry,
    LayoutInfo,
    Manifest,
    Matrices,
    ModelInfo,
    Normalisation,
    Roles,
    gene_hash,
    provenance,
    write_manifest,
)
from engine.compare.pseudobulk import precompute_de
from engine.data.genes import is_ensembl
from engine.errors import InputError
from engine.evaluate.metrics import knn_label_agreement
from engine.fileio import atomic_dir
from engine.models.checkpoint import save_checkpoint
from engine.progress import Progress, report, scaled
from engine.space.cluster import leiden_clusters
from engine.space.index import build_index, load_index, save_index
from engine.space.layout import umap_layout


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
        skipping the steps it completed (:mod:`engine.build.checkpoint`). Without it, an existing
        partial directory is an error. In-memory builds (small inputs) ignore it: they are
        quick and never leave a partial directory.

    Returns
    -------
    pathlib.Path
        The bundle directory.

    Raises
    ------
    InputError
        ``out`` exists (without ``overwrite``); a partial directory exists without ``resume``, or
        was made from another input or with other options.
    """

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


def _finish_bundle(tmp: Path, prepared: Prepared, source, options: BuildOptions, command: str | None,
                   progress: Progress | None, overall: Progress | None, checkpoint=None) -> None:
    """Index, clusters, layout, store, summaries, tables and manifest: the second half of a build.

    With a ``checkpoint`` (:class:`engine.build.checkpoint.BuildCheckpoint`) the index,
    clusters, layout and store / summaries steps are recorded, and skipped when done before;
    DE and ``--model`` are redone from their start.
    """

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
    manifest = Manifest(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        n_cells=int(n),
        n_genes=int(len(genes)),
        gene_hash=gene_hash(list(genes.index)),
        genes=GeneIds(index="ensembl" if all(map(is_ensembl, genes.index)) else "symbol",
                      with_ensembl_id=int(genes["gene_id"].notna().sum()),
                      with_symbol=int(genes["gene_symbol"].notna().sum())),
        roles=Roles(**roles),
        harmonisation=Harmonisation.from_dict({**mapping, "cell_type": cell_type_source}),
        reference_condition=mapping.get("reference_condition"),
        matrices=Matrices.from_dict(prepared.matrix_notes),
        normalisation=Normalisation(target_sum=1e4, log1p=True),
        hvg=Hvg(n_top=int(hvg.sum()), flavor="seurat dispersion, 20 mean bins"),
        embedding=Embeddings(default="X_pca", available=("X_pca",)),
        model=ModelInfo(name="pca", n_components=model.n_components,
                        explained_variance=float(model.explained_variance_ratio.sum()),
                        fit_cells=int(prepared.n_fit), genes="highly_variable", seed=options.seed),
        index=IndexEntry.from_dict({"path": "index/X_pca.faiss", "embedding": "X_pca", **index_info}),
        layout=LayoutInfo(embedding="X_pca", **layout_params),
        quality=quality,
        provenance=provenance(str(source), command, prepared.generated),
    )
    write_manifest(tmp, manifest)
    if options.de or options.model:
        ckpt.keep_pca_bundle()
    if options.de and prepared.matrix_notes.get("counts") is not None:

        precompute_de(Atlas(tmp), progress=scaled(progress, 0.95, 0.995))
    if options.model:

        manifest = add_learned_embedding(tmp, manifest, options.model, epochs=options.epochs, seed=options.seed,
                                         n_seeds=options.model_seeds, n_landmarks=options.n_landmarks,
                                         progress=scaled(overall, 0.4, 0.995))
        write_manifest(tmp, manifest)


