"""Figures of the Perturb page: predicted shifts, the model beside its baselines, where the cells go,
the perturbation across conditions, the reversal null and the additive model of a combination."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from app.components import ACCENT
from app.maps import map_figure
from engine.bundle.atlas import Atlas
from engine.perturb.baselines import AdditiveResult
from engine.perturb.conditions import ReversalResult
from engine.perturb.counterfactual import ModelPerturbResult

MAX_ARROWS = 300
N_BARS = 20
SIGNIFICANT_PADJ = 0.1
UP, DOWN, TARGET = "#d62728", "#1f77b4", "#7f7f7f"
OTHER = "#9aa3ad"
_LAYOUT = dict(margin=dict(l=0, r=10, t=30, b=0), plot_bgcolor="white")
_AXIS = dict(gridcolor="#eee", zeroline=True, zerolinecolor="#888")


def shift_figure(table: pd.DataFrame) -> go.Figure:
    """Horizontal bars of the largest predicted shifts (targets excluded) with 95% intervals."""
    top = table[~table["is_target"]].head(N_BARS).iloc[::-1]
    colour = np.where(top["shift"] >= 0, UP, DOWN)
    fig = go.Figure(go.Bar(
        x=top["shift"], y=top["gene"], orientation="h", marker_color=colour,
        error_x=dict(type="data", symmetric=False, array=top["ci_high"] - top["shift"],
                     arrayminus=top["shift"] - top["ci_low"], color="#444", thickness=1),
        customdata=np.column_stack([top["mean_control"], top["ci_low"], top["ci_high"]]),
        hovertemplate="<b>%{y}</b><br>shift %{x:+.3f} (95% %{customdata[1]:+.3f} to %{customdata[2]:+.3f})"
                      "<br>control mean %{customdata[0]:.3f}<extra></extra>"))
    fig.update_layout(height=max(300, 22 * len(top) + 80), **_LAYOUT,
                      title=dict(text=f"Top {len(top)} predicted shifts (log1p CP10k), 95% intervals",
                                 font=dict(size=14)), xaxis=dict(title="predicted mean shift", **_AXIS))
    return fig


def versus_figure(result: ModelPerturbResult) -> go.Figure:
    """The model's top predicted shifts beside each baseline's for the same genes."""
    top = result.table[~result.table["is_target"]].head(N_BARS)
    fig = go.Figure()
    fig.add_bar(y=top["gene"], x=top["shift"], orientation="h", name="virtual cell (MAE)", marker_color=UP)
    for (name, table), colour in zip(result.baselines.items(), ("#9467bd", "#8c8c8c")):
        same = table.set_index("gene").reindex(top["gene"])
        fig.add_bar(y=top["gene"], x=same["shift"], orientation="h", name=name, marker_color=colour)
    fig.update_layout(barmode="group", height=max(320, 30 * len(top) + 80), **_LAYOUT,
                      legend=dict(orientation="h", y=1.06), yaxis=dict(autorange="reversed"),
                      xaxis=dict(title="predicted mean shift", **_AXIS))
    return fig


def arrows_figure(atlas: Atlas, result: ModelPerturbResult) -> go.Figure:
    """The map with arrows from cells' control positions to where their perturbed neighbours sit."""
    landing = result.landing
    rows = np.arange(len(landing.cells))[:MAX_ARROWS]
    start, end = landing.layout_control[rows], landing.layout_perturbed[rows]
    fig = map_figure(atlas, None, [], height=480, dragmode="pan")
    xs = np.column_stack([start[:, 0], end[:, 0], np.full(len(rows), np.nan)]).ravel()
    ys = np.column_stack([start[:, 1], end[:, 1], np.full(len(rows), np.nan)]).ravel()
    fig.add_scattergl(x=xs, y=ys, mode="lines", line=dict(color=ACCENT, width=1), name="shift", hoverinfo="skip")
    fig.add_scattergl(x=end[:, 0], y=end[:, 1], mode="markers", name="perturbed position",
                      marker=dict(color=ACCENT, size=5), hoverinfo="skip")
    return fig


