"""How good is an embedding? Measured numbers for the Model page and the manifest.

The walking skeleton has one: kNN label agreement (how often a cell's nearest neighbours
share its cell-type label). The encoder evaluation (zero-shot kNN F1, fine-tuning,
reconstruction over held-out donors) extends this module.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from engine.index import search


def knn_label_agreement(index, embedding: np.ndarray, labels: pd.Series | np.ndarray, *, k: int = 15,
                        n_sample: int = 2_000, seed: int = 0) -> dict[str, float]:
    """Fraction of each cell's ``k`` nearest neighbours (itself excluded) sharing its label.

    Parameters
    ----------
    index
        FAISS index over ``embedding``.
    embedding
        ``(n_cells, dim)``.
    labels
        One label per cell (e.g. the input's cell types; never clusters computed from the
        same neighbours, which would agree by construction).
    k
        Neighbours per cell.
    n_sample
        Cells sampled (reproducibly) as queries.

    Returns
    -------
    ``{"knn_label_agreement": mean over cells, "knn_label_agreement_macro": mean over labels,
    "k": k, "n_queries": ...}``
    """
    labels = np.asarray(labels).astype(str)
    n = len(labels)
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(n, min(n, n_sample), replace=False))
    _, ids = search(index, np.asarray(embedding[queries]), k + 1)
    agree = np.empty(len(queries))
    for row, (cell, neighbours) in enumerate(zip(queries, ids)):
        neighbours = neighbours[(neighbours >= 0) & (neighbours != cell)][:k]
        agree[row] = np.mean(labels[neighbours] == labels[cell]) if len(neighbours) else np.nan
    per_label = pd.Series(agree).groupby(labels[queries]).mean()
    return {"knn_label_agreement": float(np.nanmean(agree)),
            "knn_label_agreement_macro": float(per_label.mean()), "k": k, "n_queries": int(len(queries))}
