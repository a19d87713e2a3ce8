"""Reconstruction of hidden genes on held-out cells, for a masked autoencoder and honest baselines.

* :func:`reconstruction_metrics` -- MSE and variance-weighted explained variance, optionally on masked entries.
* :func:`hidden_entries` -- which (cell, gene) entries to hide: a seeded hash of the atlas row and column,
  so every model and baseline scored on the same cells and genes hides exactly the same entries.
* :func:`gene_mean_imputation` / :func:`knn_imputation` -- baselines: the reference cells' per-gene mean,
  and the mean of the ``k`` reference cells nearest on each query cell's *visible* genes.
* :func:`masked_reconstruction` -- hide, reconstruct with a frozen model, score it and the baselines.

Everything is on the log-normalised scale.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from engine.errors import InputError

BASELINES = ("mean", "knn")


def reconstruction_metrics(x_true, x_pred, mask=None) -> dict[str, float]:
    """Mean squared error and variance-weighted explained variance of a reconstruction.

    Parameters
    ----------
    x_true, x_pred
        ``(n_cells, n_genes)`` (dense or sparse) observed and reconstructed values.
    mask
        Optional boolean ``(n_cells, n_genes)``: score only the ``True`` (masked) entries. The explained
        variance is then computed per gene over the masked entries of that gene, weighted by variance
        (genes with fewer than two masked entries are skipped).

    Returns
    -------
    ``{"mse", "explained_variance", "n_entries"}``
    """
    from sklearn.metrics import explained_variance_score

    true = (x_true.toarray() if sp.issparse(x_true) else np.asarray(x_true)).astype(np.float64)
    pred = (x_pred.toarray() if sp.issparse(x_pred) else np.asarray(x_pred)).astype(np.float64)
    if true.shape != pred.shape:
        raise InputError(f"x_true {true.shape} and x_pred {pred.shape} must have the same shape.")
    if mask is None:
        return {"mse": float(np.mean((true - pred) ** 2)),
                "explained_variance": float(explained_variance_score(true, pred, multioutput="variance_weighted")),
                "n_entries": int(true.size)}
    mask = (mask.toarray() if sp.issparse(mask) else np.asarray(mask)).astype(bool)
    if mask.shape != true.shape:
        raise InputError(f"mask {mask.shape} must have the shape of x_true {true.shape}.")
    if not mask.any():
        raise InputError("The mask selects no entries to score.")
    # per-gene explained variance over masked entries, weighted by the masked entries' variance
    n = mask.sum(axis=0)
    keep = n >= 2
    m = np.where(mask, 1.0, 0.0)
    residual = np.where(mask, true - pred, 0.0)

    def _var(values):
        mean = (values * m).sum(axis=0)[keep] / n[keep]
        return ((values[:, keep] - mean) ** 2 * m[:, keep]).sum(axis=0) / n[keep]

    var_true, var_res = _var(np.where(mask, true, 0.0)), _var(residual)
    total = var_true.sum()
    ev = float(1 - var_res.sum() / total) if total > 0 else float("nan")
    return {"mse": float(np.mean((true - pred)[mask] ** 2)), "explained_variance": ev, "n_entries": int(mask.sum())}


def hidden_entries(cells, genes, rate: float = 0.5, seed: int = 0) -> np.ndarray:
    """Boolean ``(len(cells), len(genes))``: entries hidden with probability ``rate``, independently.

    Each entry's fate is a hash (splitmix64) of ``(seed, cell, gene)``, so the same atlas cell and gene
    are hidden for every model whatever its gene order, and no ``cells x all-genes`` array is drawn.

    Parameters
    ----------
    cells, genes
        Atlas row and column positions (non-negative integers).
    rate
        Probability that an entry is hidden, in ``(0, 1)``.
    seed
        Different seeds hide different entries.
    """
    if not 0 < rate < 1:
        raise InputError(f"The hidden fraction must be between 0 and 1 (got {rate}).")
    cells = np.asarray(cells, dtype=np.uint64).reshape(-1, 1)
    genes = np.asarray(genes, dtype=np.uint64).reshape(1, -1)
    with np.errstate(over="ignore"):
        z = (cells * np.uint64(0x9E3779B97F4A7C15) + genes * np.uint64(0xC2B2AE3D27D4EB4F)
             + np.uint64(seed) * np.uint64(0x165667B19E3779F9))
        for shift, factor in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
            z = (z ^ (z >> np.uint64(shift))) * np.uint64(factor)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53) < rate


def gene_mean_imputation(x_ref: np.ndarray, n_query: int) -> np.ndarray:
    """Every query cell predicted as the reference cells' per-gene mean, ``(n_query, n_genes)``."""
    return np.broadcast_to(np.asarray(x_ref, dtype=np.float32).mean(axis=0), (n_query, x_ref.shape[1])).copy()


