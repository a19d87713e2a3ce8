"""Compare: condition B against reference A — composition, DE per cell type, dot plot, embedding shift, maps."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.compare_figures import composition_figure, dot_plot_figure, shift_figure, volcano_figure
from app.components import (current_atlas, download_csv, guard, page_header, progress_bar, remembered,
                            role_columns)
from app.maps import Colouring, gene_colouring, obs_colouring, split_map_figure
from engine.bundle.atlas import Atlas
from engine.compare.conditions import CompareResult, compare_conditions, volcano_frame
from engine.bundle.select import select_cells
from engine.compare.composition import composition, composition_shift
from engine.compare.dotplot import dot_plot_table, top_genes
from engine.fileio import safe_name
from engine.compare.shift import atlas_embedding_shift

ALL = "All cell types"
PSEUDOBULK = "Pseudobulk (donors as replicates)"
WILCOXON = "Wilcoxon (cells; exploratory)"
METHODS = {PSEUDOBULK: "pseudobulk", WILCOXON: "wilcoxon"}
GENE_KEY = "compare_gene"  # the gene clicked on the volcano, shown on the split maps


def pickers(atlas: Atlas, conditions: list[str]) -> tuple[str, str, str | None, str]:
    """Condition A (default: the reference), condition B, the DE method and the cell type.

    Pseudobulk DE runs within one cell type (default: the most common one); the Wilcoxon test
    may also pool all cells.
    """
    reference = atlas.reference_condition if atlas.reference_condition in conditions else conditions[0]
    cols = st.columns([1, 1, 1.4, 1.3])
    a = cols[0].selectbox("Reference condition (A)", conditions, index=conditions.index(reference), key="compare_a")
    others = [c for c in conditions if c != a]
    b = cols[1].selectbox("Compared condition (B)", others, index=0, key="compare_b")
    has_donors = atlas.roles.get("donor") is not None
    choices = [PSEUDOBULK, WILCOXON] if has_donors else [WILCOXON]
    method = METHODS[cols[2].radio("DE method", choices, key=f"compare_method_{len(choices)}",
                                   help="Pseudobulk sums each donor's counts and tests donors (the honest unit); "
                                        "the Wilcoxon test treats cells as replicates, so its p-values are "
                                        "optimistic.")]
    cell_types = atlas.categories("cell_type")
    if method == "pseudobulk":
        sizes = atlas.summaries.groups.groupby("cell_type", observed=True)["n_cells"].sum()
        largest = str(sizes.idxmax()) if len(sizes) else None
        options = cell_types
        default = options.index(largest) if largest in options else 0
    else:
        options, default = [ALL] + cell_types, 0
    cell_type = cols[3].selectbox("Cell type for differential expression", options, index=default,
                                  key=f"compare_cell_type_{method}")
    return a, b, None if cell_type == ALL else cell_type, method


def run_compare(atlas: Atlas, a: str, b: str, cell_type: str | None, method: str) -> CompareResult:
    """``compare_conditions`` with a progress bar."""
    with progress_bar(f"Comparing {b} with {a}…") as progress:
        return compare_conditions(atlas, a, b, cell_type=cell_type, method=method, progress=progress)


def composition_section(atlas: Atlas, a: str, b: str) -> None:
    """Per-donor composition chart, its test and table."""
    roles = role_columns(atlas)
    if "cell_type" not in roles:
        st.info("This atlas has no cell-type column, so composition cannot be compared.")
        return
    keys = dict(cell_type_key=roles["cell_type"], condition_key=roles["condition"], donor_key=roles.get("donor"))
    shares = remembered("composition", (a, b), lambda: composition_shift(atlas.obs, a, b, **keys))
    table = shares.table
    per_donor = None
    if keys["donor_key"] is not None:
        per_donor = remembered("per_donor", (), lambda: composition(atlas.obs, **keys))
    st.plotly_chart(composition_figure(table, per_donor, a, b), key="compare_composition",
                    config={"displaylogo": False})
    for note in [n for n in table["note"].unique() if n][:3]:
        st.info(note, icon=":material/info:")
    st.caption(f"Test: {shares.method}; one point per donor.")
    with st.expander("Composition table"):
        st.dataframe(table, hide_index=True)
    download_csv(table, "Download composition (CSV)", f"{safe_name('composition', b, 'vs', a)}.csv",
                 key="compare_composition_csv")


def filter_de(de: pd.DataFrame) -> pd.DataFrame:
    """The DE table filtered by the user's gene text, direction and thresholds."""
    cols = st.columns([1.4, 1, 1, 1])
    text = cols[0].text_input("Filter genes", placeholder="e.g. IFI or ISG15", key="compare_filter")
    direction = cols[1].selectbox("Direction", ["up and down", "up in B", "down in B"], key="compare_direction")
    padj = cols[2].select_slider("padj below", [1.0, 0.1, 0.05, 0.01, 0.001], value=1.0, key="compare_padj")
    lfc = cols[3].slider("|log2 FC| at least", 0.0, 5.0, 0.0, step=0.25, key="compare_lfc")
    keep = (de["padj"].fillna(1.0) <= padj) & (de["log2fc"].abs() >= lfc)
    if text.strip():
        keep &= de["gene"].astype(str).str.contains(text.strip(), case=False, regex=False)
    if direction != "up and down":
        keep &= de["log2fc"] > 0 if direction == "up in B" else de["log2fc"] < 0
    return de[keep]


