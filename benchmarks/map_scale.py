"""The dashboard's map at atlas scale: rendering every cell and resolving selections against every cell.

Points: ``--cells`` synthetic 2-D layout positions in ``--clusters`` Gaussian clusters of random
size and spread (like a UMAP of cell types), with a category per cell (its cluster, ``--clusters``
categories) and a float value. Timed (the first run, and the median of ``--repeats`` more):

- :func:`engine.space.raster.rasterise` (the full RGBA image) by category and by value (pixel mean),
  against a pandas ``groupby`` over the same pixel indices (the counts or means only, no image);
- :func:`engine.space.raster.points_in_polygon` for a 200-vertex lasso holding ~5% of the cells,
  against :meth:`matplotlib.path.Path.contains_points` over every cell (no prefilter);
- :func:`engine.space.raster.points_in_box`, against the box as a path tested over every cell.

Usage::

    python benchmarks/map_scale.py --cells 10000000
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path as FilePath

import numpy as np
import pandas as pd
from matplotlib.path import Path

sys.path.insert(0, str(FilePath(__file__).resolve().parents[1]))
from engine.space.raster import data_extent, pixel_index, points_in_box, points_in_polygon, rasterise  # noqa: E402
from mdtable import markdown  # noqa: E402

WIDTH = 800
"""Image width, as the dashboard draws it (``app.maps.MAP_IMAGE_WIDTH``)."""
LASSO_FRACTION = 0.05


def synthetic_map(n: int, clusters: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(n, 2)`` float32 positions in Gaussian clusters, their cluster codes, and a float value per cell."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-20, 20, (clusters, 2))
    spread = rng.uniform(0.3, 2.0, clusters)
    codes = rng.choice(clusters, n, p=rng.dirichlet(np.full(clusters, 2.0))).astype(np.int16)
    coords = (centres[codes] + rng.standard_normal((n, 2)) * spread[codes, None]).astype(np.float32)
    values = (np.hypot(*(coords - centres[codes]).T) + rng.exponential(0.5, n)).astype(np.float32)
    return coords, codes, values


def wobbly_lasso(centre: np.ndarray, radius: float, vertices: int = 200) -> np.ndarray:
    """A concave, hand-drawn-like closed lasso around ``centre``."""
    angle = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    r = radius * (1 + 0.25 * np.sin(5 * angle) + 0.1 * np.cos(13 * angle))
    return centre + np.column_stack([r * np.cos(angle), r * np.sin(angle)])


def lasso_holding(coords: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """A lasso around the densest region whose radius is bisected until it holds about ``fraction`` of cells."""
    sample = coords[np.random.default_rng(seed).choice(len(coords), min(len(coords), 200_000), replace=False)]
    centre = np.median(sample, axis=0)
    low, high = 0.0, float(np.ptp(sample, axis=0).max())
    for _ in range(30):
        radius = (low + high) / 2
        held = Path(wobbly_lasso(centre, radius)).contains_points(sample).mean()
        low, high = (radius, high) if held < fraction else (low, radius)
    return wobbly_lasso(centre, (low + high) / 2)


def timed(function: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """Seconds of the first (cold) run, median seconds of ``repeats`` further runs, and the last result."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return times[0], statistics.median(times[1:] or times), result


def pixels_of(coords: np.ndarray) -> np.ndarray:
    """The pixel of each cell in the image :func:`rasterise` draws (same extent and shape)."""
    extent = data_extent(coords)
    height = max(1, round(WIDTH * (extent[3] - extent[2]) / (extent[1] - extent[0])))
    return pixel_index(coords, extent, WIDTH, height)[0]


