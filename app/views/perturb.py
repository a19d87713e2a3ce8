"""Perturb: knock a gene out / down or over-express it in a population, and see the predicted shifts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app.components import (ACCENT, current_atlas, download_csv, gene_options, guard, page_header, progress_bar,
                            remembered, safe_name)
from app.maps import Overlay, map_figure, show_map
from engine.atlas import Atlas
from engine.compare import select_cells
from engine.perturb import DEFAULT_STRENGTH, MAX_GENES, PerturbResult, perturb
from engine.virtual_cell import ModelPerturbResult

MODES = {"ko": "Knock out", "kd": "Knock down", "oe": "Over-express"}
PREDICTORS = {"model": "Virtual cell (masked autoencoder), with baselines", "ridge": "Ridge co-expression baseline"}
MAX_ARROWS = 300
ALL = "All"
N_BARS = 20
UP, DOWN, TARGET = "#d62728", "#1f77b4", "#7f7f7f"
PARAMS_KEY = "perturb_params"
COLUMN_LABELS = {"mean_control": "control mean", "shift": "predicted shift", "ci_low": "95% low",
                 "ci_high": "95% high", "mean_perturbed": "perturbed mean"}


def has_virtual_cell(atlas: Atlas) -> bool:
    """True when the bundle's model is a masked autoencoder (the virtual cell)."""
    return atlas.manifest.get("model", {}).get("name") in ("mae", "gp-mae")


def controls(atlas: Atlas) -> dict:
    """Genes, mode, strength, population and predictor; returns them as ``perturb`` keyword arguments."""
    choices = list(PREDICTORS) if has_virtual_cell(atlas) else ["ridge"]
    method = st.radio("Predictor", choices, format_func=PREDICTORS.get, key=f"perturb_method_{len(choices)}")
    genes = st.multiselect("Genes to perturb", gene_options(atlas), accept_new_options=True,
                           max_selections=MAX_GENES, placeholder="Type gene symbols, e.g. STAT1",
                           key="perturb_genes")
    mode = st.radio("Perturbation", list(MODES), format_func=MODES.get, horizontal=True, key="perturb_mode")
    strength = None
    if mode == "kd":
        strength = st.slider("Remaining expression", 0.0, 0.95, DEFAULT_STRENGTH["kd"], step=0.05,
                             format="percent", key="perturb_kd")
    elif mode == "oe":
        strength = st.slider("Multiple of the current expression", 1.5, 20.0, DEFAULT_STRENGTH["oe"], step=0.5,
                             format="%.1f×", key="perturb_oe")
    else:
        st.caption("A knock-out sets the genes' expression to zero.")
    left, right = st.columns(2)
    cell_type = left.selectbox("Cell type", [ALL] + atlas.categories("cell_type"), key="perturb_cell_type")
    condition = right.selectbox("Condition", [ALL] + atlas.categories("condition"), key="perturb_condition")
    return {"genes": tuple(genes), "mode": mode, "strength": strength,
            "cell_type": None if cell_type == ALL else cell_type,
            "condition": None if condition == ALL else condition, "method": method}


def run_perturb(atlas: Atlas, params: dict) -> PerturbResult:
    """``perturb`` with a progress bar."""
    with progress_bar("Predicting the perturbation…") as progress:
        return perturb(atlas, list(params["genes"]), params["mode"], strength=params["strength"],
                       cell_type=params["cell_type"], condition=params["condition"], method=params["method"],
                       progress=progress)


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
    fig.update_layout(height=max(300, 22 * len(top) + 80), margin=dict(l=0, r=10, t=30, b=0), plot_bgcolor="white",
                      title=dict(text=f"Top {len(top)} predicted shifts (log1p CP10k), 95% intervals",
                                 font=dict(size=14)), xaxis=dict(title="predicted mean shift", gridcolor="#eee",
                                                                 zeroline=True, zerolinecolor="#888"))
    return fig


def versus_figure(result: ModelPerturbResult) -> go.Figure:
    """The model's top predicted shifts beside each baseline's for the same genes."""
    top = result.table[~result.table["is_target"]].head(N_BARS)
    fig = go.Figure()
    fig.add_bar(y=top["gene"], x=top["shift"], orientation="h", name="virtual cell (MAE)", marker_color=UP)
    for (name, table), colour in zip(result.baselines.items(), ("#9467bd", "#8c8c8c")):
        same = table.set_index("gene").reindex(top["gene"])
        fig.add_bar(y=top["gene"], x=same["shift"], orientation="h", name=name, marker_color=colour)
    fig.update_layout(barmode="group", height=max(320, 30 * len(top) + 80), margin=dict(l=0, r=10, t=30, b=0),
                      plot_bgcolor="white", legend=dict(orientation="h", y=1.06),
                      yaxis=dict(autorange="reversed"), xaxis=dict(title="predicted mean shift", gridcolor="#eee",
                                                                   zeroline=True, zerolinecolor="#888"))
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


