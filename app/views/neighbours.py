"""Neighbours: the cells most similar to a cell or a selection, found in the atlas's FAISS index."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app.components import current_atlas, download_csv, guard, page_header, remembered, role_columns
from app.maps import Overlay, map_caption, map_figure, show_breakdown, show_map
from engine.bundle.atlas import Atlas
from engine.errors import InputError
from engine.space.neighbours import NeighbourResult, find_neighbours

SELECTION_KEY = "selection"  # written by the Explore page: {"cells": array, "label": str}
FROM_SELECTION = "The Explore selection"
BY_NAME = "A cell by name or number"
RANDOM = "A random cell"
QUERY_COLOUR = "#111111"


def parse_cell(atlas: Atlas, text: str) -> int:
    """A cell's position from its name (obs index) or its number ``0..n-1``."""
    text = text.strip()
    found = atlas.obs.index.get_indexer([text])[0] if atlas.obs.index.is_unique else -1
    if found >= 0:
        return int(found)
    if text.isdigit() and int(text) < atlas.n_cells:
        return int(text)
    raise InputError(f"Cell '{text}' is not in this atlas: give a cell name such as {atlas.obs.index[0]} "
                     f"or a number from 0 to {atlas.n_cells - 1}.")


def query_picker(atlas: Atlas) -> tuple[np.ndarray, str, int] | None:
    """The query cells, a label for them, and k; ``None`` when the query is invalid (error shown)."""
    selection = st.session_state.get(SELECTION_KEY)
    sources = ([FROM_SELECTION] if selection else []) + [BY_NAME, RANDOM]
    left, middle, right = st.columns([1.2, 1.6, 1.2], vertical_alignment="bottom")
    source = left.radio("Find cells similar to", sources, key=f"nb_source_{len(sources)}")
    k = right.slider("Neighbours to find (k)", 5, 500, 50, step=5, key="nb_k")
    if source == FROM_SELECTION:
        middle.caption(f"{selection['label']}.")
        return np.asarray(selection["cells"], dtype=np.int64), selection["label"], k
    if source == RANDOM:
        if middle.button("Another random cell", icon=":material/casino:", key="nb_reroll"):
            st.session_state["nb_seed"] = st.session_state.get("nb_seed", 0) + 1
        cell = int(np.random.default_rng(st.session_state.get("nb_seed", 0)).integers(atlas.n_cells))
        return np.array([cell]), f"random cell {atlas.obs.index[cell]} (number {cell})", k
    text = middle.text_input("Cell name or number", value=str(atlas.obs.index[0]), key="nb_cell")
    with guard("reading the cell name"):
        cell = parse_cell(atlas, text)
        return np.array([cell]), f"cell {atlas.obs.index[cell]} (number {cell})", k
    return None


def show_result(atlas: Atlas, result: NeighbourResult, label: str) -> None:
    """Map with query and neighbours highlighted, their breakdown, and the table."""
    cols = st.columns(4)
    cols[0].metric("Query cells", f"{len(result.query):,}")
    cols[1].metric("Neighbours found", f"{len(result.cells):,}")
    cols[2].metric("Median distance", f"{np.median(result.distance):.3g}" if len(result.cells) else "—")
    cols[3].metric("Mean vote", f"{np.mean(result.score):.2f}" if len(result.cells) else "—",
                   help="Share of query cells that have this neighbour among their k nearest.")
    map_column, side = st.columns([3, 1.3], gap="medium")
    with map_column:
        overlays = [Overlay(f"neighbours ({len(result.cells):,})", result.cells, size=7),
                    Overlay(f"query ({len(result.query):,})", result.query, colour=QUERY_COLOUR, size=15,
                            symbol="star")]
        show_map(map_figure(atlas, None, overlays, dragmode="pan"), key="nb_map", selectable=False)
        map_caption(atlas)
    with side:
        st.subheader("Who the neighbours are")
        show_breakdown(atlas, result.summary, key="nb_breakdown")
    st.subheader("Neighbours")
    table = result.table(atlas.obs).reset_index(names="cell")
    first = ["cell", "score", "distance", *dict.fromkeys(role_columns(atlas).values())]
    table = table[first + [c for c in table.columns if c not in first]]
    st.dataframe(table, hide_index=True, height=320, key="nb_table")
    left, right = st.columns(2)
    with left:
        download_csv(table, "Download neighbours (CSV)", "neighbours.csv", key="nb_csv")
    with right:
        if st.button("Use these neighbours as the query", icon=":material/repeat:", key="nb_again"):
            st.session_state[SELECTION_KEY] = {"cells": result.cells,
                                               "label": f"{len(result.cells):,} neighbours of {label}"}
            st.session_state.pop("nb_source_3", None)  # back to the first choice: the selection
            st.rerun()


def main() -> None:
    """Draw the Neighbours page."""
    atlas = current_atlas()
    page_header(atlas, "Neighbours", "The cells most similar to a cell or a selection, searched over the whole "
                                     f"atlas in the {atlas.default_embedding} embedding (FAISS "
                                     f"{atlas.manifest.index.factory}).")
    query = query_picker(atlas)
    if query is None:
        return
    cells, label, k = query
    with guard("searching for similar cells"):
        key = (len(cells), hash(np.sort(cells).tobytes()), k)
        result = remembered("neighbours", key, lambda: find_neighbours(atlas, cells, k=k))
        show_result(atlas, result, label)


main()
