"""Compare: condition B against reference A — composition per cell type and differential expression."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app.components import (current_atlas, download_csv, guard, page_header, progress_bar, remembered,
                            role_columns, safe_name)
from engine.atlas import Atlas
from engine.compare import CompareResult, compare_conditions, composition, volcano_frame

COLOUR_A = "#5b7fa6"
COLOUR_B = "#e4572e"
CATEGORY_COLOURS = {"up": "#d62728", "down": "#1f77b4", "n.s.": "#c7c7c7"}
N_LABELS = 8
ALL = "All cell types"


def pickers(atlas: Atlas, conditions: list[str]) -> tuple[str, str, str | None]:
    """Condition A (default: the reference), condition B and the cell type for DE."""
    reference = atlas.reference_condition if atlas.reference_condition in conditions else conditions[0]
    left, middle, right = st.columns(3)
    a = left.selectbox("Reference condition (A)", conditions, index=conditions.index(reference), key="compare_a")
    others = [c for c in conditions if c != a]
    b = middle.selectbox("Compared condition (B)", others, index=0, key="compare_b")
    cell_types = [ALL] + atlas.categories("cell_type")
    cell_type = right.selectbox("Cell type for differential expression", cell_types, key="compare_cell_type")
    return a, b, None if cell_type == ALL else cell_type


def run_compare(atlas: Atlas, a: str, b: str, cell_type: str | None) -> CompareResult:
    """``compare_conditions`` with a progress bar."""
    with progress_bar(f"Comparing {b} with {a}…") as progress:
        return compare_conditions(atlas, a, b, cell_type=cell_type, progress=progress)


def composition_figure(atlas: Atlas, result: CompareResult) -> go.Figure:
    """Mean share of each cell type per condition (bars) with one point per donor."""
    table = result.composition
    roles = role_columns(atlas)
    fig = go.Figure()
    per_donor = None
    if "donor" in roles:
        per_donor = composition(atlas.obs, cell_type_key=roles["cell_type"], condition_key=roles["condition"],
                                donor_key=roles["donor"])
    hover = np.column_stack([table["log2_ratio"], table["padj"].fillna(np.nan), table["n_donors_a"],
                             table["n_donors_b"]])
    for name, column, colour, group in ((result.a, "mean_prop_a", COLOUR_A, "a"),
                                        (result.b, "mean_prop_b", COLOUR_B, "b")):
        fig.add_bar(x=table["cell_type"], y=table[column], name=name, marker_color=colour, opacity=0.8,
                    offsetgroup=group, customdata=hover,
                    hovertemplate=f"<b>%{{x}}</b><br>{name}: %{{y:.1%}} (mean over donors)<br>"
                                  "log2 ratio B/A: %{customdata[0]:.2f}<br>padj: %{customdata[1]:.3g}<extra></extra>")
        if per_donor is not None:
            donors = per_donor[per_donor["condition"] == name]
            fig.add_scatter(x=donors["cell_type"], y=donors["proportion"], mode="markers", offsetgroup=group,
                            name=f"{name} donors", legendgroup=f"{group}_donors", customdata=donors["donor"],
                            marker=dict(color="#222", size=5, opacity=0.7, line=dict(width=0.5, color="white")),
                            hovertemplate="<b>%{x}</b><br>donor %{customdata}: %{y:.1%}<extra></extra>")
    fig.update_layout(barmode="group", scattermode="group", height=430, margin=dict(l=0, r=0, t=30, b=0),
                      yaxis=dict(title="share of cells", tickformat=".0%", gridcolor="#eee"), plot_bgcolor="white",
                      legend=dict(orientation="h", y=1.08, x=0), xaxis=dict(categoryorder="array",
                                                                          categoryarray=list(table["cell_type"])))
    return fig


def volcano_figure(volcano: pd.DataFrame) -> go.Figure:
    """Volcano plot of a ``volcano_frame`` table, with the strongest genes labelled."""
    fig = go.Figure()
    for category, colour in CATEGORY_COLOURS.items():
        part = volcano[volcano["category"] == category]
        fig.add_scattergl(x=part["log2fc"], y=part["neg_log10_padj"], mode="markers", name=category,
                          marker=dict(color=colour, size=6, opacity=0.8), text=part["gene"],
                          customdata=np.column_stack([part["pct_a"] * 100, part["pct_b"] * 100]),
                          hovertemplate="<b>%{text}</b><br>log2 FC %{x:.2f}<br>-log10 padj %{y:.1f}<br>"
                                        "expressing: %{customdata[0]:.0f}% A, %{customdata[1]:.0f}% B<extra></extra>")
    significant = volcano[volcano["category"] != "n.s."]
    labelled = pd.concat([significant.nlargest(N_LABELS, "score"), significant.nsmallest(N_LABELS, "score")])
    for row in labelled.drop_duplicates("gene").itertuples():
        fig.add_annotation(x=row.log2fc, y=row.neg_log10_padj, text=row.gene, showarrow=False, yshift=9,
                           font=dict(size=10))
    lfc, padj = volcano.attrs.get("lfc_threshold", 1.0), volcano.attrs.get("padj_threshold", 0.05)
    for x in (-lfc, lfc):
        fig.add_vline(x=x, line=dict(color="#999", dash="dot", width=1))
    fig.add_hline(y=-np.log10(padj), line=dict(color="#999", dash="dot", width=1))
    fig.update_layout(height=430, margin=dict(l=0, r=0, t=30, b=0), plot_bgcolor="white",
                      xaxis=dict(title="log2 fold change (B / A)", gridcolor="#eee"),
                      yaxis=dict(title="-log10 adjusted p", gridcolor="#eee"), legend=dict(orientation="h", y=1.08))
    return fig


def show_result(atlas: Atlas, result: CompareResult) -> None:
    """Metrics, composition chart, volcano, tables and downloads of a comparison."""
    volcano = volcano_frame(result.de)
    counts = volcano["category"].value_counts()
    scope = result.cell_type or "all cells"
    cols = st.columns(4)
    cols[0].metric(f"Cells in {result.a} (A)", f"{result.n_cells_a:,}")
    cols[1].metric(f"Cells in {result.b} (B)", f"{result.n_cells_b:,}")
    cols[2].metric("Genes up in B", f"{counts.get('up', 0):,}")
    cols[3].metric("Genes down in B", f"{counts.get('down', 0):,}")
    for warning in result.warnings:
        st.warning(warning, icon=":material/warning:")
    left, right = st.columns(2, gap="medium")
    with left:
        st.subheader("Composition per cell type")
        if result.composition is None:
            st.info("This atlas has no cell-type column, so composition cannot be compared.")
        else:
            st.plotly_chart(composition_figure(atlas, result), key="compare_composition",
                            config={"displaylogo": False})
            notes = [n for n in result.composition["note"].unique() if n]
            for note in notes[:3]:
                st.info(note, icon=":material/info:")
            st.caption(f"Test: {result.composition.attrs.get('method', 'per-donor proportions')}.")
    with right:
        st.subheader("Differential expression")
        st.plotly_chart(volcano_figure(volcano), key="compare_volcano", config={"displaylogo": False})
        st.caption(f"{result.b} vs {result.a} in {scope}. {result.method}: cells are treated as independent "
                   "replicates, which they are not, so p-values are optimistic. Donor-aware pseudobulk DE comes later.")
    st.subheader("Genes")
    st.dataframe(result.de, hide_index=True, height=380, key="compare_de", column_config={
        "log2fc": st.column_config.NumberColumn("log2 FC", format="%.2f"),
        "mean_a": st.column_config.NumberColumn(f"mean {result.a}", format="%.3f"),
        "mean_b": st.column_config.NumberColumn(f"mean {result.b}", format="%.3f"),
        "pct_a": st.column_config.NumberColumn(f"% {result.a}", format="percent"),
        "pct_b": st.column_config.NumberColumn(f"% {result.b}", format="percent"),
        "score": st.column_config.NumberColumn("z score", format="%.2f"),
        "pval": st.column_config.NumberColumn("p", format="%.2e"),
        "padj": st.column_config.NumberColumn("padj (BH)", format="%.2e")})
    stem = safe_name("compare", result.b, "vs", result.a, result.cell_type)
    left, right = st.columns(2)
    with left:
        download_csv(result.de, "Download DE table (CSV)", f"{stem}_de.csv", key="compare_de_csv")
    if result.composition is not None:
        with right:
            download_csv(result.composition, "Download composition (CSV)", f"{stem}_composition.csv",
                         key="compare_composition_csv")
        with st.expander("Composition table"):
            st.dataframe(result.composition, hide_index=True)


def main() -> None:
    """Draw the Compare page."""
    atlas = current_atlas()
    page_header(atlas, "Compare", "Condition B against reference A: which cell types change in abundance, and "
                                  "which genes change within a cell type.")
    conditions = atlas.categories("condition")
    if len(conditions) < 2:
        st.warning(f"This atlas has {len(conditions)} condition(s), so there is nothing to compare: rebuild it "
                   "with `vcell build --condition-key COLUMN` naming the column that holds the condition.")
        return
    a, b, cell_type = pickers(atlas, conditions)
    with guard("comparing conditions"):
        result = remembered("compare", (a, b, cell_type), lambda: run_compare(atlas, a, b, cell_type))
        show_result(atlas, result)


main()
