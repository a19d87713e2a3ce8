"""Unsupervised clusters for atlases that come without cell-type labels.

Leiden community detection (igraph) on the k-nearest-neighbour graph of the embedding,
found with the atlas's FAISS index. The clusters stand in for cell types until label
transfer (``vcell annotate``) names them; they are called "cluster N", never a cell type.
"""

from __future__ import annotations

import random

import numpy as np
import pandas as pd

from engine.space.index import search


def leiden_clusters(index, embedding: np.ndarray, *, k: int = 15, resolution: float = 1.0,
                    seed: int = 0, chunk: int = 100_000) -> pd.Categorical:
    """Cluster cells by Leiden on their kNN graph.

    Parameters
    ----------
    index
        FAISS index over ``embedding`` (row i = cell i).
    embedding
        The embedding the index was built on.
    k
        Neighbours per cell.
    resolution
        Leiden resolution (modularity objective); higher gives more clusters.
    seed
        Seed for Leiden.

    Returns
    -------
    Categories ``"cluster 1"``, ``"cluster 2"``, ... (1 is the largest).
    """
    import igraph as ig

    n = len(embedding)
    sources, targets = [], []
    for start in range(0, n, chunk):
        _, ids = search(index, embedding[start:start + chunk], k + 1)
        rows = np.repeat(np.arange(start, start + len(ids)), ids.shape[1])
        cols = ids.ravel()
        keep = (cols >= 0) & (cols != rows)
        sources.append(rows[keep])
        targets.append(cols[keep])
    edges = np.column_stack([np.concatenate(sources), np.concatenate(targets)])
    graph = ig.Graph(n=n, edges=edges, directed=False).simplify()
    ig.set_random_number_generator(random.Random(seed))  # reproducible partitions
    partition = graph.community_leiden(objective_function="modularity", resolution=resolution, n_iterations=-1)
    membership = np.asarray(partition.membership)
    sizes = np.bincount(membership)
    rank = np.empty_like(sizes)
    rank[np.argsort(-sizes, kind="stable")] = np.arange(len(sizes))
    labels = [f"cluster {r + 1}" for r in range(len(sizes))]
    return pd.Categorical.from_codes(rank[membership], categories=labels)
