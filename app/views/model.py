"""Model: which model and data built this atlas, with its parameters and quality numbers."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app.components import ROLE_LABELS, category_colours, current_atlas, kv_table, page_header, role_columns, show_table
from engine.bundle.atlas import Atlas
from engine.bundle.manifest import ColumnSource
from engine.evaluate.suite import RESPONSE_DIR, load_evaluation

TOP_CELL_TYPES = 30
QUALITY_LABELS = {"pca_explained_variance": "PCA explained variance", "index_recall_at_10": "Index recall@10",
                  "knn_label_agreement": "kNN label agreement",
                  "knn_label_agreement_macro": "kNN label agreement (macro)"}
QUALITY_HELP = {
    "pca_explained_variance": "Share of the variance of the highly variable genes that the PCA embedding keeps.",
    "index_recall_at_10": "Share of the exact 10 nearest neighbours the FAISS index returns (1 = exact search).",
    "knn_label_agreement": "Mean over cells of the fraction of its k nearest neighbours that share its cell type.",
    "knn_label_agreement_macro": "The same, averaged per cell type: rare types count as much as common ones.",
}


def harmonisation_table(atlas: Atlas) -> pd.DataFrame:
    """One row per role: the bundle column, the input column it came from, and how it was chosen."""
    harmonisation = atlas.manifest.harmonisation
    rows = []
    for role, column in atlas.roles.items():
        entry = (harmonisation.column(column) if column else None) or harmonisation.column(role) or ColumnSource(None)
        if column is None:
            how = f"absent (add with --{role.replace('_', '-')}-key)"
        elif entry.method:
            how = entry.method
        else:
            how = "guessed" if entry.guessed else "given"
        rows.append({"role": ROLE_LABELS.get(role, role), "bundle column": column or "—",
                     "input column": entry.source or "—", "how": how, "note": entry.note or ""})
    reference = harmonisation.reference_condition
    if reference is not None:
        rows.append({"role": "Reference condition", "bundle column": atlas.roles.get("condition") or "—",
                     "input column": reference, "how": "guessed" if harmonisation.reference_guessed else "given",
                     "note": "the healthy / control value"})
    table = pd.DataFrame(rows)
    if not table["note"].any():
        table = table.drop(columns="note")
    return table


def quality_metrics(atlas: Atlas) -> None:
    """The manifest's quality scores as tiles (with what they mean) and its counts as a caption."""
    quality = atlas.manifest.quality
    scores = {k: v for k, v in quality.items() if isinstance(v, float)}
    if not scores:
        st.info("This bundle records no quality numbers.")
        return
    cols = st.columns(min(len(scores), 4))
    for i, (name, value) in enumerate(scores.items()):
        cols[i % len(cols)].metric(QUALITY_LABELS.get(name, name.replace("_", " ")), f"{value:.3f}", border=True,
                                   help=QUALITY_HELP.get(name))
    rest = {k: v for k, v in quality.items() if k not in scores}
    if rest:
        st.caption("Measured with " + ", ".join(f"{k.replace('_', ' ')} = {_plain(v)}" for k, v in rest.items()) + ".")


def _plain(value) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def cells_figure(atlas: Atlas) -> go.Figure:
    """Cells per cell type, stacked by condition (the data the atlas holds)."""
    roles = role_columns(atlas)
    cell_type = roles["cell_type"]
    condition = roles.get("condition")
    obs = atlas.obs
    counts = obs.groupby([cell_type, condition] if condition else [cell_type], observed=True).size()
    frame = counts.rename("n").reset_index()
    order = obs[cell_type].value_counts().index[:TOP_CELL_TYPES].astype(str)
    frame[cell_type] = frame[cell_type].astype(str)
    frame = frame[frame[cell_type].isin(order)]
    fig = go.Figure()
    if condition:
        colours = category_colours(atlas, condition)
        for value, part in frame.groupby(condition, observed=True):
            fig.add_bar(x=part[cell_type], y=part["n"], name=str(value), marker_color=colours.get(str(value)))
    else:
        fig.add_bar(x=frame[cell_type], y=frame["n"], name="cells")
    fig.update_layout(barmode="stack", height=360, margin=dict(l=0, r=0, t=30, b=0), plot_bgcolor="white",
                      xaxis=dict(categoryorder="array", categoryarray=list(order)),
                      yaxis=dict(title="cells", gridcolor="#eee"), legend=dict(orientation="h", y=1.1))
    return fig


EVAL_SCORES = {"knn_macro_f1": "zero-shot kNN macro-F1", "knn_micro_f1": "zero-shot kNN micro-F1",
               "linear_macro_f1": "linear probe macro-F1", "classifier_macro_f1": "classifier macro-F1"}
RECON_SCORES = {"recon_explained_variance": "hidden genes: explained variance",
                "recon_mean_explained_variance": "gene-mean baseline", "recon_knn_explained_variance":
                "kNN-imputation baseline", "recon_mse": "hidden genes: MSE"}


