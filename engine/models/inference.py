"""Applying a trained model to store rows: aligned input blocks and embeddings streamed in row order.

The store's genes and the model's genes need not match: the caller says which store genes to read
(``read``, the model genes the store has, in model order) and where each model gene lies in a block
read with them (``columns``, -1 for a gene the store lacks; :func:`present_columns`). Missing genes
are filled with 0 and passed to ``model.embed`` as unobserved. Matching gene names to a bundle is
the caller's (:func:`engine.build.model_genes.model_gene_columns`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from engine.errors import InputError
from engine.models.serialize import align_block
from engine.progress import Progress, report

__all__ = ["present_columns", "model_input", "embed_input", "embed_rows", "embed_store"]


def present_columns(present: np.ndarray) -> np.ndarray:
    """Column of each present model gene within a block read with only the present genes (-1: missing).

    Parameters
    ----------
    present
        Boolean per model gene: does the store have it?

    Returns
    -------
    numpy.ndarray
        int64 column per model gene, for :func:`model_input`.
    """
    columns = np.full(len(present), -1, dtype=np.int64)
    columns[present] = np.arange(int(np.sum(present)))
    return columns


def model_input(store, rows: np.ndarray, read: np.ndarray, columns: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's input ``(x, missing)`` for store ``rows``, reading the store genes ``read``."""
    x, missing = align_block(store.rows(rows, read), columns)
    if not torch.isfinite(x).all():
        raise InputError(f"Cells {rows[0]}..{rows[-1]} have NaN or infinite expression values: "
                         "rebuild the bundle from clean counts.")
    return x, missing


def embed_input(model: nn.Module, x: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """``model.embed`` of one input block, telling the model its unobserved genes when there are any."""
    return model.embed(x, missing) if bool(missing.any()) else model.embed(x)


@torch.inference_mode()
def embed_rows(model: nn.Module, store, rows: np.ndarray, read: np.ndarray, columns: np.ndarray,
               device: torch.device) -> torch.Tensor:
    """Float32 CPU embedding of store ``rows`` by an eval-mode ``model`` already on ``device``."""
    x, missing = model_input(store, rows, read, columns)
    return embed_input(model, x.to(device), missing.to(device)).float().cpu()


@torch.inference_mode()
def embed_store(model: nn.Module, store, read: np.ndarray, columns: np.ndarray, start: int, stop: int, *,
                batch_size: int = 4096, device: str | torch.device | None = None,
                progress: Progress | None = None) -> np.ndarray:
    """Embed store rows ``start .. stop - 1`` with ``model``, reading the store in row order.

    Parameters
    ----------
    model
        A model with ``.embed(x)``; put in eval mode for the call and restored afterwards.
    store
        An expression store (``.rows(cells, genes)``), e.g. :class:`~engine.data.store.ExpressionStore`.
    read, columns
        Store genes to read and each model gene's column in what was read (see the module docstring).
    start, stop
        The row range.
    batch_size
        Cells per forward pass (and per store read).
    device
        ``None``: CUDA when present, else CPU.
    progress
        An engine progress callback.

    Returns
    -------
    numpy.ndarray
        float32 ``(stop - start, latent)``.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    was_training = model.training
    model = model.to(device).eval()
    out = None
    try:
        for first in range(start, stop, batch_size):
            rows = np.arange(first, min(first + batch_size, stop))
            z = embed_rows(model, store, rows, read, columns, device).numpy()
            if out is None:
                out = np.empty((stop - start, z.shape[1]), dtype=np.float32)
            out[rows - start] = z
            report(progress, (rows[-1] + 1 - start) / max(stop - start, 1), "embedding cells")
    finally:
        model.train(was_training)
    if out is None:  # no rows: the width still comes from the model
        out = np.empty((0, int(model.config.get("latent", 0)) if hasattr(model, "config") else 0), dtype=np.float32)
    return out