def pandas_majority(coords: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Baseline: per-pixel majority category with a pandas groupby."""
    pixels = pixels_of(coords)
    frame = pd.DataFrame({"pixel": pixels, "code": codes})
    sizes = frame.groupby(["pixel", "code"]).size().reset_index(name="n")
    return sizes.sort_values(["pixel", "n"]).drop_duplicates("pixel", keep="last")["code"].to_numpy()


def pandas_mean(coords: np.ndarray, values: np.ndarray) -> pd.Series:
    """Baseline: per-pixel mean value with a pandas groupby."""
    return pd.DataFrame({"pixel": pixels_of(coords), "value": values}).groupby("pixel")["value"].mean()


def pandas_count(coords: np.ndarray) -> pd.Series:
    """Baseline: cells per pixel with pandas ``value_counts``."""
    return pd.Series(pixels_of(coords)).value_counts()


def box_path(x_range: tuple[float, float], y_range: tuple[float, float]) -> Path:
    (x0, x1), (y0, y1) = x_range, y_range
    return Path([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])


def run(n: int, clusters: int, repeats: int) -> pd.DataFrame:
    """Time every operation and its baseline; one row per operation."""
    coords, codes, values = synthetic_map(n, clusters)
    colours = [f"#{(37 * i) % 256:02x}{(91 * i) % 256:02x}{(173 * i) % 256:02x}" for i in range(clusters)]
    lasso = lasso_holding(coords, LASSO_FRACTION)
    off_data = 1.234567e-4  # keep the box's edges off the data, where the baseline's edge rule differs
    x_range = tuple(np.percentile(coords[::101, 0], [40, 55]) + off_data)
    y_range = tuple(np.percentile(coords[::101, 1], [40, 55]) + off_data)
    every = coords.astype(np.float64)
    cases = {
        "rasterise by category (majority)": (
            lambda: rasterise(coords, width=WIDTH, codes=codes, colours=colours),
            lambda: pandas_majority(coords, codes), "pandas groupby(pixel, category).size + max"),
        "rasterise by category (count-weighted mix)": (
            lambda: rasterise(coords, width=WIDTH, codes=codes, colours=colours, blend="mix"),
            lambda: pandas_majority(coords, codes), "pandas groupby(pixel, category).size + max"),
        "rasterise by value (pixel mean)": (
            lambda: rasterise(coords, width=WIDTH, values=values),
            lambda: pandas_mean(coords, values), "pandas groupby(pixel).mean"),
        "rasterise density only": (
            lambda: rasterise(coords, width=WIDTH), lambda: pandas_count(coords), "pandas value_counts(pixel)"),
        "rasterise by category + PNG data URI": (
            lambda: rasterise(coords, width=WIDTH, codes=codes, colours=colours).to_data_uri(), None, ""),
        "points_in_polygon (200-vertex lasso)": (
            lambda: points_in_polygon(coords, lasso),
            lambda: np.flatnonzero(Path(lasso).contains_points(every)), "Path.contains_points, every cell"),
        "points_in_box": (
            lambda: points_in_box(coords, x_range, y_range),
            lambda: np.flatnonzero(box_path(x_range, y_range).contains_points(every)),
            "box as a Path.contains_points, every cell"),
    }
    rows = []
    for name, (ours, baseline, baseline_name) in cases.items():
        first, seconds, result = timed(ours, repeats)
        base_seconds, _, base_result = timed(baseline, 0) if baseline else (float("nan"), None, None)
        detail = ""
        if isinstance(result, np.ndarray):
            assert np.array_equal(result, base_result), f"{name}: the baseline selects other cells"
            detail = f"{len(result) / n:.1%} of cells selected (same cells as the baseline)"
        rows.append({"operation": name, "seconds": seconds, "first run s": first, "baseline": baseline_name or "–",
                     "baseline s": base_seconds, "× faster": base_seconds / seconds, "note": detail})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=10_000_000)
    parser.add_argument("--clusters", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    table = run(args.cells, args.clusters, args.repeats)
    print(f"Map at scale: {args.cells:,} cells, {args.clusters} clusters/categories, image {WIDTH} px wide; "
          f"seconds: median of {args.repeats} runs after the first; baselines: one run; "
          "ratio: baseline seconds / seconds.")
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, numpy {np.__version__}, pandas {pd.__version__}.\n")
    print(markdown(table, index=False))


if __name__ == "__main__":
    main()
