"""``vcell annotate``: rewrite a bundle with cell types transferred from a labelled reference.

The labels come from :mod:`engine.annotate.label_transfer`. The new bundle version is built in a temporary
sibling directory and swapped in with renames (:func:`engine.fileio.atomic_dir`), so a crash never
leaves a half-written bundle. Parts that do not depend on cell types (the expression store,
embeddings, index, model, gene table, ...) are hard-linked from the old version (copied where hard
links are impossible), not recomputed; ``cells.parquet``, ``summaries/`` and ``manifest.json`` are
written afresh. Parts computed from the old cell types (cached DE results in ``summaries/de/``, a
stored ``evaluation/``) are dropped, and the manifest says so.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from engine.annotate.label_transfer import DEFAULT_K, DEFAULT_THRESHOLD, TransferResult, read_cells, transfer_labels
from engine.bundle.atlas import Atlas
from engine.bundle.manifest import ColumnSource, Step, write_manifest
from engine.bundle.summaries import compute_summaries
from engine.errors import InputError
from engine.evaluate.metrics import knn_label_agreement
from engine.fileio import atomic_dir
from engine.progress import Progress, report, scaled

REWRITTEN = ("manifest.json", "cells.parquet", "summaries")
"""Parts written afresh for the new cell types."""
STALE = ("evaluation",)
"""Parts computed from the old cell types, dropped from the new version."""
CONFIDENCE_COLUMN = "cell_type_confidence"


def annotate_bundle(bundle: str | os.PathLike, reference, *, out: str | os.PathLike | None = None,
                    k: int = DEFAULT_K, threshold: float = DEFAULT_THRESHOLD,
                    reference_cell_type_key: str | None = None, gene_map: str | os.PathLike | None = None,
                    overwrite: bool = False, command: str | None = None,
                    progress: Progress | None = None) -> TransferResult:
    """Annotate a bundle's cells from a labelled reference and write the annotated bundle.

    Parameters
    ----------
    bundle
        The bundle to annotate (e.g. one whose cell types are Leiden clusters).
    reference
        A labelled bundle, an ``.h5ad`` (or other input) with a cell-type column, or an AnnData.
    out
        Where to write the annotated bundle; ``None`` (or ``bundle`` itself) replaces ``bundle`` in place.
    k
        Reference neighbours that vote.
    threshold
        Confidence (vote share) below which a cell is labelled ``"unknown"``.
    reference_cell_type_key
        The reference's cell-type column (guessed when ``None``).
    gene_map
        TSV/CSV of Ensembl ID and symbol, when one side names genes by ID and the other by symbol.
    overwrite
        Replace an existing bundle at ``out`` (never needed in place).
    command
        The command line to record in the manifest.
    progress
        Progress callback.

    Returns
    -------
    TransferResult
        Per-cell labels and confidence, ``info`` (as recorded in the manifest) and ``summary`` per cell type.

    Notes
    -----
    In the new ``cells.parquet``, ``cell_type`` holds the transferred labels, ``cell_type_confidence`` the
    vote share, and the previous cell types are kept in ``cluster`` (when they were clusters) or
    ``cell_type_previous``. The manifest's ``harmonisation.cell_type`` records the method, reference, ``k``,
    threshold, number of unknown cells and the gene overlap; ``quality`` gets the kNN label agreement of
    the new labels; ``provenance.steps`` the command and date.
    """

    source = Path(bundle)
    atlas = Atlas(source)
    target = Path(out) if out is not None else source
    in_place = target.resolve() == source.resolve()
    if not in_place and target.exists() and not overwrite:
        raise InputError(f"{target} already exists: choose another --out, or leave --out out to annotate in place.")
    try:
        report(progress, 0.0, "reading the reference")
        query = read_cells(atlas, gene_map=gene_map, labelled=False)
        result = transfer_labels(reference, query, k=k, threshold=threshold,
                                 reference_cell_type_key=reference_cell_type_key, gene_map=gene_map,
                                 progress=scaled(progress, 0.02, 0.75))
        report(progress, 0.75, "writing the annotated bundle")
        with atomic_dir(target, overwrite=True) as tmp:
            dropped = _link_unchanged(source, tmp)
            obs, previous = annotated_obs(atlas, result)
            obs.to_parquet(tmp / "cells.parquet")
            report(progress, 0.8, "summarising groups")
            _write_summaries(atlas, obs, tmp / "summaries")
            report(progress, 0.95, "writing the manifest")
            _write_manifest(atlas, tmp, obs, result, previous=previous, dropped=dropped, command=command)
    finally:
        if "store" in atlas.__dict__:  # release the old version's SOMA handles
            atlas.store.close()
    report(progress, 1.0, f"annotated bundle written to {target}")
    return result


def annotated_obs(atlas, result: TransferResult) -> tuple[pd.DataFrame, str | None]:
    """The bundle's cell table with the transferred labels.

    Returns the new table and the column that keeps the previous cell types (``None`` without any).
    """
    obs = atlas.obs.copy()
    key = atlas.roles.get("cell_type")
    previous = None
    if key is not None and key in obs:
        previous = "cluster" if atlas.manifest.harmonisation.cell_types_are_clusters else "cell_type_previous"
        obs[previous] = obs[key]
    categories = [str(c) for c in result.summary["cell_type"]]
    obs["cell_type"] = pd.Categorical(np.asarray(result.labels).astype(str), categories=categories)
    obs[CONFIDENCE_COLUMN] = result.confidence.astype(np.float32)
    return obs, previous


def _link_unchanged(source: Path, tmp: Path) -> list[str]:
    """Hard-link (or copy) every part of ``source`` not rewritten into ``tmp``; return the stale parts left out."""
    dropped = []
    for part in sorted(source.iterdir()):
        if part.name in REWRITTEN or part.name.startswith("."):
            continue
        if part.name in STALE:
            dropped.append(part.name)
        elif part.is_dir():
            shutil.copytree(part, tmp / part.name, copy_function=_link_or_copy)
        else:
            _link_or_copy(part, tmp / part.name)
    if (source / "summaries" / "de").exists():
        dropped.append("summaries/de")
    return dropped


def _link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Hard-link ``src`` at ``dst``; copy it where links are impossible (another file system)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _write_summaries(atlas, obs: pd.DataFrame, path: Path) -> None:
    """Recompute the group summaries for the new cell types from the expression store."""

    store = atlas.store
    counts = store.iter_rows("counts") if "counts" in store.layers else None
    compute_summaries(obs, store.iter_rows("lognorm"), store.n_genes, counts).save(path)


def _write_manifest(atlas, tmp: Path, obs: pd.DataFrame, result: TransferResult, *, previous: str | None,
                    dropped: list[str], command: str | None) -> None:
    """The manifest of the annotated version: the label-transfer record, new quality scores, the step."""
    manifest = atlas.manifest
    before = manifest.harmonisation.cell_type
    record = {**result.info, "source": None, "confidence_column": CONFIDENCE_COLUMN, "previous_column": previous,
              "previous": before.to_dict() if before is not None else None}
    if dropped:
        record["dropped"] = dropped
        record["note"] = f"{', '.join(dropped)} dropped: computed from the previous cell types"
    quality = {**knn_label_agreement(atlas.index, atlas.embedding(), obs["cell_type"]),
               "label_transfer_mean_confidence": result.info["mean_confidence"]}
    manifest = manifest.with_cell_types(ColumnSource.from_dict(record), quality)
    write_manifest(tmp, manifest.with_step(Step.now("annotate", command, reference=result.info["reference"])))
