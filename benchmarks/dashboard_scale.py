"""The dashboard at atlas scale, timed in a real browser (headless Chromium driven by Playwright).

Starts ``vcell serve BUNDLE --headless`` (the real-browser test harness, ``tests/e2e``) and times,
by the wall clock of this process around the Playwright actions, each ending when the page shows
the result and the Streamlit script has finished its run (no fixed sleeps):

- the first open of Explore (server just started: loads the atlas) until the map, its
  server-side image of every cell (a plotly layout ``<image>``) and its WebGL sample are drawn;
- a second open in a new browser context (a second user: the atlas and image are cached);
- colour changes between obs columns (``--runs``, alternating) until the new image is drawn;
- lasso and box selections of about a third of the map until "Cells selected" shows, the count
  checked against the cells of ``read_atlas(BUNDLE).layout`` inside the same shape (the pixel
  drag converted to data coordinates through the plot's axis ranges);
- gene colourings (``--runs`` highly variable genes) until the colour bar and image are drawn.

Timers start when the triggering click or mouse release has been dispatched. Prints a markdown
table (median, min, max, target) and the machine; exits non-zero if any target is missed with
``--strict``, and always when the page shows a Streamlit exception or error box.

Usage::

    python benchmarks/dashboard_scale.py BUNDLE [--runs 3] [--strict]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.path import Path as Polygon

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from app.components import colour_columns, column_label  # noqa: E402
from engine.bundle.atlas import Atlas, read_atlas  # noqa: E402
from engine.fileio import write_json  # noqa: E402
from mdtable import markdown  # noqa: E402
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, serve_bundle  # noqa: E402
from tests.e2e.test_browser import ERROR, EXCEPTION, IDLE, TIMEOUT_MS, choose  # noqa: E402

TARGETS = {"first open (cold)": 15.0, "second open (cached)": 15.0, "colour change (obs column)": 1.0,
           "colour by gene": 1.0, "lasso selection": 1.0, "box selection": 1.0}
VIEWPORT = {"width": 1600, "height": 1000}
MAP_STATE = """() => {
  const image = document.querySelector('.js-plotly-plot .imagelayer image');
  const gd = image ? image.closest('.js-plotly-plot') : document.querySelector('.js-plotly-plot');
  if (!gd || !gd.data || !gd.data.length) return null;
  const text = sel => Array.from(gd.querySelectorAll(sel)).map(e => e.textContent).join('|');
  const metric = document.querySelector('[data-testid="stMetricValue"]');
  return {image: image ? image.getAttribute('href').length + ':' + image.getAttribute('href').slice(-64) : '',
          legend: text('.legendtitletext'), colorbar: text('.colorbar .cbtitle'), traces: gd.data.length,
          metric: metric ? metric.textContent : null,
          idle: !!document.querySelector('%s')};
}""" % IDLE.replace("'", "\\'")


class PageError(RuntimeError):
    """The page shows a Streamlit exception or an error box."""


def map_state(page) -> dict | None:
    """The map's drawn state: image signature, legend and colour-bar titles, traces, metric, idle."""
    return page.evaluate(MAP_STATE)


def wait_for(page, done: Callable[[dict], bool]) -> float:
    """Poll the map state until ``done(state)`` holds and the app is idle; the time it was seen (perf_counter)."""
    deadline = time.perf_counter() + TIMEOUT_MS / 1000
    while time.perf_counter() < deadline:
        state = map_state(page)
        if state and state["idle"] and done(state):
            return time.perf_counter()
        for problem in (EXCEPTION, ERROR):
            if page.locator(problem).count():
                raise PageError(page.locator(problem).first.inner_text())
        page.wait_for_timeout(25)
    raise TimeoutError(f"the page did not reach the expected state; last: {map_state(page)}")


def open_explore(browser, url: str, sampled: bool) -> tuple[object, float]:
    """Open Explore in a new browser context; the page and the seconds until its map is drawn and idle."""
    page = browser.new_context(viewport=VIEWPORT).new_page()
    start = time.perf_counter()
    page.goto(f"{url}/")
    page.get_by_role("heading", name="Explore", level=1).wait_for(timeout=TIMEOUT_MS)
    end = wait_for(page, lambda s: bool(s["image"]) or not sampled)
    return page, progress(end - start)


