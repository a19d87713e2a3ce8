"""Baseline embeddings every learned encoder is compared with (DESIGN.md, "Models").

* :func:`pca_embedding` -- PCA of the same latent size over the highly variable genes, fitted on
  the reference (training) cells only and applied to the query cells, so nothing about the held-out
  donors leaks into the embedding.
* :func:`hvg_embedding` -- the highly-variable-gene space itself, standardised (statistics from the
  reference cells only when ``fit_rows`` is given) and clipped, as scanpy does before PCA.

Both are pure functions of log-normalised matrices (CSR or dense), so they work on any data set.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from engine.errors import InputError
from engine.models.pca import fit_pca

CLIP = 10.0


def _columns(X, columns: np.ndarray | None):
    if columns is None:
        return X
    return X[:, columns]


def _hvg_columns(hvg_mask, n_genes: int) -> np.ndarray | None:
    if hvg_mask is None:
        return None
    mask = np.asarray(hvg_mask)
    if mask.dtype == bool:
        if mask.shape != (n_genes,):
            raise InputError(f"hvg_mask has {mask.shape[0]} entries for {n_genes} genes: give one flag per gene.")
        columns = np.flatnonzero(mask)
    else:
        columns = mask.astype(int)
    if len(columns) == 0:
        raise InputError("hvg_mask selects no genes: select highly variable genes first.")
    return columns


def pca_embedding(X_train, *X_apply, n_components: int = 64, seed: int = 0,
                  hvg_mask: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """PCA fitted on ``X_train`` only, applied to ``X_train`` and to each of ``X_apply``.

    Parameters
    ----------
    X_train
        Reference / training cells x genes, log-normalised (CSR or dense).
    *X_apply
        Further matrices (e.g. the query cells) with the same genes; never used for fitting.
    n_components
        Embedding width (64, the encoders' latent size); reduced when the data are smaller.
    seed
        Seed of the randomised SVD.
    hvg_mask
        Boolean mask (or positions) of the genes to use; all genes when ``None``.

    Returns
    -------
    ``(train_embedding, *applied_embeddings)``, float32 arrays of width ``n_components``.
    """

    columns = _hvg_columns(hvg_mask, X_train.shape[1])
    for other in X_apply:
        if other.shape[1] != X_train.shape[1]:
            raise InputError(f"A matrix to embed has {other.shape[1]} genes, the training matrix {X_train.shape[1]}: "
                             "use the same genes in the same order.")
    train = _columns(X_train, columns)
    model = fit_pca(train, [str(i) for i in range(train.shape[1])], n_components=n_components, seed=seed)
    return (model.transform(train), *(model.transform(_columns(x, columns)) for x in X_apply))


def hvg_embedding(X, hvg_mask: np.ndarray | None = None, *, fit_rows: np.ndarray | None = None,
                  clip: float = CLIP) -> np.ndarray:
    """The highly-variable-gene space, standardised per gene and clipped at ``+-clip``.

    Parameters
    ----------
    X
        Cells x genes, log-normalised (CSR or dense).
    hvg_mask
        Boolean mask (or positions) of the highly variable genes; all genes when ``None``.
    fit_rows
        Rows whose mean and standard deviation standardise every row (the reference cells, so the
        query cells do not inform the scaling); all rows when ``None``.
    clip
        Standardised values are clipped to ``[-clip, clip]``.

    Returns
    -------
    ``(n_cells, n_hvg)`` float32.
    """
    columns = _hvg_columns(hvg_mask, X.shape[1])
    sub = _columns(X, columns)
    dense = (sub.toarray() if sp.issparse(sub) else np.asarray(sub)).astype(np.float32)
    fit = dense if fit_rows is None else dense[np.asarray(fit_rows)]
    if len(fit) == 0:
        raise InputError("hvg_embedding was given no rows to fit the scaling on.")
    mean = fit.mean(axis=0)
    scale = fit.std(axis=0)
    scale[scale == 0] = 1.0
    return np.clip((dense - mean) / scale, -clip, clip).astype(np.float32)