def knn_imputation(x_ref: np.ndarray, x_query: np.ndarray, visible: np.ndarray, k: int = 15,
                   batch_size: int = 256) -> np.ndarray:
    """Each query cell predicted as the mean of its ``k`` nearest reference cells on its visible genes.

    The squared Euclidean distance is taken over the genes visible in that query cell only, so the
    hidden values never choose the neighbours.

    Parameters
    ----------
    x_ref, x_query
        ``(n_ref, n_genes)`` and ``(n_query, n_genes)`` dense expression (query hidden values unused).
    visible
        Boolean ``(n_query, n_genes)``: the entries the imputation may look at.
    k
        Neighbours averaged.

    Returns
    -------
    ``(n_query, n_genes)`` float32.
    """
    ref = np.asarray(x_ref, dtype=np.float32)
    query, visible = np.asarray(x_query, dtype=np.float32), np.asarray(visible, dtype=np.float32)
    k = int(min(k, len(ref)))
    if k < 1:
        raise InputError("kNN imputation needs at least one reference cell.")
    out = np.empty_like(query)
    for start in range(0, len(query), batch_size):
        v, q = visible[start:start + batch_size], query[start:start + batch_size]
        # sum over visible genes of (q - r)^2, up to a per-row constant: v.r^2 - 2 (v*q).r
        dist = v @ (ref * ref).T - 2.0 * (v * q) @ ref.T
        nearest = np.argpartition(dist, k - 1, axis=1)[:, :k]
        out[start:start + batch_size] = ref[nearest].mean(axis=1)
    return out


def masked_reconstruction(model, x: np.ndarray, missing: np.ndarray, reference: np.ndarray, query: np.ndarray,
                          cell_ids: np.ndarray, gene_ids: np.ndarray, *, rate: float = 0.5, seed: int = 0,
                          k: int = 15, batch_size: int = 4096) -> dict[str, dict[str, float]]:
    """Hide ``rate`` of the query cells' genes, reconstruct them with a frozen model, and score it and the baselines.

    Parameters
    ----------
    model
        A model with ``reconstruct(x, mask)`` (a masked autoencoder), in any mode (it reconstructs in eval mode).
    x
        ``(cells, model genes)`` log-normalised model input (0 where the atlas lacks a gene).
    missing
        Boolean ``(model genes,)``: genes the atlas lacks (never hidden, never scored, always unobserved).
    reference, query
        Row positions into ``x``: the baselines learn from the reference rows; the query rows are scored.
    cell_ids, gene_ids
        Atlas row of each ``x`` row and atlas column of each model gene (for :func:`hidden_entries`).
    rate, seed
        Fraction of the present genes hidden per query cell, and the seed choosing them.
    k
        Neighbours of the kNN-imputation baseline.

    Returns
    -------
    ``{"model": metrics, "mean": metrics, "knn": metrics}``, each from :func:`reconstruction_metrics` on the
    same hidden entries.
    """
    import torch

    missing = np.asarray(missing, dtype=bool)
    hidden = hidden_entries(np.asarray(cell_ids)[query], np.asarray(gene_ids), rate, seed) & ~missing
    x_query, x_ref = x[query], x[reference]
    unobserved = torch.from_numpy(hidden | missing)
    with torch.no_grad():
        pred = np.concatenate([model.reconstruct(torch.from_numpy(x_query[i:i + batch_size]),
                                                 unobserved[i:i + batch_size]).numpy()
                               for i in range(0, len(query), batch_size)])
    predictions = {"model": pred, "mean": gene_mean_imputation(x_ref, len(query)),
                   "knn": knn_imputation(x_ref, x_query, ~(hidden | missing), k=k)}
    return {name: reconstruction_metrics(x_query, p, hidden) for name, p in predictions.items()}


def reconstruction_source(model, x: np.ndarray, missing: np.ndarray, cell_ids: np.ndarray, gene_ids: np.ndarray,
                          embedding: np.ndarray, *, rate: float = 0.5, k: int = 15):
    """An :func:`engine.evaluate.metrics.evaluate_embeddings` source: a frozen embedding plus masked reconstruction.

    Parameters
    ----------
    model, x, missing, cell_ids, gene_ids, rate, k
        As for :func:`masked_reconstruction` (``x`` holds every cell the split indexes).
    embedding
        ``(cells, dim)`` embedding reported for the kNN vote and the probe.

    Returns
    -------
    ``source(seed, reference, query) -> {"reference", "query", "reconstruction", "reconstruction_baselines"}``;
    each seed hides different entries of the query cells.
    """
    embedding = np.asarray(embedding)

    def source(seed, reference, query):
        scores = masked_reconstruction(model, x, missing, reference, query, cell_ids, gene_ids, rate=rate,
                                       seed=seed, k=k)
        return {"reference": embedding[reference], "query": embedding[query], "reconstruction": scores.pop("model"),
                "reconstruction_baselines": scores}

    return source
