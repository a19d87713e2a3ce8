"""Real-browser check of the virtual cell: `vcell serve` on a bundle with a learned masked autoencoder
(kang_ifnb_1k built with `--model mae`), a knock-out predicted on the Perturb page beside its baselines."""

from __future__ import annotations

import numpy as np
import pytest

from test_browser import TIMEOUT_MS, screenshot_folder, assert_clean, open_page, pick, screenshot, wait_idle

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def e2e_bundle(mae_bundle):
    """Serve the bundle with a learned masked autoencoder in this module."""
    return mae_bundle


@pytest.fixture(scope="module")
def screenshot_dir():
    """This bundle's screenshots go beside the generated ones, in their own folder."""
    return screenshot_folder("model")


def test_perturb_page_runs_the_virtual_cell(page, app_url, screenshot_dir, e2e_bundle):
    from engine.bundle.atlas import read_atlas

    atlas = read_atlas(e2e_bundle)
    gene = atlas.genes.label(int(np.flatnonzero(atlas.var["highly_variable"].to_numpy())[0]))
    open_page(page, app_url, "perturb")
    assert page.get_by_text("Virtual cell", exact=False).count() >= 1
    pick(page, "Genes to perturb", gene)
    page.keyboard.press("Escape")
    pick(page, "Cell type", "CD14 Mono")
    page.get_by_role("button", name="Predict").click()
    page.get_by_text("The model beside its baselines").wait_for(timeout=TIMEOUT_MS)
    page.get_by_text("Where the cells go").wait_for(timeout=TIMEOUT_MS)
    wait_idle(page)
    heading = page.get_by_text("Predicted effect of", exact=False).first.inner_text()
    assert f"knock-out of {gene} in 'CD14 Mono'" in heading
    assert page.locator(".js-plotly-plot").count() >= 4  # population map, shifts, model vs baselines, arrows
    assert_clean(page)
    screenshot(page, screenshot_dir, "perturb_virtual_cell")


def test_perturb_page_compares_a_combination_across_conditions(page, app_url, screenshot_dir, e2e_bundle):
    from engine.bundle.atlas import read_atlas
    from engine.perturb.conditions import prediction_context

    atlas = read_atlas(e2e_bundle)
    model_genes = prediction_context(atlas).kept
    hvg = [atlas.genes.label(int(i)) for i in np.flatnonzero(atlas.var["highly_variable"].to_numpy())]
    pair = ["ISG15", "IFIT3"] if {"ISG15", "IFIT3"} <= set(model_genes) else [g for g in hvg if g in model_genes][:2]
    open_page(page, app_url, "perturb")
    for gene in pair:
        pick(page, "Genes to perturb", gene)
    page.keyboard.press("Escape")
    pick(page, "Cell type", "CD14 Mono")
    page.get_by_role("button", name="Predict").click()
    page.get_by_text("Across conditions", exact=True).wait_for(timeout=TIMEOUT_MS)
    wait_idle(page)
    pick(page, "Healthy / reference condition (A)", "CTRL")
    pick(page, "Compared condition (B)", "STIM")
    page.get_by_role("button", name="Compare conditions").click()
    page.locator(".js-plotly-plot").filter(has_text="predicted shift in CTRL (A)").wait_for(timeout=TIMEOUT_MS)
    page.get_by_text("Reversal score", exact=True).wait_for(timeout=TIMEOUT_MS)
    wait_idle(page)
    reversal = page.locator('[data-testid="stMetric"]').filter(has_text="Reversal score")
    assert "matched controls" in reversal.inner_text()
    assert page.get_by_text("Combination vs the additive model", exact=True).count() == 1
    assert page.locator(".js-plotly-plot").filter(has_text="Pearson r").count() == 1
    assert page.get_by_role("button", name="Download the across-conditions table (CSV)").count() == 1
    assert page.locator(".js-plotly-plot").count() >= 7  # map, shifts, baselines, arrows, A vs B, reversal, additive
    assert_clean(page)
    screenshot(page, screenshot_dir, "perturb_across_conditions")