def clicked_gene(event) -> str | None:
    """The gene of a clicked volcano point (``customdata[0]``), if any."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return None
    genes = [p["customdata"][0] for p in points if p.get("customdata")]
    return str(genes[0]) if genes else None


def de_section(atlas: Atlas, result: CompareResult) -> None:
    """Volcano (click a gene), split maps of that gene, the filterable DE table and downloads."""
    volcano = volcano_frame(result.de)
    counts = volcano.table["category"].value_counts()
    cols = st.columns(4)
    cols[0].metric(f"Cells in {result.a} (A)", f"{result.n_cells_a:,}")
    cols[1].metric(f"Cells in {result.b} (B)", f"{result.n_cells_b:,}")
    cols[2].metric("Genes up in B", f"{counts.get('up', 0):,}")
    cols[3].metric("Genes down in B", f"{counts.get('down', 0):,}")
    for warning in result.warnings:
        st.warning(warning, icon=":material/warning:")
    scope = result.cell_type or "all cells"
    left, right = st.columns([1, 1.25], gap="medium")
    with left:
        event = st.plotly_chart(volcano_figure(volcano, st.session_state.get(GENE_KEY)), key="compare_volcano",
                                on_select="rerun", selection_mode="points", config={"displaylogo": False})
        gene = clicked_gene(event)
        if gene is not None and gene != st.session_state.get(GENE_KEY):
            st.session_state[GENE_KEY] = gene
            st.rerun()
        st.caption(f"{result.b} vs {result.a} in {scope}. Method: {result.method}. Click a gene to show it on the maps.")
    with right:
        gene = st.session_state.get(GENE_KEY) or str(volcano.table.sort_values("padj")["gene"].iloc[0])
        with guard("drawing the gene on the maps"):
            condition_maps(atlas, gene_colouring(atlas, gene), result.a, result.b, key="compare_gene_maps",
                           cell_type=result.cell_type)
            if st.button(f"Colour the Explore map by {gene}", icon=":material/scatter_plot:", key="compare_explore"):
                st.session_state["explore_mode"] = "Gene"
                st.session_state["explore_gene"] = gene
                st.switch_page("views/explore.py")
    shown = filter_de(result.de)
    st.caption(f"{len(shown):,} of {len(result.de):,} genes; click a column header to sort.")
    st.dataframe(shown, hide_index=True, height=380, key="compare_de", column_config=de_columns(result))
    stem = safe_name("compare", result.b, "vs", result.a, result.cell_type, result.method.split()[0])
    left, right = st.columns(2)
    with left:
        download_csv(shown, "Download these genes (CSV)", f"{stem}_de_filtered.csv", key="compare_de_csv_shown")
    with right:
        download_csv(result.de, "Download the whole DE table (CSV)", f"{stem}_de.csv", key="compare_de_csv")


def de_columns(result: CompareResult) -> dict:
    """Column formats of a DE table."""
    number = st.column_config.NumberColumn
    return {"log2fc": number("log2 FC", format="%.2f"), "lfc_se": number("log2 FC SE", format="%.2f"),
            "mean_a": number(f"mean {result.a}", format="%.3f"), "mean_b": number(f"mean {result.b}", format="%.3f"),
            "pct_a": number(f"% {result.a}", format="percent"), "pct_b": number(f"% {result.b}", format="percent"),
            "score": number("statistic", format="%.2f"), "stat": number("statistic", format="%.2f"),
            "pval": number("p", format="%.2e"), "padj": number("padj (BH)", format="%.2e"),
            "base_mean": number("mean count", format="%.1f")}


def condition_maps(atlas: Atlas, colouring: Colouring, a: str, b: str, key: str,
                   cell_type: str | None = None) -> None:
    """Side-by-side maps of conditions A and B (only ``cell_type``'s cells when one is given)."""
    groups = [(name, select_cells(atlas.obs, condition=name, cell_type=cell_type, roles=atlas.roles))
              for name in (a, b)]
    st.plotly_chart(split_map_figure(atlas, colouring, groups), key=key,
                    config={"displaylogo": False, "scrollZoom": True})


def dot_plot_section(atlas: Atlas, result: CompareResult) -> None:
    """Top DE genes across cell types × the two conditions, from the bundle's summaries."""
    n = st.slider("Genes per direction", 3, 25, 8, key="compare_dot_n")
    genes = top_genes(result.de, n)
    positions = atlas.genes.resolve_many(genes)
    table = dot_plot_table(atlas.summaries, positions, genes, conditions=[result.a, result.b], min_cells=10)
    st.plotly_chart(dot_plot_figure(table, genes, result.a, result.b), key="compare_dotplot",
                    config={"displaylogo": False})
    st.caption(f"The {n} most up- and down-regulated genes of {result.b} vs {result.a} in "
               f"{result.cell_type or 'all cells'}, in every cell type with at least 10 cells. Dot size: share of "
               "cells expressing; colour: mean expression relative to the gene's highest row. From the bundle's "
               "summaries.")


def shift_section(atlas: Atlas, a: str, b: str) -> None:
    """Embedding shift per cell type with its donor-permutation null."""
    if atlas.roles.get("donor") is None:
        st.info("The embedding shift treats donors as the unit, and this atlas has no donor column: rebuild it "
                "with `vcell build --donor-key COLUMN`.", icon=":material/info:")
        return
    shift = remembered("shift", (a, b), lambda: atlas_embedding_shift(atlas, a, b))
    table = shift.table
    st.plotly_chart(shift_figure(table, a, b), key="compare_shift", config={"displaylogo": False})
    st.caption(f"How far {b} cells of each type sit from {a} cells in the {shift.embedding} embedding, "
               "as the distance between mean donor centroids divided by the typical distance between two donors of "
               "the same condition (dotted line: 1). Red: permutation p < 0.05 (condition labels shuffled among "
               "donors).")
    for note in [n for n in table["note"].unique() if n][:3]:
        st.info(note, icon=":material/info:")
    st.dataframe(table, hide_index=True, key="compare_shift_table")
    download_csv(table, "Download embedding shift (CSV)", f"{safe_name('shift', b, 'vs', a)}.csv",
                 key="compare_shift_csv")


def main() -> None:
    """Draw the Compare page."""
    atlas = current_atlas()
    page_header(atlas, "Compare", "Condition B against reference A, donors as the unit: which cell types change in "
                                  "abundance, which genes change within a cell type, and which cell types move.")
    conditions = atlas.categories("condition")
    if len(conditions) < 2:
        st.warning(f"This atlas has {len(conditions)} condition(s), so there is nothing to compare: rebuild it "
                   "with `vcell build --condition-key COLUMN` naming the column that holds the condition.")
        return
    a, b, cell_type, method = pickers(atlas, conditions)
    tabs = st.tabs(["Differential expression", "Composition", "Dot plot", "Embedding shift", "Maps"])
    result = None
    with tabs[0], guard("comparing conditions"):
        result = remembered("compare", (a, b, cell_type, method),
                            lambda: run_compare(atlas, a, b, cell_type, method))
        de_section(atlas, result)
    with tabs[1], guard("comparing composition"):
        composition_section(atlas, a, b)
    with tabs[2], guard("drawing the dot plot"):
        if result is None:
            st.info("The dot plot shows the top genes of the differential-expression result, which failed above.")
        else:
            dot_plot_section(atlas, result)
    with tabs[3], guard("measuring the embedding shift"):
        shift_section(atlas, a, b)
    with tabs[4], guard("drawing the maps"):
        column = role_columns(atlas).get("cell_type")
        if column is None:
            st.info("This atlas has no cell-type column to colour the maps by.")
        else:
            condition_maps(atlas, obs_colouring(atlas, column), a, b, key="compare_type_maps")

main()