def timed_change(page, action: Callable[[], None], done: Callable[[dict, dict], bool]) -> float:
    """Seconds from ``action`` until ``done(before, after)`` holds on an idle page."""
    before = map_state(page)
    action()
    start = time.perf_counter()
    return progress(wait_for(page, lambda after: done(before, after)) - start)


def progress(seconds: float) -> float:
    """Print a timing as it is taken (stderr); return it."""
    print(f"  {seconds:.3f} s", file=sys.stderr, flush=True)
    return seconds


def redrawn(before: dict, after: dict) -> bool:
    """The map was drawn again with another colouring (the image, legend or colour bar changed)."""
    return before is None or any(before[k] != after[k] for k in ("image", "legend", "colorbar"))


def plot_frame(page) -> tuple[dict, list[float], list[float]]:
    """The map's drag area (page pixels) and its x and y axis ranges (data units)."""
    box = page.locator(".js-plotly-plot .nsewdrag").first.bounding_box()
    ranges = page.evaluate("""() => {
      const gd = document.querySelector('.js-plotly-plot');
      return [gd._fullLayout.xaxis.range, gd._fullLayout.yaxis.range];
    }""")
    return box, *ranges


def to_data(points: np.ndarray, box: dict, xr: list[float], yr: list[float]) -> np.ndarray:
    """Page pixel positions on the map → layout coordinates (y grows upwards)."""
    fx = (points[:, 0] - box["x"]) / box["width"]
    fy = (points[:, 1] - box["y"]) / box["height"]
    return np.column_stack([xr[0] + fx * (xr[1] - xr[0]), yr[1] - fy * (yr[1] - yr[0])])


def shape(tool: str, shift: float) -> np.ndarray:
    """A lasso (wobbly ellipse) or box (two corners) over ~a third of the map, in plot fractions."""
    if tool == "box":
        return np.array([[0.2, 0.2], [0.78, 0.78]]) + shift
    angle = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    radius = 0.33 * (1 + 0.08 * np.sin(5 * angle))
    return np.column_stack([0.5 + shift + radius * np.cos(angle), 0.5 + radius * np.sin(angle)])


def select(page, tool: str, shift: float, layout: np.ndarray) -> tuple[float, int, int]:
    """Drag a lasso / box on the map; seconds until "Cells selected" shows, the count shown, the expected count."""
    plot = page.locator(".js-plotly-plot").first
    if map_state(page)["metric"] is not None:  # clear the last selection (a drag inside it would move it)
        corner = plot.locator(".nsewdrag").first.bounding_box()  # outside every shape drawn here
        page.mouse.dblclick(corner["x"] + 0.03 * corner["width"], corner["y"] + 0.03 * corner["height"])
        wait_for(page, lambda state: state["metric"] is None)
    plot.hover()
    title = "Lasso Select" if tool == "lasso" else "Box Select"
    page.locator(f'.js-plotly-plot .modebar-btn[data-title="{title}"]').first.click()
    box, xr, yr = plot_frame(page)
    fractions = shape(tool, shift)
    pixels = np.column_stack([box["x"] + fractions[:, 0] * box["width"], box["y"] + fractions[:, 1] * box["height"]])
    page.mouse.move(*pixels[0])
    page.mouse.down()
    for point in pixels[1:]:
        page.mouse.move(*point, steps=4)
    if tool == "lasso":
        page.mouse.move(*pixels[0], steps=4)

    def release() -> None:
        page.mouse.up()

    seconds = timed_change(page, release, lambda before, after: after["metric"] not in (None, before["metric"]))
    shown = int(map_state(page)["metric"].replace(",", ""))
    data = to_data(pixels, box, xr, yr)
    if tool == "box":
        (x0, y0), (x1, y1) = data.min(axis=0), data.max(axis=0)
        expected = int(np.count_nonzero((layout[:, 0] >= x0) & (layout[:, 0] <= x1)
                                        & (layout[:, 1] >= y0) & (layout[:, 1] <= y1)))
    else:
        expected = int(np.count_nonzero(Polygon(data).contains_points(layout)))
    return seconds, shown, expected


