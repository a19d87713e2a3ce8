"""The dashboard under Streamlit's AppTest: every page opens on a small generated bundle without an
exception, shows its key elements, and bad input gives one error sentence instead of a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from engine.bundle.atlas import read_atlas

APP = Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py"
PAGES = {"explore": "Explore", "compare": "Compare", "neighbours": "Neighbours", "perturb": "Perturb",
         "model": "Model"}
TIMEOUT = 180


def start(monkeypatch, bundle: str | Path | None) -> AppTest:
    """Run the app on ``bundle`` (``None``: no VCELL_BUNDLE) with unexpected exceptions propagating."""
    if bundle is None:
        monkeypatch.delenv("VCELL_BUNDLE", raising=False)
    else:
        monkeypatch.setenv("VCELL_BUNDLE", str(bundle))
    monkeypatch.setenv("VCELL_APP_STRICT", "1")
    return AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()


def visit(at: AppTest, name: str) -> AppTest:
    """Switch to a page and check it ran cleanly under its title."""
    at.switch_page(f"views/{name}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == [PAGES[name]]
    return at


def charts(at: AppTest) -> list:
    """The plotly charts on the current page."""
    return list(at.get("plotly_chart"))


def texts(elements) -> str:
    """All values of some elements as one string (for ``in`` checks)."""
    return " ".join(str(e.value) for e in elements)


@pytest.fixture
def app(small_bundle, monkeypatch) -> AppTest:
    """The app running on the small generated bundle."""
    return start(monkeypatch, small_bundle)


@pytest.fixture(scope="module")
def atlas(small_bundle):
    """The small bundle, opened (to pick valid genes and conditions)."""
    return read_atlas(small_bundle)


def test_every_page_opens_without_error(app):
    assert not app.exception and not app.error
    assert [t.value for t in app.title] == ["Explore"]
    for name in PAGES:
        visit(app, name)
        assert not app.error, texts(app.error)
        assert charts(app), f"no chart on {name}"


def test_generated_data_is_labelled_on_every_page(app):
    for name in PAGES:
        visit(app, name)
        badges = texts(app.markdown)
        assert "generated data" in badges.lower(), name
        assert "(generated)" in texts(app.sidebar.markdown)


def test_explore_colours_by_every_column_and_by_a_gene(app, atlas):
    for column in app.selectbox(key="explore_column").options:
        app.selectbox(key="explore_column").set_value(column).run()
        assert not app.exception and not app.error, column
    app.radio(key="explore_mode").set_value("Gene").run()
    gene = atlas.genes.labels[0]
    app.selectbox(key="explore_gene").set_value(gene).run()
    assert not app.exception and not app.error
    assert "expressed in" in texts(app.caption)
    assert len(charts(app)) >= 2  # the map and the breakdown of all cells


def test_compare_pseudobulk_by_default_then_exploratory_wilcoxon(app, atlas):
    visit(app, "compare")
    conditions = atlas.categories("condition")
    assert app.selectbox(key="compare_a").value == atlas.reference_condition
    other = [c for c in conditions if c != atlas.reference_condition][-1]
    app.selectbox(key="compare_b").set_value(other).run()
    assert app.radio(key="compare_method_2").value.startswith("Pseudobulk")
    largest = atlas.obs["cell_type"].astype(str).value_counts().index[0]
    assert app.selectbox(key="compare_cell_type_pseudobulk").value == largest
    assert not app.exception and not app.error, texts(app.error)
    de = app.dataframe[0].value
    assert {"gene", "log2fc", "padj", "stat", "n_donors_a", "n_donors_b"} <= set(de.columns)
    assert 0 < len(de) <= atlas.n_genes
    assert f"{other} vs {atlas.reference_condition} in {largest}. Method: pseudobulk" in texts(app.caption)
    # every tab drew: volcano, gene maps, composition, dot plot, shift, cell-type maps
    assert len(charts(app)) == 6
    assert {"Differential expression", "Composition", "Dot plot", "Embedding shift", "Maps"} <= \
        {t.label for t in app.tabs}
    # a clicked volcano gene is shown on the split maps and can be sent to Explore
    gene = str(de["gene"].iloc[-1])
    app.session_state["compare_gene"] = gene
    app.run()
    assert app.button(key="compare_explore").label == f"Colour the Explore map by {gene}"
    # filters narrow the table
    app.text_input(key="compare_filter").input(gene).run()
    shown = set(app.dataframe[0].value["gene"])
    assert gene in shown and all(gene.lower() in g.lower() for g in shown) and len(shown) < len(de)
    app.radio(key="compare_method_2").set_value("Wilcoxon (cells; exploratory)").run()
    assert app.selectbox(key="compare_cell_type_wilcoxon").value == "All cell types"
    app.text_input(key="compare_filter").input("").run()
    assert not app.exception and not app.error, texts(app.error)
    assert len(app.dataframe[0].value) == atlas.n_genes
    assert "exploratory" in texts(app.caption)


def test_neighbours_by_name_random_and_selection(app, atlas):
    visit(app, "neighbours")
    assert app.metric[1].value == "50"  # default k
    app.text_input(key="nb_cell").input("no-such-cell").run()
    assert not app.exception
    assert "is not in this atlas" in texts(app.error)
    app.text_input(key="nb_cell").input("7").run()
    assert not app.error and app.metric[0].value == "1"
    app.slider(key="nb_k").set_value(20).run()
    assert app.metric[1].value == "20"
    app.session_state["selection"] = {"cells": np.arange(30), "label": "30 test cells"}
    app.run()
    assert app.radio[0].value == "The Explore selection"
    assert app.metric[0].value == "30" and not app.error
    assert len(app.dataframe) == 1 and len(app.dataframe[0].value) == 20
    app.session_state["selection"] = {"cells": np.arange(atlas.n_cells), "label": "every cell"}
    app.run()
    assert not app.exception
    assert "selection already holds" in texts(app.error)


def test_perturb_predicts_shifts_and_rejects_unknown_genes(app, atlas):
    visit(app, "perturb")
    assert "ridge regression on co-expression" in texts(app.info)
    gene = atlas.var.index[np.flatnonzero(atlas.var["highly_variable"])[0]]
    gene = atlas.genes.label(atlas.genes.resolve(gene))
    app.multiselect(key="perturb_genes").set_value([gene]).run()
    app.radio(key="perturb_mode").set_value("kd").run()
    app.button(key="perturb_run").click().run()
    assert not app.exception and not app.error, texts(app.error)
    table = app.dataframe[0].value
    assert {"gene", "shift", "ci_low", "ci_high", "is_target"} <= set(table.columns)
    assert table.loc[table["is_target"], "gene"].tolist() == [gene]
    assert len(charts(app)) == 2  # population map and shifts

    app.multiselect(key="perturb_genes").set_value(["NOTAGENE1"]).run()
    app.button(key="perturb_run").click().run()
    assert not app.exception
    assert "not in this atlas" in texts(app.error)


def test_perturb_runs_the_virtual_cell_beside_its_baselines(mae_bundle, monkeypatch):
    app = start(monkeypatch, mae_bundle)
    visit(app, "perturb")
    assert "Virtual cell" in texts(app.info)
    assert app.radio(key="perturb_method_2").value == "model"
    atlas = read_atlas(mae_bundle)
    gene = atlas.genes.label(int(np.flatnonzero(atlas.var["highly_variable"].to_numpy())[0]))
    app.multiselect(key="perturb_genes").set_value([gene]).run()
    app.selectbox(key="perturb_cell_type").set_value(atlas.categories("cell_type")[0]).run()
    app.button(key="perturb_run").click().run()
    assert not app.exception and not app.error, texts(app.error)
    assert {"The model beside its baselines", "Where the cells go"} <= {s.value for s in app.subheader}
    assert "masked autoencoder" in texts(app.caption)
    table = next(d.value for d in app.dataframe if "is_target" in d.value.columns)
    assert table.loc[table["is_target"], "gene"].tolist() == [gene]
    assert len(charts(app)) >= 3  # population map, shifts, model vs baselines (and the arrows map)


def test_model_page_shows_tables_not_just_json(app):
    visit(app, "model")
    assert len(app.dataframe) >= 5
    assert {"Quality", "Model", "Harmonisation", "Provenance"} <= {s.value for s in app.subheader}
    assert app.json  # the raw manifest, in an expander


def test_no_bundle_gives_an_error_and_what_to_run(monkeypatch):
    at = start(monkeypatch, None)
    assert not at.exception
    assert "No atlas bundle" in texts(at.error)
    assert "vcell serve" in texts(at.markdown)


@pytest.mark.parametrize("problem", ["missing", "not_a_bundle", "unknown_version", "corrupt_cells"])
def test_bad_bundle_gives_one_error_sentence(monkeypatch, tmp_path, small_bundle, problem):
    bundle = tmp_path / "broken.vcell"
    if problem == "not_a_bundle":
        bundle.mkdir()
    elif problem != "missing":
        shutil.copytree(small_bundle, bundle)
        if problem == "unknown_version":
            manifest = json.loads((bundle / "manifest.json").read_text())
            manifest["format_version"] = 99
            (bundle / "manifest.json").write_text(json.dumps(manifest))
        else:
            (bundle / "cells.parquet").write_bytes(b"not parquet")
    at = start(monkeypatch, bundle)
    assert not at.exception
    assert len(at.error) == 1
    message = at.error[0].value
    assert "Traceback" not in message and "vcell" in message
    for name in ("compare", "model"):
        at.switch_page(f"views/{name}.py").run()
        assert not at.exception and len(at.error) == 1


def evaluated_model_page(bundle, tmp_path, monkeypatch, capsys, command: list[str],
                         missing: str) -> tuple[AppTest, str]:
    """The Model page of a copy of ``bundle`` before (it says ``missing``) and after ``vcell COMMAND COPY``."""
    from engine.cli import main

    copy = tmp_path / "evaluated.vcell"
    shutil.copytree(bundle, copy)
    app = start(monkeypatch, copy)
    visit(app, "model")
    assert missing in texts(app.caption)
    assert main([command[0], str(copy), *command[1:]]) == 0
    printed = capsys.readouterr().out
    app = start(monkeypatch, copy)
    visit(app, "model")
    assert missing not in texts(app.caption)
    return app, printed


def test_model_page_shows_the_evaluation_written_by_vcell_evaluate(small_bundle, tmp_path, monkeypatch, capsys):
    app, printed = evaluated_model_page(small_bundle, tmp_path, monkeypatch, capsys, ["evaluate", "--seeds", "2"],
                                        "Not evaluated yet")
    assert "X_pca" in printed and "hvg" in printed and "±" in printed
    tables = [d.value for d in app.dataframe if "method" in d.value]
    assert len(tables) == 1 and set(tables[0]["method"]) >= {"X_pca", "pca_reference", "hvg"}


def test_model_page_shows_the_virtual_cell_evaluation(mae_bundle, tmp_path, monkeypatch, capsys):
    command = ["evaluate-response", "--condition-a", "CTRL", "--condition-b", "STIM", "--retrain", "--epochs", "1",
               "--cell-types", "CD14 Mono,B"]
    app, printed = evaluated_model_page(mae_bundle, tmp_path, monkeypatch, capsys, command,
                                        "No response evaluation yet")
    assert "retrained" in printed and "expression arithmetic" in printed
    assert "retrained" in texts(app.caption)
    table = next(d.value for d in app.dataframe if "r, top 20 responding genes" in d.value)
    assert list(table["method"]) == ["no change", "expression arithmetic", "latent arithmetic (MAE)"]
    assert (table["n_cell_types"] == 2).all() and table["RMSE / no change"].iloc[0] == 1.0


def test_every_page_works_on_a_bundle_with_a_learned_embedding(mae_bundle, monkeypatch):
    app = start(monkeypatch, mae_bundle)
    for name in PAGES:
        visit(app, name)
        assert not app.error, (name, texts(app.error))
    assert "X_mae" in texts(app.caption) + texts(app.markdown) + " ".join(
        str(d.value.to_dict()) for d in app.dataframe)


@pytest.mark.shared
def test_compare_explains_too_few_donors_and_keeps_the_other_tabs(covid_annotated_bundle, monkeypatch):
    app = start(monkeypatch, covid_annotated_bundle)
    visit(app, "compare")
    assert app.selectbox(key="compare_b").value == "Covid_Critical"
    app.selectbox(key="compare_cell_type_pseudobulk").set_value("CD4 Memory T").run()  # 3 healthy cells
    assert not app.exception
    assert "Too few donors" in texts(app.error), texts(app.error)
    assert len(charts(app)) >= 3  # composition, embedding shift and the cell-type maps still drawn
    app.selectbox(key="compare_cell_type_pseudobulk").set_value("CD14 Mono").run()
    assert not app.exception and not app.error, texts(app.error)
    de = app.dataframe[0].value.set_index("gene")
    assert de.loc["IFI27", "log2fc"] > 1 and de.loc["IFI27", "padj"] < 0.05


def figure_spec(at: AppTest, index: int = 0) -> dict:
    """The plotly figure of a chart on the current page, as a dict."""
    return json.loads(charts(at)[index].proto.spec)


def test_large_atlas_map_draws_every_cell_under_a_sample(small_bundle, monkeypatch):
    monkeypatch.setattr("app.maps.MAX_MAP_POINTS", 500)
    at = start(monkeypatch, small_bundle)
    assert not at.exception, [e.value for e in at.exception]
    for step in ("metadata", "gene"):
        layout = figure_spec(at)["layout"]
        (image,) = layout["images"]
        assert image["source"].startswith("data:image/png;base64,") and image["layer"] == "below"
        assert layout["xaxis"]["range"] == [image["x"], image["x"] + image["sizex"]]
        points = sum(len(trace["customdata"]) for trace in figure_spec(at)["data"])
        assert points == 500, step
        assert "image of all 3,000 cells" in texts(at.caption)
        if step == "metadata":
            at.radio(key="explore_mode").set_value("Gene").run()
            at.selectbox(key="explore_gene").set_value(at.selectbox(key="explore_gene").options[0]).run()
            assert not at.exception, [e.value for e in at.exception]
    visit(at, "neighbours")


def test_large_atlas_selections_count_every_cell(small_bundle, monkeypatch):
    from app import maps

    atlas = read_atlas(small_bundle)
    xy = atlas.layout
    (x0, y0), (x1, y1) = np.percentile(xy, 20, axis=0), np.percentile(xy, 60, axis=0)
    inside = np.flatnonzero((xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1))
    box = {"selection": {"points": [{"customdata": [int(inside[0])]}], "box": [{"x": [x1, x0], "y": [y0, y1]}],
                         "lasso": []}}
    square = {"x": [x0, x1, x1, x0], "y": [y0, y0, y1, y1]}
    lasso = {"selection": {"points": [], "box": [], "lasso": [square]}}
    assert list(maps.selected_cells(box, atlas)) == [inside[0]]  # small atlas: the picked points
    monkeypatch.setattr(maps, "MAX_MAP_POINTS", 500)
    np.testing.assert_array_equal(maps.selected_cells(box, atlas), inside)
    np.testing.assert_array_equal(maps.selected_cells(lasso, atlas), inside)
    assert len(maps.selected_cells({"selection": {"points": [], "box": [], "lasso": []}}, atlas)) == 0
    assert len(maps.selected_cells(None, atlas)) == 0


def test_overlapping_shapes_select_their_union_once():
    from app.maps import cells_in_shapes

    layout = np.random.default_rng(0).uniform(0, 10, (5000, 2)).astype(np.float32)
    boxes = [{"x": [1, 6], "y": [1, 6]}, {"x": [4, 9], "y": [4, 9]}]
    lasso = {"x": [0, 3, 0], "y": [0, 0, 3]}
    got = cells_in_shapes(layout, [lasso], boxes)
    x, y = layout[:, 0], layout[:, 1]
    expected = (((x >= 1) & (x <= 6) & (y >= 1) & (y <= 6)) | ((x >= 4) & (x <= 9) & (y >= 4) & (y <= 9))
                | (x + y < 3))
    assert np.array_equal(got, np.flatnonzero(expected))
    assert np.array_equal(cells_in_shapes(layout, [], boxes[:1]), np.flatnonzero((x >= 1) & (x <= 6) & (y >= 1) & (y <= 6)))
