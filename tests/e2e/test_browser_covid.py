"""The same real-browser checks on the real COVID-19 vs healthy bundle (`vcell build` of
../shared/data/covid_pbmc_combat_subset.h5ad, then `vcell annotate --reference kang_ifnb_1k.h5ad`),
plus what a user of that atlas looks for: pseudobulk DE in monocytes, a volcano click that colours
the maps by the gene, the dot plot and embedding shift, and a neighbour search."""

from __future__ import annotations

import pytest

from test_browser import (  # noqa: F401 - the shared checks run again on this module's bundle
    ERROR,
    TIMEOUT_MS,
    assert_clean,
    atlas,
    open_page,
    pick,
    screenshot,
    screenshot_folder,
    test_compare_shows_volcano_and_de_table,
    test_every_page_shows_its_map_without_errors,
    test_explore_box_selection_is_summarised,
    test_explore_colours_by_gene_and_explains_unknown_genes,
    test_perturb_predicts_shifts,
    wait_idle,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def e2e_bundle(covid_annotated_bundle):
    """Serve the annotated COVID bundle in this module."""
    return covid_annotated_bundle


@pytest.fixture(scope="module")
def screenshot_dir():
    """This bundle's screenshots go beside the generated ones, in their own folder."""
    return screenshot_folder("covid")


VOLCANO_POINT = """gene => {
    const plot = [...document.querySelectorAll('.js-plotly-plot')].find(
        gd => (gd.layout.xaxis.title.text || '').startsWith('log2 fold change'));
    plot.scrollIntoView({block: 'center'});
    for (const trace of plot._fullData) {  // decoded arrays (plot.data may hold base64 'bdata')
        const i = Array.from(trace.customdata || []).findIndex(row => row[0] === gene);
        if (i >= 0) {
            const box = plot.querySelector('.nsewdrag').getBoundingClientRect();
            const layout = plot._fullLayout;
            return [box.left + layout.xaxis.l2p(trace.x[i]), box.top + layout.yaxis.l2p(trace.y[i])];
        }
    }
    return null;
}"""


def test_compare_pseudobulk_in_monocytes_and_a_volcano_click(page, app_url, screenshot_dir):
    open_page(page, app_url, "compare")
    page.wait_for_selector('[data-testid="stDataFrame"]', timeout=TIMEOUT_MS)
    text = page.locator('[data-testid="stMain"]').inner_text()
    assert "Healthy" in text and "Covid_" in text and "Pseudobulk" in text
    pick(page, "Cell type for differential expression", "CD14 Mono")
    page.get_by_text("in CD14 Mono. Method: pseudobulk", exact=False).wait_for(timeout=TIMEOUT_MS)
    assert_clean(page)
    screenshot(page, screenshot_dir, "compare_pseudobulk_cd14")
    xy = page.evaluate(VOLCANO_POINT, "IFI27")
    assert xy is not None, "IFI27 is not on the volcano"
    page.mouse.click(*xy)
    page.get_by_role("button", name="Colour the Explore map by IFI27").wait_for(timeout=TIMEOUT_MS)
    wait_idle(page)
    assert page.locator(".js-plotly-plot .colorbar").count() >= 1  # the split maps, coloured by IFI27
    assert_clean(page)
    screenshot(page, screenshot_dir, "compare_volcano_click")
    page.get_by_role("button", name="Colour the Explore map by IFI27").click()
    page.get_by_role("heading", name="Explore", level=1).wait_for(timeout=TIMEOUT_MS)
    page.wait_for_selector(".js-plotly-plot .colorbar", timeout=TIMEOUT_MS)
    wait_idle(page)
    assert "IFI27" in page.locator('[data-testid="stMain"]').inner_text()
    assert_clean(page)


def test_compare_dot_plot_shift_and_filter(page, app_url, screenshot_dir):
    open_page(page, app_url, "compare")
    page.wait_for_selector('[data-testid="stDataFrame"]', timeout=TIMEOUT_MS)
    box = page.get_by_label("Filter genes")
    box.fill("IFI")
    box.press("Enter")
    wait_idle(page)
    assert page.get_by_text(" genes; click a column header to sort", exact=False).count() == 1
    for tab, marker in (("Dot plot", "Dot size: share of cells expressing"),
                        ("Embedding shift", "distance between mean donor centroids"),
                        ("Composition", "one point per donor")):
        page.get_by_role("tab", name=tab).click()
        page.get_by_text(marker, exact=False).wait_for(timeout=TIMEOUT_MS)
        assert_clean(page)
        screenshot(page, screenshot_dir, f"compare_{tab.lower().replace(' ', '_')}")


def test_neighbours_of_a_cell_are_broken_down(page, app_url, screenshot_dir):
    open_page(page, app_url, "neighbours")
    page.get_by_text("A random cell", exact=True).click()
    wait_idle(page)
    page.wait_for_selector('[data-testid="stDataFrame"]', timeout=TIMEOUT_MS)
    text = page.locator('[data-testid="stMain"]').inner_text()
    assert "Who the neighbours are" in text and "Neighbours found" in text
    assert_clean(page)
    screenshot(page, screenshot_dir, "neighbours_random_cell")


def test_map_colours_by_an_interferon_gene(page, app_url, screenshot_dir):
    open_page(page, app_url, "explore")
    page.get_by_text("Gene", exact=True).click()
    wait_idle(page)
    pick(page, "Gene", "IFI27")
    page.wait_for_selector(".js-plotly-plot .colorbar", timeout=TIMEOUT_MS)
    assert page.locator(ERROR).count() == 0
    assert_clean(page)
    screenshot(page, screenshot_dir, "explore_IFI27")