def hvg_labels(atlas: Atlas, n: int) -> list[str]:
    """``n`` highly variable genes' labels (the first genes when none is flagged)."""
    flags = atlas.var["highly_variable"].to_numpy() if "highly_variable" in atlas.var else np.ones(atlas.n_genes)
    return [atlas.genes.label(int(i)) for i in np.flatnonzero(flags)[:n]]


def machine() -> str:
    """Platform, CPU count and memory of this machine."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.platform()}, {os.cpu_count()} CPUs, {ram:.0f} GiB RAM, Python {platform.python_version()}"


def benchmark(bundle: Path, runs: int, log_path: Path, times: dict[str, list[float]], notes: list[str]) -> None:
    """Run every timed action, appending seconds per action to ``times`` and selection counts to ``notes``."""
    from playwright.sync_api import sync_playwright

    from app.maps import MAX_MAP_POINTS

    atlas = read_atlas(bundle)
    layout = np.asarray(atlas.layout, dtype=np.float64)
    sampled = atlas.n_cells > MAX_MAP_POINTS
    columns = [column_label(atlas, c) for c in colour_columns(atlas)]
    with serve_bundle(bundle, log_path) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        first, seconds = open_explore(browser, url, sampled)
        times["first open (cold)"].append(seconds)
        first.context.close()
        page, seconds = open_explore(browser, url, sampled)
        times["second open (cached)"].append(seconds)
        for run in range(runs):
            column = columns[1 + run % 2] if len(columns) > 2 else columns[(run + 1) % len(columns)]
            times["colour change (obs column)"].append(
                timed_change(page, lambda c=column: choose(page, "Column", c), redrawn))
        for tool in ("lasso", "box"):
            for run in range(runs):
                seconds, shown, expected = select(page, tool, 0.03 * run, layout)
                times[f"{tool} selection"].append(seconds)
                notes.append(f"{tool} {run + 1}: {shown:,} cells selected ({shown / atlas.n_cells:.1%}), "
                             f"{expected:,} in the same shape from the layout (ratio {shown / max(expected, 1):.4f})")
        page.get_by_text("Gene", exact=True).click()
        page.get_by_text("Pick or type a gene", exact=False).wait_for(timeout=TIMEOUT_MS)
        wait_for(page, lambda state: not state["legend"])
        for gene in hvg_labels(atlas, runs):
            times["colour by gene"].append(timed_change(
                page, lambda g=gene: choose(page, "Gene", g),
                lambda before, after, g=gene: g in after["colorbar"] and redrawn(before, after)))
        browser.close()


def report(times: dict[str, list[float]]) -> pd.DataFrame:
    """Median / min / max seconds per action against its target."""
    rows = [(name, statistics.median(t), min(t), max(t), len(t), f"< {TARGETS[name]:g} s",
             "yes" if statistics.median(t) < TARGETS[name] else "NO") for name, t in times.items() if t]
    return pd.DataFrame(rows, columns=["action", "median s", "min s", "max s", "runs", "target", "met"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--runs", type=int, default=3, help="repeats of each interaction (median reported)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--json", type=Path, help="also write the rows here (benchmarks/scale.py's table reads them)")
    args = parser.parse_args(argv)
    log_path = Path(tempfile.mkdtemp(prefix="dashboard_scale_")) / "vcell-serve.log"
    n_cells = read_atlas(args.bundle).n_cells
    times: dict[str, list[float]] = {name: [] for name in TARGETS}
    notes: list[str] = []
    failed = None
    try:
        benchmark(args.bundle, args.runs, log_path, times, notes)
    except (PageError, TimeoutError) as err:
        failed = f"{type(err).__name__}: {err}"
    table = report(times)
    print(f"## Dashboard at {n_cells:,} cells ({args.bundle})\n")
    print(markdown(table, index=False, digits=3))
    print(f"\n{machine()}; {datetime.date.today().isoformat()}; server log: {log_path}\n")
    print("\n".join(f"- {note}" for note in notes))
    if args.json:
        write_json(args.json, [{"step": f"dashboard: {row['action']} (browser, median of {row['runs']})",
                                "seconds": row["median s"], "throughput": f"target {row['target']}: {row['met']}"}
                               for row in table.to_dict("records")])
    if failed:
        print(f"\nFAILED (the table is partial): {failed}", file=sys.stderr)
        return 2
    return 1 if args.strict and (table["met"] == "NO").any() else 0


if __name__ == "__main__":
    sys.exit(main())
