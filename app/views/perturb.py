"""Perturb: knock a gene out / down or over-express it in a population, and see the predicted shifts."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
import streamlit as st

from app.components import current_atlas, download_csv, gene_options, guard, page_header, progress_bar, remembered
from app.maps import Overlay, map_figure, show_map
from app.perturb_figures import (
    additive_figure,
    arrows_figure,
    conditions_figure,
    reversal_figure,
    shift_figure,
    versus_figure,
)
from engine.bundle.atlas import Atlas
from engine.bundle.select import select_cells
from engine.errors import InputError
from engine.fileio import safe_name
from engine.perturb.baselines import LatentTransferResult, additive_combination, latent_transfer
from engine.perturb.conditions import ConditionEffectResult, ReversalResult, compare_conditions_effect, reversal_score
from engine.perturb.counterfactual import ModelPerturbResult, has_virtual_cell
from engine.perturb.predict import available_methods, perturb
from engine.perturb.spec import DEFAULT_STRENGTH, MAX_GENES, PerturbResult

MODES = {"ko": "Knock out", "kd": "Knock down", "oe": "Over-express"}
PREDICTORS = {"model": "Virtual cell (masked autoencoder), with baselines", "ridge": "Ridge co-expression baseline"}
ALL = "All"
PARAMS_KEY = "perturb_params"
CONDITIONS_KEY = "perturb_conditions_params"
N_TABLE_ROWS = 100
T = TypeVar("T")
COLUMN_LABELS = {"mean_control": "control mean", "shift": "predicted shift", "ci_low": "95% low",
                 "ci_high": "95% high", "mean_perturbed": "perturbed mean"}


def controls(atlas: Atlas) -> dict:
    """Genes, mode, strength, population and predictor; returns them as ``perturb`` keyword arguments."""
    choices = available_methods(atlas)
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


def computed(name: str, params: tuple, text: str, compute: Callable[[], T]) -> T:
    """``remembered(name, params, compute)`` with a progress bar while ``compute`` runs."""
    def run() -> T:
        with progress_bar(text) as progress:
            progress(0.05, text)
            return compute()
    return remembered(name, params, run)


def condition_pickers(atlas: Atlas) -> tuple[str, str] | None:
    """Condition A (default: the reference, else the first) and B (default: the first other one)."""
    conditions = atlas.categories("condition")
    if len(conditions) < 2:
        st.info(f"This atlas has {len(conditions)} condition(s): there is nothing to compare.", icon=":material/info:")
        return None
    reference = atlas.reference_condition if atlas.reference_condition in conditions else conditions[0]
    left, right = st.columns(2)
    a = left.selectbox("Healthy / reference condition (A)", conditions, index=conditions.index(reference),
                       key="perturb_condition_a")
    b = right.selectbox("Compared condition (B)", [c for c in conditions if c != a], index=0, key="perturb_condition_b")
    return a, b


def latent_transfer_or_none(atlas: Atlas, cell_type: str, a: str, b: str) -> LatentTransferResult | None:
    """``latent_transfer`` from the other cell types; ``None`` (and why, as a note) when it cannot run."""
    with guard("transferring the latent condition effect"):
        try:
            return computed("perturb_latent", (cell_type, a, b), "Latent transfer from the other cell types…",
                            lambda: latent_transfer(atlas, cell_type=cell_type, condition_a=a, condition_b=b,
                                                    source="others"))
        except InputError as err:
            st.info(f"Latent transfer: {err}", icon=":material/info:")
    return None


def condition_metrics(effect: ConditionEffectResult | None, reversal: ReversalResult | None,
                      transfer: LatentTransferResult | None) -> None:
    """Units permuted, their number, the reversal score against its controls, latent transfer's r."""
    cols = st.columns(4)
    off = dict(delta_color="off", delta_arrow="off")
    if effect is not None:
        cols[0].metric("Units permuted", effect.units, f"{effect.n_permutations} relabellings", **off)
        cols[1].metric("Units (A + B)", f"{effect.n_units[0]} + {effect.n_units[1]}",
                       f"{effect.n_cells[0]:,} + {effect.n_cells[1]:,} cells", **off)
    if reversal is not None:
        cols[2].metric("Reversal score", f"{reversal.score:+.3f}",
                       f"above {reversal.percentile:.0%} of matched controls, p = {reversal.pval:.2g}", **off,
                       help="Cosine between the predicted shift in B and the observed A − B difference.")
    if transfer is not None:
        cols[3].metric("Latent transfer r", f"{transfer.r:.3f}", "condition effect from other cell types", **off)


def show_effect(effect: ConditionEffectResult, a: str, b: str, file_name: str) -> None:
    """Effect in A vs B per gene, the notes, the table of the largest differences and its download."""
    st.plotly_chart(conditions_figure(effect.table, a, b), key="perturb_conditions_scatter",
                    config={"displaylogo": False})
    st.caption(f"{effect.description}. One point per gene, targets left out; highlighted: padj < 0.1 "
               f"({effect.units} permuted between conditions).")
    for note in effect.notes:
        st.info(note, icon=":material/info:")
    st.dataframe(effect.table.head(N_TABLE_ROWS), hide_index=True, height=320, key="perturb_conditions_table",
                 column_config={**{c: st.column_config.NumberColumn(c, format="%.4f")
                                   for c in ("effect_a", "effect_b", "difference")},
                                **{c: st.column_config.NumberColumn(c, format="%.3g") for c in ("pval", "padj")}})
    st.caption(f"The {min(N_TABLE_ROWS, len(effect.table))} genes whose effect differs most; the CSV has all.")
    download_csv(effect.table, "Download the across-conditions table (CSV)", file_name, key="perturb_conditions_csv")


