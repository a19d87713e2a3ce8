"""Transfer between data sets: pretraining corpora aligned to a target, and pretrained checkpoints scored on it.

* :func:`write_union` -- one raw-count ``.h5ad`` of several data sets restricted to a target's genes (matched
  by symbol or ID, case-insensitive); the corpus to pretrain on (``vcell build`` then ``vcell pretrain``).
* :func:`checkpoint_source` -- an :func:`engine.evaluate.metrics.evaluate_embeddings` source for a saved checkpoint
  applied to an atlas: frozen embedding, fine-tuned classifier and masked reconstruction.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from engine.data.gene_match import GeneMatcher
from engine.errors import BundleError, InputError
from engine.evaluate.finetune import classifier_source
from engine.evaluate.reconstruction import reconstruction_source
from engine.fileio import atomic_path
from engine.models.serialize import align_block, align_genes, load_model


@dataclass
class UnionResult:
    """What :func:`write_union` wrote: the ``.h5ad`` ``path``, a ``report`` with one row per source
    (``dataset, cells, genes_found, genes_zero_filled``) and ``genes_kept``, the genes of the union."""

    path: Path
    report: pd.DataFrame
    genes_kept: int


def write_union(sources: Mapping[str, ad.AnnData | str | os.PathLike], genes: Sequence[str],
                out: str | os.PathLike) -> UnionResult:
    """Write the union of several data sets' raw counts, restricted to and ordered as ``genes``.

    A gene is kept when at least one source has it; a source that lacks a kept gene reads 0 there (the
    report says how many). Cell names are prefixed ``<source>:`` and ``obs["dataset"]`` names the source;
    other ``obs`` columns are dropped (a pretraining corpus carries no labels).

    Parameters
    ----------
    sources
        ``{name: AnnData or .h5ad path}``, raw counts in ``X``; ``var_names`` are gene symbols or IDs.
    genes
        The target's genes, in its order (matched by :class:`~engine.data.gene_match.GeneMatcher`: symbol or Ensembl ID, any case; the first of duplicate names wins).
    out
        ``.h5ad`` file to write (atomically).

    Returns
    -------
    UnionResult
        The written path, a report with one row per source (``cells``, ``genes_found``,
        ``genes_zero_filled``) and ``genes_kept``.

    Raises
    ------
    InputError
        No sources, or no source shares a gene with ``genes``.
    """

    if not sources:
        raise InputError("write_union needs at least one source data set.")
    genes = [str(g) for g in genes]
    blocks, rows, found = [], [], {}
    for name, source in sources.items():
        adata = source if isinstance(source, ad.AnnData) else ad.read_h5ad(source)
        columns, taken = {}, set()
        for position, column in enumerate(GeneMatcher(list(map(str, adata.var_names))).positions(genes)):
            if column >= 0 and column not in taken:  # the first of duplicate target names wins
                columns[position] = int(column)
                taken.add(int(column))
        found[name] = columns
        rows.append(adata.n_obs)
        blocks.append(adata)
    kept = sorted(set().union(*(c.keys() for c in found.values())))
    if not kept:
        raise InputError("None of the sources shares a gene with the target: check the gene identifiers.")
    slot = {position: i for i, position in enumerate(kept)}
    matrices, obs = [], []
    for (name, columns), adata in zip(found.items(), blocks):
        x = sp.csr_matrix(adata.X, dtype=np.float32)
        targets = [slot[p] for p in columns]
        selector = sp.csr_matrix((np.ones(len(columns), dtype=np.float32), (list(columns.values()), targets)),
                                 shape=(adata.n_vars, len(kept)))
        matrices.append(sp.csr_matrix(x @ selector))
        obs.append(pd.DataFrame({"dataset": name}, index=[f"{name}:{c}" for c in adata.obs_names]))
    union = ad.AnnData(sp.vstack(matrices).tocsr(), obs=pd.concat(obs),
                       var=pd.DataFrame(index=pd.Index([genes[p] for p in kept])))
    union.obs["dataset"] = union.obs["dataset"].astype("category")
    out = Path(out)
    with atomic_path(out) as tmp:
        union.write_h5ad(tmp)
    report = pd.DataFrame({"dataset": list(found), "cells": rows,
                           "genes_found": [len(c) for c in found.values()],
                           "genes_zero_filled": [len(kept) - len(c) for c in found.values()]})
    return UnionResult(path=out, report=report, genes_kept=len(kept))


def checkpoint_source(atlas, cells: np.ndarray, cell_labels: np.ndarray, name: str, path: str | os.PathLike, *,
                       embedding: np.ndarray | None, finetune: bool, reconstruct: dict, training: dict,
                       notes: list[str]) -> Callable | None:
    """An :func:`engine.evaluate.metrics.evaluate_embeddings` source for a pretrained checkpoint applied to an atlas.

    The checkpoint's genes are aligned to the atlas by ID or symbol (genes the atlas lacks read 0 and are
    unobserved). The source reports ``embedding`` (or, when ``None``, the checkpoint's frozen encoder
    embedding) for kNN and the probe; with ``finetune`` it adds a fine-tuned classifier's query predictions
    (:func:`engine.evaluate.finetune.classifier_source`), and for a model that can reconstruct (a masked autoencoder)
    the masked reconstruction of the query cells (:func:`engine.evaluate.reconstruction.reconstruction_source`).

    Parameters
    ----------
    atlas
        The :class:`~engine.bundle.atlas.Atlas` evaluated.
    cells
        Atlas rows evaluated; the split indexes this array.
    cell_labels
        One label per evaluated cell.
    name, path
        Method name (for notes) and checkpoint directory.
    embedding
        Fixed ``(cells, dim)`` embedding for kNN and the probe, or ``None``.
    finetune
        Fine-tune the encoder with a classifier head.
    reconstruct
        Options of :func:`~engine.evaluate.reconstruction.reconstruction_source` (``rate``, ``k``).
    training
        Options of :func:`~engine.evaluate.finetune.classifier_source` (``epochs``, ``label_fraction``, ...).
    notes
        List the caller reports; notes are appended to it.

    Returns
    -------
    ``source(seed, reference, query) -> dict``, or ``None`` (with a note) when the checkpoint cannot be
    loaded or aligned, or would add nothing.
    """
    import torch



    try:
        model, genes = load_model(path)
        positions, overlap = align_genes(genes, atlas.var)
    except (InputError, BundleError, OSError) as exc:
        notes.append(f"{name}: not {'fine-tuned' if finetune else 'scored'} ({exc})")
        return None
    present = np.unique(positions[positions >= 0])
    block = atlas.expression(cells, present, layer="lognorm")
    x, missing = align_block(block, np.where(positions >= 0, np.searchsorted(present, positions), -1))
    x, missing = x.numpy(), missing.numpy()
    if overlap < 1.0:
        notes.append(f"{name}: {int(missing.sum()):,} of the checkpoint's {len(genes):,} genes are missing from "
                     "this atlas and read 0 (unobserved)")
    if embedding is None:  # no bundle embedding of that name: the checkpoint's frozen encoder embeds the cells
        with torch.no_grad():
            embedding = np.concatenate([model.embed(torch.from_numpy(x[i:i + 4096]), torch.from_numpy(missing)).numpy()
                                        for i in range(0, len(x), 4096)])
    parts = []
    if finetune:
        parts.append(classifier_source(x, cell_labels, encoder=model.encoder, embedding=embedding, **training))
    if hasattr(model, "reconstruct"):
        parts.append(reconstruction_source(model, x, missing, cells, np.maximum(positions, 0), embedding,
                                           **reconstruct))
    elif not finetune:
        notes.append(f"{name}: a {model.config['method']} model cannot reconstruct genes; not scored")
        return None

    def source(seed, reference, query):
        return {key: value for part in parts for key, value in part(seed, reference, query).items()}

    return source