def score_bars(summary: pd.DataFrame, labels: dict[str, str], key: str, yaxis: dict) -> list[str]:
    """Grouped bars (mean ± sd) of the ``labels`` scores present in ``summary``, per method; returns those scores."""
    scores = [c for c in labels if f"{c}_mean" in summary]
    fig = go.Figure([go.Bar(name=labels[c], x=summary["method"], y=summary[f"{c}_mean"],
                            error_y=dict(type="data", array=summary[f"{c}_sd"])) for c in scores])
    fig.update_layout(barmode="group", height=320, yaxis=yaxis, margin=dict(l=10, r=10, t=10, b=10),
                      legend=dict(orientation="h", y=1.1))
    st.plotly_chart(fig, key=key, config={"displaylogo": False})
    return scores


def evaluation_section(atlas: Atlas) -> None:
    """Scores of the embeddings against the baselines on held-out donors (from `vcell evaluate`)."""
    st.subheader("Embedding evaluation (held-out donors)")
    stored = load_evaluation(atlas.path / "evaluation")
    if stored is None:
        st.caption(f"Not evaluated yet: run `vcell evaluate {atlas.path}` to score the embeddings against the "
                   "PCA and highly-variable-gene baselines on held-out donors.")
        return
    summary, notes = stored
    scores = score_bars(summary, EVAL_SCORES, "model_evaluation",
                        dict(title="score (mean ± sd over seeds)", range=[0, 1.05]))
    recon = [c for c in RECON_SCORES if f"{c}_mean" in summary]
    table = summary[["method", "n_seeds", *scores, *recon]].rename(columns={**EVAL_SCORES, **RECON_SCORES})
    show_table(table)
    for note in notes:
        st.caption(note)


RESPONSE_SCORES = {"r_all": "r, all genes", "r_top20": "r, top 20 responding genes",
                   "sign_top20": "sign agreement, top 20", "rmse_ratio": "RMSE / no change"}


def response_section(atlas: Atlas) -> None:
    """Leave-one-cell-type-out prediction of a condition response (from `vcell evaluate-response`)."""
    st.subheader("Virtual cell: predicting a held-out cell type's response")
    stored = load_evaluation(atlas.path / RESPONSE_DIR)
    if stored is None:
        st.caption(f"No response evaluation yet: run `vcell evaluate-response {atlas.path} --condition-a CONTROL "
                   "--condition-b RESPONSE` to predict each cell type's response from its control cells and the "
                   "other types' response, the model against no change and expression arithmetic.")
        return
    summary, notes = stored
    scores = score_bars(summary, RESPONSE_SCORES, "model_response", dict(title="mean ± sd over held-out cell types"))
    show_table(summary[["method", "n_cell_types", *(f"{c}_mean" for c in scores)]].rename(
        columns={f"{c}_mean": label for c, label in RESPONSE_SCORES.items()}))
    for note in notes:
        st.caption(note)


def main() -> None:
    """Draw the Model page."""
    atlas = current_atlas()
    manifest = atlas.manifest
    page_header(atlas, "Model", "Which model and data built this atlas, with what parameters, and how good it is.")
    cols = st.columns(4)
    cols[0].metric("Cells", f"{atlas.n_cells:,}")
    cols[1].metric("Genes", f"{atlas.n_genes:,}")
    cols[2].metric("Model", manifest.model.name.upper(), f"{manifest.model.n_components} dimensions",
                   delta_color="off", delta_arrow="off")
    cols[3].metric("Index", manifest.index.factory, f"{manifest.index.metric} metric",
                   delta_color="off", delta_arrow="off")

    st.subheader("Quality")
    quality_metrics(atlas)
    evaluation_section(atlas)
    response_section(atlas)

    left, right = st.columns(2, gap="large")
    with left:
        st.subheader("Model")
        show_table(kv_table(manifest.model.to_dict()))
        st.subheader("Nearest-neighbour index")
        show_table(kv_table(manifest.index.to_dict()))
        st.subheader("Layout (2-D map)")
        show_table(kv_table(manifest.layout.to_dict()))
    with right:
        st.subheader("Harmonisation")
        st.caption("Which input columns became the atlas's CELLxGENE-named columns.")
        show_table(harmonisation_table(atlas))
        st.subheader("Data and processing")
        sections = {"matrices": manifest.matrices, "normalisation": manifest.normalisation,
                    "highly variable genes": manifest.hvg, "gene identifiers": manifest.genes,
                    "embeddings": manifest.embedding}
        show_table(kv_table({name: section.to_dict() for name, section in sections.items()}))
        st.subheader("Provenance")
        generator = manifest.provenance.generator
        if generator and generator.get("statement"):
            st.warning(generator["statement"], icon=":material/science:")
        show_table(kv_table({k: v for k, v in manifest.provenance.to_dict().items() if k != "generator"}))
        if generator:
            with st.expander("Generator settings (generated data)"):
                show_table(kv_table(generator))

    if "cell_type" in role_columns(atlas):
        st.subheader("Cells per cell type" + (" and condition" if "condition" in role_columns(atlas) else ""))
        st.plotly_chart(cells_figure(atlas), key="model_cells", config={"displaylogo": False})
    with st.expander("Raw manifest (manifest.json)"):
        st.json(manifest.to_dict(), expanded=False)


main()
