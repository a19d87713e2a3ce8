"""Save and load the neural encoders in the shared checkpoint format, and align their genes.

A checkpoint (see :mod:`engine.models.checkpoint`) holds ``config.json`` (the model's
``config`` plus any ``extra`` entries such as training metrics), ``weights.safetensors`` (the
whole ``state_dict``, buffers included, as float32) and ``genes.txt`` (the model's gene order).
Loading rebuilds the model with :func:`~engine.models.ssl.build_model` and loads the weights
strictly; nothing is unpickled.

:func:`align_genes` maps a model's genes onto an atlas's columns (by Ensembl ID or symbol, either
way through the shipped GENCODE tables), and
:func:`align_block` builds the model's input from an atlas block: genes the atlas lacks read 0
and are returned as a mask, which ``model.embed(x, mask)`` treats as unobserved (for a masked
autoencoder exactly what it saw for hidden genes in training).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch import nn

from engine.data.gene_match import GeneMatcher
from engine.errors import BundleError, InputError
from engine.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from engine.models.ssl import METHODS, build_model, config_keys

RESERVED = ("format", "version")


def save_model(path: str | os.PathLike, model: nn.Module, genes: Sequence[str],
               extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as a checkpoint directory.

    Parameters
    ----------
    path
        Directory to create (files are written atomically).
    model
        A model from :mod:`engine.models.ssl` (has ``.config``).
    genes
        The model's genes, in input column order (``len == config["n_genes"]``).
    extra
        JSON-serialisable entries stored beside the config (e.g. training metrics); they may not
        reuse a config key.

    Returns
    -------
    pathlib.Path
        The checkpoint directory.
    """
    config = dict(model.config)
    genes = [str(g) for g in genes]
    if len(genes) != config["n_genes"]:
        raise InputError(f"The model has {config['n_genes']} inputs but {len(genes)} gene names were given.")
    extra = dict(extra or {})
    clash = sorted(set(extra) & (set(config) | set(RESERVED) | {"model"}))
    if clash:
        raise InputError(f"Extra checkpoint entries {', '.join(clash)} would overwrite the model config: rename them.")
    weights = {k: v.detach().cpu().to(torch.float32).contiguous().numpy()
               for k, v in model.state_dict().items()}
    return save_checkpoint(path, Checkpoint(config={"model": config["method"], **config, **extra},
                                            weights=weights, genes=genes))


def load_model(path: str | os.PathLike) -> tuple[nn.Module, list[str]]:
    """Read a checkpoint written by :func:`save_model`.

    Parameters
    ----------
    path
        The checkpoint directory (``config.json``, ``weights.safetensors``, ``genes.txt``).

    Returns
    -------
    model, genes
        The rebuilt model in eval mode, and its gene order.

    Raises
    ------
    BundleError
        The directory is missing files, corrupt, not a neural encoder checkpoint, or its weights
        do not fit its config.
    """
    ckpt = load_checkpoint(path)
    method = ckpt.config.get("method")
    if method not in METHODS:
        raise BundleError(f"The checkpoint at {path} is not a neural encoder (method {method!r}): "
                          f"expected one of {', '.join(METHODS)}.")
    config = {k: v for k, v in ckpt.config.items() if k in config_keys(method)}
    try:
        model = build_model(method, int(ckpt.config["n_genes"]), **config)
    except (InputError, KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"The checkpoint at {path} has an unusable config ({exc}): re-export it.") from exc
    if len(ckpt.genes) != model.config["n_genes"]:
        raise BundleError(f"The checkpoint at {path} lists {len(ckpt.genes)} genes for a model with "
                          f"{model.config['n_genes']} inputs: re-export it.")
    reference = model.state_dict()
    try:
        state = {k: torch.from_numpy(np.asarray(v)).to(reference[k].dtype) if k in reference else torch.from_numpy(v)
                 for k, v in ckpt.weights.items()}
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise BundleError(f"The weights at {path} do not fit the {method} model its config describes "
                          f"({first}): re-export the checkpoint.") from exc
    return model.eval(), list(ckpt.genes)


def align_genes(model_genes: Sequence[str] | pd.DataFrame, atlas_genes: pd.DataFrame | Sequence[str],
                min_overlap: float = 0.5) -> tuple[np.ndarray, float]:
    """Atlas column of each model gene, matched by Ensembl ID (version ignored) or symbol.

    Parameters
    ----------
    model_genes
        The model's genes (IDs or symbols), in input order; or a gene table (as ``atlas_genes``).
    atlas_genes
        The atlas's genes: a gene table (columns ``gene_id`` and ``gene_symbol``, as from
        :func:`engine.data.genes.gene_table`) or a list of names. Matching is case-insensitive;
        the first atlas gene with a name wins.
    min_overlap
        Smallest accepted fraction of the model's genes found in the atlas.

    Returns
    -------
    positions, overlap
        ``int64`` array (``len(model_genes)``) of atlas columns, ``-1`` where missing, and the
        fraction of model genes found.

    Raises
    ------
    InputError
        Fewer than ``min_overlap`` of the model's genes are in the atlas.

    Notes
    -----
    Matching is :class:`engine.data.gene_match.GeneMatcher`'s: by Ensembl ID, then symbol, then name,
    with the shipped GENCODE tables pairing IDs and symbols, so a model named by symbols applies to an
    atlas named by IDs and the other way round.
    """
    positions = GeneMatcher(atlas_genes).positions(model_genes)
    n_model = len(positions)
    found = int((positions >= 0).sum())
    overlap = found / n_model if n_model else 0.0
    if overlap < min_overlap:
        raise InputError(f"The model knows {n_model:,} genes; only {found:,} ({100 * overlap:.1f}%) are in this "
                         f"atlas: below the {100 * min_overlap:.0f}% needed.")
    return positions, overlap


def align_block(block: np.ndarray | sp.spmatrix, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's input for a block of atlas cells.

    Parameters
    ----------
    block
        Cells × atlas genes, log-normalised (dense or CSR).
    positions
        From :func:`align_genes`.

    Returns
    -------
    x, missing
        ``(cells, n_model_genes)`` float32 with 0 for missing genes, and the boolean
        ``(n_model_genes,)`` mask of missing genes to pass to ``model.embed(x, missing)``.
    """
    positions = np.asarray(positions, dtype=np.int64)
    present = positions >= 0
    sub = block[:, positions[present]]
    sub = sub.toarray() if sp.issparse(sub) else np.asarray(sub)
    x = np.zeros((block.shape[0], len(positions)), dtype=np.float32)
    x[:, present] = sub
    return torch.from_numpy(x), torch.from_numpy(~present)