def _diagonal(fig: go.Figure, values: np.ndarray) -> None:
    """A dashed ``y = x`` line across the finite range of ``values``."""
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    fig.add_scatter(x=[low, high], y=[low, high], mode="lines", name="y = x", hoverinfo="skip",
                    line=dict(color="#888", dash="dash", width=1))


def _gene_scatter(fig: go.Figure, genes: pd.DataFrame, x: str, y: str, name: str, colour: str, hover: str) -> None:
    """One trace of genes at ``(x, y)`` with the gene name (``customdata[0]``) in the hover."""
    fig.add_scattergl(x=genes[x], y=genes[y], mode="markers", name=name,
                      marker=dict(color=colour, size=6, opacity=0.75),
                      customdata=genes[["gene"]].to_numpy(), hovertemplate=hover)


def conditions_figure(table: pd.DataFrame, a: str, b: str) -> go.Figure:
    """Predicted effect in condition A against B per gene (targets excluded), padj < 0.1 highlighted.

    ``table`` is a :func:`~engine.perturb.conditions.compare_conditions_effect` table.
    """
    rest = table[~table["is_target"]]
    significant = rest["padj"].fillna(1.0) < SIGNIFICANT_PADJ
    hover = (f"<b>%{{customdata[0]}}</b><br>effect in {a}: %{{x:+.4f}}<br>effect in {b}: %{{y:+.4f}}"
             "<extra></extra>")
    fig = go.Figure()
    _diagonal(fig, np.r_[rest["effect_a"].to_numpy(), rest["effect_b"].to_numpy()])
    _gene_scatter(fig, rest[~significant], "effect_a", "effect_b", "n.s.", OTHER, hover)
    _gene_scatter(fig, rest[significant], "effect_a", "effect_b", f"padj < {SIGNIFICANT_PADJ:g}", ACCENT, hover)
    fig.update_layout(height=430, **_LAYOUT, legend=dict(orientation="h", y=1.08, x=0),
                      xaxis=dict(title=f"predicted shift in {a} (A)", **_AXIS),
                      yaxis=dict(title=f"predicted shift in {b} (B)", **_AXIS))
    return fig


def reversal_figure(reversal: ReversalResult) -> go.Figure:
    """Histogram of the matched control gene sets' reversal scores, the observed score as a line."""
    fig = go.Figure(go.Histogram(x=reversal.control_scores, nbinsx=20, marker_color=OTHER, name="matched controls",
                                 hovertemplate="score %{x}<br>%{y} control sets<extra></extra>"))
    fig.add_vline(x=reversal.score, line=dict(color=ACCENT, width=2),
                  annotation=dict(text=f"observed {reversal.score:+.3f}", font=dict(color=ACCENT)))
    fig.update_layout(height=330, **_LAYOUT, bargap=0.05, showlegend=False,
                      xaxis=dict(title="reversal score (cosine with A − B)", **_AXIS),
                      yaxis=dict(title="control gene sets", gridcolor="#eee"))
    return fig


def additive_figure(result: AdditiveResult) -> go.Figure:
    """Joint prediction of a combination against the sum of its single-gene predictions (targets excluded).

    ``result`` is an :func:`~engine.perturb.baselines.additive_combination` result.
    """
    rest = result.table[~result.table["is_target"]]
    fig = go.Figure()
    _diagonal(fig, np.r_[rest["additive"].to_numpy(), rest["joint"].to_numpy()])
    _gene_scatter(fig, rest, "additive", "joint", "genes", UP,
                  "<b>%{customdata[0]}</b><br>additive %{x:+.4f}<br>joint %{y:+.4f}<extra></extra>")
    r = result.pearson_r
    fig.update_layout(height=400, **_LAYOUT, showlegend=False,
                      title=dict(text=f"Joint vs additive prediction, Pearson r = {r:.3f}", font=dict(size=14)),
                      xaxis=dict(title="sum of single-gene shifts (additive)", **_AXIS),
                      yaxis=dict(title="joint predicted shift", **_AXIS))
    return fig