def show_conditions(atlas: Atlas, chosen: dict, a: str, b: str) -> None:
    """Run and show the perturbation in A and B, its reversal score and latent transfer."""
    params = dict(genes=list(chosen["genes"]), mode=chosen["mode"], strength=chosen["strength"],
                  method=chosen["method"], cell_type=chosen["cell_type"], condition_a=a, condition_b=b)
    key = (tuple(chosen.items()), a, b)
    effect = reversal = None
    with guard("comparing the perturbation across conditions"):
        effect = computed("perturb_conditions", key, f"Predicting the perturbation in {a} and in {b}…",
                          lambda: compare_conditions_effect(atlas, **params))
    with guard("scoring the reversal"):
        reversal = computed("perturb_reversal", key, "Scoring the reversal against matched control genes…",
                            lambda: reversal_score(atlas, **params))
    transfer = latent_transfer_or_none(atlas, chosen["cell_type"], a, b)
    condition_metrics(effect, reversal, transfer)
    left, right = st.columns([1.3, 1], gap="medium")
    if effect is not None:
        with left:
            show_effect(effect, a, b, safe_name("perturb", chosen["mode"], *chosen["genes"], chosen["cell_type"],
                                                b, "vs", a) + ".csv")
    if reversal is not None:
        with right:
            st.plotly_chart(reversal_figure(reversal), key="perturb_reversal", config={"displaylogo": False})
            for note in reversal.notes:
                st.caption(note)
    for note in transfer.notes if transfer is not None else []:
        st.caption(note)


def conditions_section(atlas: Atlas, chosen: dict) -> None:
    """Across conditions: pick A and B, and on the button the same perturbation compared in both."""
    st.subheader("Across conditions")
    st.caption(f"The same perturbation in '{chosen['cell_type']}' cells of a healthy / reference condition (A) and "
               "another (B): the difference of its effects with a permutation null, whether it moves B toward A, "
               "and latent transfer of the condition effect from the other cell types.")
    picked = condition_pickers(atlas)
    if picked is None:
        return
    if st.button("Compare conditions", icon=":material/compare_arrows:", key="perturb_conditions_run"):
        st.session_state[CONDITIONS_KEY] = (tuple(chosen.items()), *picked)
    stored = st.session_state.get(CONDITIONS_KEY)
    if stored is None or stored[0] != tuple(chosen.items()):
        st.caption("Pick the two conditions and press **Compare conditions**.")
        return
    show_conditions(atlas, chosen, *stored[1:])


def additive_section(atlas: Atlas, chosen: dict) -> None:
    """Combination vs the additive model: the joint prediction against the sum of single-gene ones."""
    st.subheader("Combination vs the additive model")
    with guard("predicting each gene alone"):
        result = computed("perturb_additive", tuple(chosen.items()), "Predicting each gene alone…",
                          lambda: additive_combination(atlas, list(chosen["genes"]), chosen["mode"],
                                                       cell_type=chosen["cell_type"], condition=chosen["condition"],
                                                       strength=chosen["strength"], method=chosen["method"]))
        st.plotly_chart(additive_figure(result), key="perturb_additive", config={"displaylogo": False})
        st.caption(f"{result.spec} in {result.n_cells:,} cells: one point per gene "
                   "(targets left out); off the dashed line the model predicts more or less than the sum of each "
                   "gene's own effect.")
        download_csv(result.table, "Download joint vs additive (CSV)",
                     safe_name("perturb", "additive", chosen["mode"], *chosen["genes"], chosen["cell_type"],
                               chosen["condition"]) + ".csv", key="perturb_additive_csv")


def main() -> None:
    """Draw the Perturb page."""
    atlas = current_atlas()
    page_header(atlas, "Perturb", "In-silico knock-out, knock-down or over-expression of genes in a chosen "
                                  "population, and the predicted expression shift of every other gene.")
    if has_virtual_cell(atlas):
        seeds = len(atlas.manifest.model.seeds or (0,))
        st.info("**Virtual cell**: the masked autoencoder predicts every gene with the targets clamped (never "
                "masked), averaged over random masks, with the no-change and ridge co-expression baselines beside "
                "it. Intervals: mask Monte Carlo and donor bootstrap"
                + (f", and the spread between {seeds} training seeds." if seeds > 1 else "."), icon=":material/info:")
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
    result = None
    with guard("predicting the perturbation"):
        result = remembered("perturb", tuple(chosen.items()), lambda: run_perturb(atlas, chosen))
        show_result(result)
    if result is None or not has_virtual_cell(atlas):
        return
    if chosen["cell_type"] is not None:
        conditions_section(atlas, chosen)
    if len(chosen["genes"]) >= 2:
        additive_section(atlas, chosen)


main()
