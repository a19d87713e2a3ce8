"""Figures of the Compare page: composition with donor points, volcano, dot plot, embedding shift."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from engine.compare.conditions import VolcanoResult

COLOUR_A = "#5b7fa6"
COLOUR_B = "#e4572e"
CATEGORY_COLOURS = {"up": "#d62728", "down": "#1f77b4", "n.s.": "#c7c7c7"}
N_LABELS = 8
_LAYOUT = dict(margin=dict(l=0, r=0, t=30, b=0), plot_bgcolor="white")


def composition_figure(table: pd.DataFrame, per_donor: pd.DataFrame | None, a: str, b: str) -> go.Figure:
    """Mean share of each cell type per condition (bars) with one point per donor.

    ``table`` is a ``composition_shift`` table; ``per_donor`` a ``composition`` table (or ``None``).
    """
    fig = go.Figure()
    hover = np.column_stack([table["log2_ratio"], table["padj"].fillna(np.nan), table["n_donors_a"],
                             table["n_donors_b"]])
    for name, column, colour, group in ((a, "mean_prop_a", COLOUR_A, "a"), (b, "mean_prop_b", COLOUR_B, "b")):
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
    fig.update_layout(barmode="group", scattermode="group", height=430, **_LAYOUT,
                      yaxis=dict(title="share of cells", tickformat=".0%", gridcolor="#eee"),
                      legend=dict(orientation="h", y=1.08, x=0),
                      xaxis=dict(categoryorder="array", categoryarray=list(table["cell_type"])))
    return fig


def volcano_figure(result: VolcanoResult, highlight: str | None = None) -> go.Figure:
    """Volcano plot of a ``volcano_frame`` result; the strongest genes (and ``highlight``) labelled.

    Each point's ``customdata[0]`` is its gene, so a click can be mapped back to it.
    """
    volcano = result.table
    fig = go.Figure()
    for category, colour in CATEGORY_COLOURS.items():
        part = volcano[volcano["category"] == category]
        fig.add_scattergl(x=part["log2fc"], y=part["neg_log10_padj"], mode="markers", name=category,
                          marker=dict(color=colour, size=6, opacity=0.8),
                          customdata=np.column_stack([part["gene"], part["pct_a"] * 100, part["pct_b"] * 100]),
                          hovertemplate="<b>%{customdata[0]}</b><br>log2 FC %{x:.2f}<br>-log10 padj %{y:.1f}<br>"
                                        "expressing: %{customdata[1]:.0f}% A, %{customdata[2]:.0f}% B"
                                        "<extra>click to show on the maps</extra>")
    significant = volcano[volcano["category"] != "n.s."]
    strength = significant["neg_log10_padj"] * np.sign(significant["log2fc"])
    labelled = pd.concat([significant.loc[strength.nlargest(N_LABELS).index],
                          significant.loc[strength.nsmallest(N_LABELS).index]])
    if highlight is not None:
        labelled = pd.concat([labelled, volcano[volcano["gene"] == highlight]])
    for row in labelled.drop_duplicates("gene").itertuples():
        chosen = row.gene == highlight
        fig.add_annotation(x=row.log2fc, y=row.neg_log10_padj, text=f"<b>{row.gene}</b>" if chosen else row.gene,
                           showarrow=chosen, arrowhead=0, yshift=0 if chosen else 9,
                           font=dict(size=12 if chosen else 10))
    lfc, padj = result.lfc_threshold, result.padj_threshold
    for x in (-lfc, lfc):
        fig.add_vline(x=x, line=dict(color="#999", dash="dot", width=1))
    fig.add_hline(y=-np.log10(padj), line=dict(color="#999", dash="dot", width=1))
    fig.update_layout(height=430, **_LAYOUT, clickmode="event+select",
                      xaxis=dict(title="log2 fold change (B / A)", gridcolor="#eee"),
                      yaxis=dict(title="-log10 adjusted p", gridcolor="#eee"), legend=dict(orientation="h", y=1.08))
    return fig


def dot_plot_figure(table: pd.DataFrame, genes: list[str], a: str, b: str) -> go.Figure:
    """Dot plot: rows cell type × condition, columns genes; size = % expressing, colour = scaled mean.

    ``table`` is a ``dot_plot_table`` result.
    """
    rows = [f"{cell_type} · {condition}" for cell_type, condition in zip(table["cell_type"], table["condition"])]
    order = list(dict.fromkeys(rows))
    fig = go.Figure(go.Scatter(
        x=table["gene"], y=rows, mode="markers",
        marker=dict(size=4 + 18 * np.sqrt(table["frac_expressing"].to_numpy()), color=table["scaled_mean"],
                    colorscale="Reds", cmin=0, cmax=1, line=dict(width=0.5, color="#888"),
                    colorbar=dict(title=dict(text="mean / gene max", side="right"), thickness=12)),
        customdata=np.column_stack([table["mean"], table["frac_expressing"] * 100, table["n_cells"]]),
        hovertemplate="<b>%{x}</b> in %{y}<br>mean log1p CP10k %{customdata[0]:.2f}<br>"
                      "expressing %{customdata[1]:.0f}% of %{customdata[2]:,} cells<extra></extra>"))
    fig.update_layout(height=max(260, 22 * len(order) + 120), **_LAYOUT,
                      xaxis=dict(categoryorder="array", categoryarray=genes, tickangle=-45, side="top"),
                      yaxis=dict(categoryorder="array", categoryarray=order[::-1], title=None))
    for i, label in enumerate(order[::-1]):
        if label.endswith(f" · {b}"):
            fig.add_hrect(y0=i - 0.5, y1=i + 0.5, fillcolor=COLOUR_B, opacity=0.06, line_width=0)
    return fig


def shift_figure(table: pd.DataFrame, a: str, b: str) -> go.Figure:
    """Bars of each cell type's embedding shift relative to donor-to-donor spread, with its null."""
    shown = table.dropna(subset=["relative_shift"]).iloc[::-1]
    significant = shown["pval"] < 0.05
    fig = go.Figure(go.Bar(
        x=shown["relative_shift"], y=shown["cell_type"], orientation="h",
        marker_color=np.where(significant, COLOUR_B, "#9aa5b1"),
        customdata=np.column_stack([shown["shift"], shown["null_mean"], shown["pval"], shown["n_donors_a"],
                                    shown["n_donors_b"]]),
        hovertemplate="<b>%{y}</b><br>shift %{customdata[0]:.3f} (%{x:.2f}× donor spread)<br>"
                      "null mean %{customdata[1]:.3f}, p %{customdata[2]:.3g}<br>"
                      "donors: %{customdata[3]} A, %{customdata[4]} B<extra></extra>"))
    fig.add_vline(x=1.0, line=dict(color="#999", dash="dot", width=1))
    fig.update_layout(height=max(220, 26 * len(shown) + 80), **_LAYOUT,
                      xaxis=dict(title=f"shift of {b} from {a} / donor-to-donor distance", gridcolor="#eee"))
    return fig
