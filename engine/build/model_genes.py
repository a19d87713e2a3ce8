"""A model's genes in a bundle: which bundle genes to train on, and where a trained model's genes lie.

:func:`resolve_genes` turns a gene selection (``"hvg"``, ``"all"``, ids / symbols, positions) into
bundle gene positions for training; :func:`model_gene_columns` aligns a checkpoint's gene list to a
bundle (by Ensembl ID or symbol) for :mod:`engine.models.inference`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.bundle.atlas import Atlas
from engine.errors import InputError
from engine.models.inference import present_columns
from engine.models.serialize import align_genes

__all__ = ["resolve_genes", "model_gene_columns"]


def resolve_genes(atlas: Atlas, genes: str | Sequence | np.ndarray) -> np.ndarray:
    """Gene positions of a bundle for a gene selection.

    Parameters
    ----------
    atlas
        The bundle.
    genes
        ``"hvg"`` (the highly variable genes), ``"all"``, positions, or gene ids / symbols.

    Returns
    -------
    numpy.ndarray
        int64 gene positions, in the order given.
    """
    if isinstance(genes, str):
        if genes == "all":
            return np.arange(atlas.n_genes)
        if genes == "hvg":
            var = atlas.var
            if "highly_variable" not in var or not var["highly_variable"].any():
                raise InputError("This atlas marks no highly variable genes: use genes='all' or give a gene list.")
            return np.flatnonzero(var["highly_variable"].to_numpy())
        raise InputError(f"Unknown gene selection '{genes}': use 'hvg', 'all' or a list of genes.")
    genes = list(genes)
    if genes and all(isinstance(g, (int, np.integer)) for g in genes):
        return np.asarray(genes, dtype=np.int64)
    return np.asarray(atlas.genes.resolve_many([str(g) for g in genes]), dtype=np.int64)


def model_gene_columns(atlas: Atlas, genes: Sequence, min_overlap: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """What to read from the store for a model's genes, and where each model gene lies in what was read.

    Parameters
    ----------
    atlas
        The bundle.
    genes
        The model's input genes in order: gene ids / symbols (aligned by
        :func:`~engine.models.serialize.align_genes`) or bundle positions.
    min_overlap
        Least fraction of the model's genes the bundle must have (names only).

    Returns
    -------
    read, columns
        Bundle gene positions to read (the model genes the bundle has, in model order), and for each
        model gene its column in a block read with ``read`` (-1: missing from the bundle), for
        :func:`engine.models.inference.model_input`.
    """
    if all(isinstance(g, str) for g in genes):
        positions, _ = align_genes(list(genes), atlas.var, min_overlap=min_overlap)
    else:
        positions = resolve_genes(atlas, genes)
    present = positions >= 0
    return positions[present], present_columns(present)
