"""The same real-browser checks on the real COVID-19 vs healthy bundle (`vcell build` of
../shared/data/covid_pbmc_combat_subset.h5ad), plus what a user of that atlas looks for."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_browser import (  # noqa: F401 - the shared checks run again on this module's bundle
    ERROR,
    TIMEOUT_MS,
    assert_clean,
    atlas,
    open_page,
    pick,
    screenshot,
    test_compare_shows_volcano_and_de_table,
    test_every_page_shows_its_map_without_errors,
    test_explore_box_selection_is_summarised,
    test_explore_colours_by_gene_and_explains_unknown_genes,
    test_perturb_predicts_shifts,
    wait_idle,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def e2e_bundle(covid_bundle):
    """Serve the COVID bundle in this module."""
    return covid_bundle


@pytest.fixture(scope="module")
def screenshot_dir():
    """COVID screenshots go beside the generated ones, in their own folder."""
    path = Path(__file__).resolve().parent / "screenshots" / "covid"
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_compare_defaults_to_healthy_vs_covid(page, app_url, screenshot_dir):
    open_page(page, app_url, "compare")
    page.wait_for_selector('[data-testid="stDataFrame"]', timeout=TIMEOUT_MS)
    text = page.locator('[data-testid="stMain"]').inner_text()
    assert "Healthy" in text and "Covid_" in text
    assert_clean(page)


def test_map_colours_by_an_interferon_gene(page, app_url, screenshot_dir):
    open_page(page, app_url, "explore")
    page.get_by_text("Gene", exact=True).click()
    wait_idle(page)
    pick(page, "Gene", "IFI27")
    page.wait_for_selector(".js-plotly-plot .colorbar", timeout=TIMEOUT_MS)
    assert page.locator(ERROR).count() == 0
    assert_clean(page)
    screenshot(page, screenshot_dir, "explore_IFI27")
