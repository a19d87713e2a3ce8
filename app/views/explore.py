"""Explore: the atlas map coloured by any obs column or gene; lasso / box selections summarised."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app.components import colour_columns, column_label, current_atlas, gene_options, guard, page_header
from app.maps import (Colouring, gene_colouring, map_caption, map_figure, obs_colouring, show_breakdown,
                      show_map)
from engine.bundle.atlas import Atlas
from engine.space.selection import summarise_selection

SELECTION_KEY = "selection"  # handed to the Neighbours page: {"cells": array, "label": str}


def colour_controls(atlas: Atlas) -> Colouring | None:
    """The "colour by" controls; returns the chosen colouring (``None`` after an error)."""
    left, right = st.columns([1, 3], vertical_alignment="bottom")
    mode = left.radio("Colour by", ["Metadata", "Gene"], horizontal=True, key="explore_mode")
    if mode == "Gene":
        gene = right.selectbox("Gene", gene_options(atlas), index=None, accept_new_options=True,
                               placeholder="Type a gene symbol or Ensembl ID, e.g. ISG15", key="explore_gene")
        if not gene:
            st.caption("Pick or type a gene to colour the cells by its expression.")
            return None
        with guard("reading the gene's expression"), st.spinner(f"Reading {gene} for every cell…"):
            colouring = gene_colouring(atlas, gene)
            expressing = float(np.mean(colouring.values > 0))
            st.caption(f"{colouring.label}: expressed in {expressing:.1%} of cells, "
                       f"maximum {colouring.values.max():.2f}.")
            return colouring
        return None
    columns = colour_columns(atlas)
    column = right.selectbox("Column", columns, format_func=lambda c: column_label(atlas, c),
                             key="explore_column")
    return obs_colouring(atlas, column)


def selection_panel(atlas: Atlas, cells: np.ndarray) -> None:
    """Counts and breakdowns of the selected cells (or of the whole atlas when none)."""
    if len(cells) == 0:
        st.subheader("All cells")
        st.info("Draw a lasso or box around cells on the map to summarise them.", icon=":material/gesture:")
        summary = summarise_selection(atlas.obs, np.arange(atlas.n_cells), atlas.roles)
        show_breakdown(atlas, summary, key="explore_all")
        return
    st.subheader("Selection")
    with guard("summarising the selection"):
        summary = summarise_selection(atlas.obs, cells, atlas.roles)
        st.metric("Cells selected", f"{summary.n_cells:,}", f"{summary.n_cells / atlas.n_cells:.1%} of the atlas",
                  delta_color="off", delta_arrow="off")
        show_breakdown(atlas, summary, key="explore_selection")
        if st.button("Find cells like these", icon=":material/hub:", type="primary", key="explore_use"):
            st.session_state[SELECTION_KEY] = {"cells": cells, "label": f"{len(cells):,} cells selected on Explore"}
            st.switch_page("views/neighbours.py")


def main() -> None:
    """Draw the Explore page."""
    atlas = current_atlas()
    page_header(atlas, "Explore", "The 2-D map of every cell. Colour it by metadata or a gene; hover for details; "
                                  "select cells with the lasso or box tool to see who they are.")
    colouring = colour_controls(atlas)
    map_column, side = st.columns([3, 1.3], gap="medium")
    with map_column:
        cells = show_map(map_figure(atlas, colouring), key="explore_map", atlas=atlas)
        map_caption(atlas)
    with side:
        selection_panel(atlas, cells)


main()