def show_landing(atlas: Atlas, result: ModelPerturbResult) -> None:
    """Where the perturbed cells land: arrows on the map and the neighbours' composition shift."""
    if result.landing is None:
        st.info(result.landing_note or "Where the cells go is not available for this bundle.", icon=":material/info:")
        return
    landing = result.landing
    cols = st.columns(3)
    cols[0].metric("Cells followed", f"{len(landing.cells):,}")
    cols[1].metric("Embedding shift", f"{landing.latent_shift:.3f}",
                   f"neighbour distance {landing.neighbour_distance:.3f}", delta_color="off", delta_arrow="off")
    if landing.changed_fraction is not None:
        cols[2].metric("Change their neighbours' cell type", f"{landing.changed_fraction:.1%}")
    left, right = st.columns([1.4, 1], gap="medium")
    with left:
        st.plotly_chart(arrows_figure(atlas, result), key="perturb_arrows", config={"displaylogo": False})
        st.caption("Arrows: each followed cell's map position (its real neighbours' mean position) before and after "
                   "the perturbation, in the model's embedding.")
    with right:
        shifted = landing.composition.reindex(landing.composition["shift"].abs().sort_values(ascending=False).index)
        st.dataframe(shifted.head(15), hide_index=True, key="perturb_landing", column_config={
            c: st.column_config.NumberColumn(c, format="%.3f") for c in ("control", "perturbed", "shift")})
        st.caption("Composition of the nearest real cells of control and perturbed cells.")


def show_result(result: PerturbResult) -> None:
    """Metrics, warnings, the shift chart, the table and its download."""
    table = result.table
    targets = table[table["is_target"]]
    st.subheader(f"Predicted effect of {result.spec.describe()} in {result.population}")
    cols = st.columns(3)
    cols[0].metric("Cells used", f"{result.n_cells:,}", "subsampled" if result.subsampled else None,
                   delta_color="off", delta_arrow="off")
    for col, row in zip(cols[1:], targets.head(2).itertuples()):
        col.metric(f"{row.gene} (target)", f"{row.mean_perturbed:.2f}", f"{row.shift:+.2f} from {row.mean_control:.2f}",
                   delta_color="off")
    for warning in result.warnings:
        st.warning(warning, icon=":material/warning:")
    st.plotly_chart(shift_figure(table), key="perturb_shifts", config={"displaylogo": False})
    st.caption(f"Method: {result.method}.")
    if isinstance(result, ModelPerturbResult):
        st.subheader("The model beside its baselines")
        st.plotly_chart(versus_figure(result), key="perturb_versus", config={"displaylogo": False})
        st.caption("On the generated atlas with a known network the masked autoencoder lost to the ridge baseline "
                   "in every case measured (benchmarks/RESULTS.md): read the model next to the baselines.")
        st.subheader("Where the cells go")
        show_landing(current_atlas(), result)
        for name, baseline in result.baselines.items():
            download_csv(baseline, f"Download the {name} table (CSV)",
                         safe_name("perturb", name, result.spec.mode, *result.spec.genes) + ".csv",
                         key=f"perturb_csv_{safe_name(name)}")
    st.dataframe(table, hide_index=True, height=320, key="perturb_table", column_config={
        name: st.column_config.NumberColumn(label, format="%.4f") for name, label in COLUMN_LABELS.items()})
    download_csv(table, "Download predicted shifts (CSV)",
                 safe_name("perturb", result.spec.mode, *result.spec.genes, result.cell_type, result.condition)
                 + ".csv", key="perturb_csv")


def main() -> None:
    """Draw the Perturb page."""
    atlas = current_atlas()
    page_header(atlas, "Perturb", "In-silico knock-out, knock-down or over-expression of genes in a chosen "
                                  "population, and the predicted expression shift of every other gene.")
    if has_virtual_cell(atlas):
        st.info("**Virtual cell**: the masked autoencoder predicts every gene with the targets clamped (never "
                "masked), averaged over random masks, with the no-change and ridge co-expression baselines beside "
                "it. Intervals: mask Monte Carlo and donor bootstrap.", icon=":material/info:")
    else:
        st.info("**Baseline: ridge regression on co-expression** — it learns which genes vary together in the chosen "
                "cells, not what causes what. Build the bundle with `--model mae` for the model-based virtual cell.",
                icon=":material/info:")
    left, right = st.columns([1, 1.4], gap="large")
    with left:
        params = controls(atlas)
        if st.button("Predict", type="primary", icon=":material/play_arrow:", key="perturb_run",
                     disabled=not params["genes"]):
            st.session_state[PARAMS_KEY] = params
    with right:
        with guard("selecting the population"):
            cells = np.arange(atlas.n_cells)
            if params["cell_type"] or params["condition"]:
                cells = select_cells(atlas.obs, condition=params["condition"], cell_type=params["cell_type"],
                                     roles=atlas.roles)
            st.caption(f"Population: {len(cells):,} cells (highlighted).")
            show_map(map_figure(atlas, None, [Overlay("population", cells, size=4)], height=420, dragmode="pan"),
                     key="perturb_map", selectable=False)
    chosen = st.session_state.get(PARAMS_KEY)
    if chosen is None:
        st.caption("Pick one or more genes and press **Predict**.")
        return
    with guard("predicting the perturbation"):
        result = remembered("perturb", tuple(chosen.items()), lambda: run_perturb(atlas, chosen))
        show_result(result)


main()
