"""Real-browser test: `vcell serve` on a bundle, every page opened in headless Chromium.

Each page must show its map or chart, its title and no error box; the main interactions
(a box selection on the map, colouring by a gene, a comparison, a perturbation, a
neighbour search) are driven like a user would. Screenshots go to ``tests/e2e/screenshots``.
The bundle is the ``e2e_bundle`` fixture (see ``conftest.py``) so the same checks can run
on another bundle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.bundle.atlas import read_atlas

pytestmark = pytest.mark.e2e

PAGES = {"explore": "Explore", "compare": "Compare", "neighbours": "Neighbours", "perturb": "Perturb",
         "model": "Model"}
PLOT = ".js-plotly-plot .main-svg"
ERROR = '[data-testid="stAlertContentError"]'
EXCEPTION = '[data-testid="stException"]'
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
TIMEOUT_MS = 90_000


def screenshot_folder(name: str) -> Path:
    """A subfolder of the (gitignored) screenshot folder for one bundle's pages; created."""
    path = Path(__file__).resolve().parent / "screenshots" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def wait_idle(page) -> None:
    """Wait until the script has finished its run and the page has settled."""
    page.wait_for_selector(IDLE, timeout=TIMEOUT_MS)
    page.wait_for_timeout(600)
    page.wait_for_selector(IDLE, timeout=TIMEOUT_MS)


def open_page(page, url: str, name: str) -> None:
    """Open a page (Explore is the default page at ``/``) and wait for its title and a plot."""
    page.goto(f"{url}/" if name == "explore" else f"{url}/{name}")
    page.get_by_role("heading", name=PAGES[name], level=1).wait_for(timeout=TIMEOUT_MS)
    page.wait_for_selector(PLOT, timeout=TIMEOUT_MS)
    wait_idle(page)


def assert_clean(page) -> None:
    """No exception box and no error box on the page."""
    assert page.locator(EXCEPTION).count() == 0, page.locator(EXCEPTION).first.inner_text()
    errors = page.locator(ERROR)
    assert errors.count() == 0, errors.first.inner_text()


def screenshot(page, directory, name: str) -> None:
    """A screenshot of the whole page (the viewport grows to the page's height first)."""
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": 1600, "height": min(max(1000, int(height) + 40), 6000)})
    page.wait_for_timeout(700)
    page.screenshot(path=str(directory / f"{name}.png"), full_page=True)
    page.set_viewport_size({"width": 1600, "height": 1000})


def pick(page, label: str, text: str) -> None:
    """Type ``text`` into the select box or multiselect labelled ``label``, choose it, wait until idle."""
    choose(page, label, text)
    wait_idle(page)


def choose(page, label: str, text: str) -> None:
    """Type ``text`` into the select box or multiselect labelled ``label`` and choose it (no waiting for the rerun).

    The option named exactly ``text`` is clicked (a multiselect takes Enter as "all
    matches"); free text with no such option is entered with Enter.
    """
    widget = page.locator('[data-testid="stSelectbox"], [data-testid="stMultiSelect"]').filter(
        has=page.get_by_text(label, exact=True))
    box = widget.locator("input").first
    box.click()
    box.fill(text)
    page.wait_for_timeout(300)
    option = page.get_by_role("option", name=text, exact=True)
    if option.count():
        option.first.click()
    else:
        page.keyboard.press("Enter")


@pytest.fixture(scope="module")
def atlas(e2e_bundle):
    """The served bundle, opened (to choose genes that exist)."""
    return read_atlas(e2e_bundle)


def test_every_page_shows_its_map_without_errors(page, app_url, screenshot_dir, atlas):
    for name in PAGES:
        open_page(page, app_url, name)
        assert_clean(page)
        if atlas.generated:
            assert page.get_by_text("Generated data: synthetic cells", exact=False).count() >= 1, name
        screenshot(page, screenshot_dir, name)


def test_explore_box_selection_is_summarised(page, app_url, screenshot_dir):
    open_page(page, app_url, "explore")
    plot = page.locator(".js-plotly-plot").first
    plot.hover()
    page.locator('.js-plotly-plot .modebar-btn[data-title="Box Select"]').first.click()
    box = page.locator(".js-plotly-plot .nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.15, box["y"] + box["height"] * 0.15)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5, steps=12)
    page.mouse.move(box["x"] + box["width"] * 0.85, box["y"] + box["height"] * 0.85, steps=12)
    page.mouse.up()
    page.get_by_text("Cells selected").wait_for(timeout=TIMEOUT_MS)
    wait_idle(page)
    assert_clean(page)
    value = page.locator('[data-testid="stMetricValue"]').first.inner_text()
    assert int(value.replace(",", "")) > 0
    screenshot(page, screenshot_dir, "explore_selection")
    page.get_by_role("button", name="Find cells like these").click()
    page.get_by_role("heading", name="Neighbours", level=1).wait_for(timeout=TIMEOUT_MS)
    page.wait_for_selector(PLOT, timeout=TIMEOUT_MS)
    wait_idle(page)
    assert_clean(page)
    assert page.get_by_text("cells selected on Explore").count() >= 1


def test_explore_colours_by_gene_and_explains_unknown_genes(page, app_url, screenshot_dir, atlas):
    open_page(page, app_url, "explore")
    page.get_by_text("Gene", exact=True).click()
    wait_idle(page)
    hvg = np.flatnonzero(atlas.var["highly_variable"].to_numpy())
    gene = atlas.genes.label(int(hvg[0]))
    pick(page, "Gene", gene)
    page.wait_for_selector(".js-plotly-plot .colorbar", timeout=TIMEOUT_MS)
    assert_clean(page)
    screenshot(page, screenshot_dir, "explore_gene")
    pick(page, "Gene", gene + "Q")
    page.wait_for_selector(ERROR, timeout=TIMEOUT_MS)
    message = page.locator(ERROR).first.inner_text()
    assert "is not in this atlas" in message and page.locator(EXCEPTION).count() == 0


def test_compare_shows_volcano_and_de_table(page, app_url, screenshot_dir):
    open_page(page, app_url, "compare")
    page.wait_for_selector('[data-testid="stDataFrame"]', timeout=TIMEOUT_MS)
    assert page.locator(".js-plotly-plot").count() >= 2
    assert page.get_by_role("button", name="Download the whole DE table (CSV)").count() == 1
    assert_clean(page)
    screenshot(page, screenshot_dir, "compare")


def test_perturb_predicts_shifts(page, app_url, screenshot_dir, atlas):
    open_page(page, app_url, "perturb")
    hvg = np.flatnonzero(atlas.var["highly_variable"].to_numpy())
    gene = atlas.genes.label(int(hvg[0]))
    pick(page, "Genes to perturb", gene)
    page.keyboard.press("Escape")
    page.get_by_role("button", name="Predict").click()
    heading = page.get_by_text("Predicted effect of", exact=False)
    heading.wait_for(timeout=TIMEOUT_MS)
    assert f"knock-out of {gene} in" in heading.first.inner_text()  # exactly the one gene picked
    wait_idle(page)
    assert page.locator(".js-plotly-plot").count() >= 2
    assert_clean(page)
    screenshot(page, screenshot_dir, "perturb")
