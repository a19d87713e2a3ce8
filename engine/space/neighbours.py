"""Similar cells: nearest neighbours of a cell or a selection in the atlas's FAISS index."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from engine.errors import EmptySelectionError, InputError
from engine.space.index import search
from engine.space.selection import SelectionSummary, summarise_selection

MAX_QUERIES = 2_000


@dataclass
class NeighbourResult:
    """Cells most similar to a query set.

    Attributes
    ----------
    query
        The query cells (positions).
    cells
        The neighbours found (positions, best first), excluding the query cells.
    score
        Per neighbour: the fraction of query cells that have it among their ``k``
        nearest (1.0 for a single query cell).
    distance
        Per neighbour: its smallest distance to a query cell.
    summary
        Breakdown of the neighbours by cell type, condition and donor.
    """

    query: np.ndarray
    cells: np.ndarray
    score: np.ndarray
    distance: np.ndarray
    summary: SelectionSummary

    def table(self, obs: pd.DataFrame) -> pd.DataFrame:
        """The neighbours with their metadata, best first."""
        frame = obs.iloc[self.cells].copy()
        frame.insert(0, "score", self.score)
        frame.insert(1, "distance", self.distance)
        return frame


def find_neighbours(atlas, cells: np.ndarray, k: int = 50, *, seed: int = 0) -> NeighbourResult:
    """Find the ``k`` cells most similar to ``cells`` in the atlas's default embedding.

    For one cell these are its ``k`` nearest neighbours. For a selection, every selected
    cell (up to ``MAX_QUERIES``, sampled reproducibly) votes for its ``k`` nearest; cells
    outside the selection are ranked by votes, then by distance.

    Parameters
    ----------
    atlas
        An :class:`~engine.bundle.atlas.Atlas`.
    cells
        Query cell positions.
    k
        Number of neighbours to return.
    seed
        Seed of the sample of query cells when there are more than ``MAX_QUERIES``.

    Returns
    -------
    NeighbourResult
        The neighbours (best first, query cells excluded), their scores and distances, and
        their breakdown by cell type, condition and donor.
    """
    cells = np.unique(np.asarray(cells, dtype=np.int64))
    if len(cells) == 0:
        raise EmptySelectionError("No query cells: pick a cell or select some cells on the map first.")
    if k < 1:
        raise InputError(f"k must be at least 1 (got {k}).")
    if cells.max() >= atlas.n_cells or cells.min() < 0:
        raise InputError(f"Cell positions must lie in 0..{atlas.n_cells - 1}.")
    queries = cells
    if len(queries) > MAX_QUERIES:
        queries = np.sort(np.random.default_rng(seed).choice(cells, MAX_QUERIES, replace=False))
    embedding = atlas.embedding()
    # a compact selection's own members crowd its neighbour lists: search deeper until k
    # cells outside it are found, or the whole atlas has been searched
    depth = k + 1
    while True:
        dist, ids = search(atlas.index, np.asarray(embedding[queries]), depth)
        flat_ids, flat_dist = ids.ravel(), dist.ravel()
        keep = (flat_ids >= 0) & ~np.isin(flat_ids, cells)
        outside = np.unique(flat_ids[keep])
        if len(outside) >= k or depth >= atlas.n_cells or depth >= 4096:
            break
        depth = min(depth * 4, atlas.n_cells, 4096)
    if len(outside) == 0:
        raise EmptySelectionError(f"No cells outside the {len(cells):,} selected ones lie among their "
                                  f"{depth} nearest neighbours: the selection already holds this region.")
    frame = pd.DataFrame({"cell": flat_ids[keep], "distance": flat_dist[keep]})
    ranked = frame.groupby("cell").agg(votes=("distance", "size"), distance=("distance", "min"))
    ranked = ranked.sort_values(["votes", "distance"], ascending=[False, True]).head(k)
    found = ranked.index.to_numpy(dtype=np.int64)
    return NeighbourResult(query=cells, cells=found, score=(ranked["votes"] / len(queries)).to_numpy(),
                           distance=np.sqrt(np.maximum(ranked["distance"].to_numpy(), 0.0)),
                           summary=summarise_selection(atlas.obs, found, atlas.roles))
