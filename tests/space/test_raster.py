"""engine.space.raster: exact pixel counts and colours on small cases, and lasso / box selections that
match a brute-force reference on random points."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.path import Path

from engine.space.raster import (RasterImage, density_alpha, parse_colour, points_in_box, points_in_polygon, rasterise,
                           scale_lut)

EXTENT = (0.0, 2.0, 0.0, 2.0)
RED, BLUE = "#ff0000", "#0000ff"


def grid_points() -> np.ndarray:
    """Cells in a 2 × 2 image over [0, 2]²: 3 in the top-left pixel, 1 in the bottom-right one."""
    return np.array([[0.2, 1.8], [0.5, 1.5], [0.9, 1.1], [1.5, 0.5]], dtype=np.float32)


def test_counts_land_in_the_right_pixels_top_row_first():
    image = rasterise(grid_points(), width=2, height=2, extent=EXTENT)
    assert isinstance(image, RasterImage)
    np.testing.assert_array_equal(image.counts, [[3, 0], [0, 1]])
    assert image.rgba.shape == (2, 2, 4) and image.rgba.dtype == np.uint8
    assert image.extent == EXTENT
    assert image.rgba[0, 0, 3] == 255 and image.rgba[0, 1, 3] == 0 and 0 < image.rgba[1, 1, 3] < 255


def test_edges_and_cells_outside_the_extent():
    coords = np.array([[2.0, 2.0], [0.0, 0.0], [5.0, 1.0], [-0.1, 1.0]], dtype=np.float32)
    image = rasterise(coords, width=2, height=2, extent=EXTENT)
    np.testing.assert_array_equal(image.counts, [[0, 1], [1, 0]])


def test_default_extent_and_aspect_follow_the_data():
    coords = np.array([[0.0, 0.0], [4.0, 2.0]], dtype=np.float32)
    image = rasterise(coords, width=40)
    assert image.extent == (0.0, 4.0, 0.0, 2.0)
    assert image.shape == (20, 40)
    assert image.counts.sum() == 2 and image.counts[0, -1] == 1 and image.counts[-1, 0] == 1


def test_categorical_pixels_take_the_majority_colour():
    codes = np.array([1, 0, 1, 0])  # top-left: two of code 1, one of code 0
    image = rasterise(grid_points(), width=2, height=2, extent=EXTENT, codes=codes, colours=[RED, BLUE])
    np.testing.assert_array_equal(image.rgba[0, 0, :3], [0, 0, 255])
    np.testing.assert_array_equal(image.rgba[1, 1, :3], [255, 0, 0])


def test_majority_ties_go_to_the_lowest_code_and_missing_codes_are_left_out():
    coords = np.array([[0.5, 0.5], [0.5, 0.5], [1.5, 1.5]], dtype=np.float32)
    image = rasterise(coords, width=2, height=2, extent=EXTENT, codes=np.array([1, 0, -1]), colours=[RED, BLUE])
    np.testing.assert_array_equal(image.rgba[1, 0, :3], [255, 0, 0])
    assert image.counts[0, 1] == 0 and image.rgba[0, 1, 3] == 0


def test_sparse_majority_matches_the_dense_table(monkeypatch):
    rng = np.random.default_rng(0)
    coords = rng.normal(size=(5000, 2)).astype(np.float32)
    codes = rng.integers(0, 7, 5000)
    colours = [f"#{i:02x}{2 * i:02x}{3 * i:02x}" for i in range(7)]
    dense = rasterise(coords, width=30, codes=codes, colours=colours)
    monkeypatch.setattr("engine.space.raster.DENSE_MAJORITY_BINS", 0)
    np.testing.assert_array_equal(rasterise(coords, width=30, codes=codes, colours=colours).rgba, dense.rgba)


def test_mix_blends_colours_by_count():
    codes = np.array([1, 0, 1, 0])
    image = rasterise(grid_points(), width=2, height=2, extent=EXTENT, codes=codes, colours=[RED, BLUE],
                      blend="mix")
    np.testing.assert_array_equal(image.rgba[0, 0, :3], [85, 0, 170])


def test_numeric_pixels_show_the_mean_value_on_the_scale():
    values = np.array([0.0, 1.0, np.nan, 0.25])  # top-left mean 0.5 (NaN ignored)
    scale = [(0.0, "#000000"), (1.0, "#ffffff")]
    image = rasterise(grid_points(), width=2, height=2, extent=EXTENT, values=values, scale=scale,
                      value_range=(0.0, 1.0))
    assert abs(int(image.rgba[0, 0, 0]) - 128) <= 1
    assert abs(int(image.rgba[1, 1, 0]) - 64) <= 1
    np.testing.assert_array_equal(image.counts, [[2, 0], [0, 1]])


def test_nan_coordinates_are_dropped():
    coords = np.array([[np.nan, 1.0], [0.5, 0.5], [1.5, np.inf], [1.5, 1.5]], dtype=np.float32)
    image = rasterise(coords, width=2, height=2, codes=np.array([0, 0, 1, 1]), colours=[RED, BLUE])
    assert image.counts.sum() == 2
    assert image.extent == (0.5, 1.5, 0.5, 1.5)


@pytest.mark.parametrize("coords", [np.empty((0, 2), np.float32), np.full((3, 2), np.nan, np.float32)])
def test_nothing_to_draw_is_an_error(coords):
    with pytest.raises(ValueError, match="no cells"):
        rasterise(coords)


def test_bad_arguments_are_clear_errors():
    coords = grid_points()
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        rasterise(coords[:, 0])
    with pytest.raises(ValueError, match="not both"):
        rasterise(coords, codes=np.zeros(4, int), colours=[RED], values=np.zeros(4))
    with pytest.raises(ValueError, match="one value per cell"):
        rasterise(coords, values=np.zeros(3))
    with pytest.raises(ValueError, match=r"\[-1, 0\]"):
        rasterise(coords, codes=np.array([0, 1, 0, 0]), colours=[RED])
    with pytest.raises(ValueError, match="colour"):
        parse_colour("reddish")


def test_colour_helpers():
    np.testing.assert_array_equal(parse_colour("rgb(1, 2, 3)"), [1, 2, 3])
    np.testing.assert_array_equal(parse_colour("#f00"), [255, 0, 0])
    lut = scale_lut([(0.0, "#000000"), (1.0, "#ff0000")], size=3)
    np.testing.assert_array_equal(lut[:, 0], [0, 128, 255])
    np.testing.assert_array_equal(density_alpha(np.array([0, 1, 100])), [0, 128, 255])


def test_png_data_uri():
    uri = rasterise(grid_points(), width=4).to_data_uri()
    assert uri.startswith("data:image/png;base64,")


# --------------------------------------------------------------------------- selections
@pytest.fixture(scope="module")
def points() -> np.ndarray:
    rng = np.random.default_rng(1)
    coords = rng.normal(size=(20_000, 2)).astype(np.float32)
    coords[::997] = np.nan
    return coords


def reference(coords: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Brute force: every point through matplotlib's even-odd test (NaN points outside)."""
    inside = Path(polygon).contains_points(np.nan_to_num(coords.astype(np.float64), nan=1e9))
    return np.flatnonzero(inside)


CONCAVE = np.array([[-1.5, -1.5], [1.5, -1.5], [1.5, 1.5], [0.5, 1.5], [0.5, -0.5], [-0.5, -0.5],
                    [-0.5, 1.5], [-1.5, 1.5]])  # a U shape


def star(n_tips: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    angles = np.linspace(0, 2 * np.pi, 2 * n_tips, endpoint=False)
    radii = np.where(np.arange(2 * n_tips) % 2 == 0, rng.uniform(1, 2, 2 * n_tips), rng.uniform(0.2, 0.6, 2 * n_tips))
    return np.column_stack([radii * np.cos(angles), radii * np.sin(angles)]) + rng.normal(0, 0.3, 2)


@pytest.mark.parametrize("polygon", [CONCAVE, star(5, 0), star(60, 1), CONCAVE[::-1]],
                         ids=["concave", "star5", "star60", "clockwise"])
def test_points_in_polygon_matches_brute_force(points, polygon):
    found = points_in_polygon(points, polygon)
    np.testing.assert_array_equal(found, reference(points, polygon))
    assert found.dtype == np.int64 and len(found) > 0


def test_points_in_polygon_without_the_grid_and_with_a_closed_lasso(points):
    closed = np.vstack([CONCAVE, CONCAVE[:1]])
    np.testing.assert_array_equal(points_in_polygon(points, closed, grid=1), reference(points, CONCAVE))


def test_points_in_polygon_outside_everything_and_bad_polygons(points):
    assert len(points_in_polygon(points, [[10, 10], [11, 10], [11, 11]])) == 0
    with pytest.raises(ValueError, match="3 vertices"):
        points_in_polygon(points, [[0, 0], [1, 1]])


def test_points_in_box_matches_brute_force_in_either_order(points):
    x, y = points[:, 0], points[:, 1]
    expected = np.flatnonzero((x >= -0.5) & (x <= 1.0) & (y >= 0.0) & (y <= 2.0))
    np.testing.assert_array_equal(points_in_box(points, (1.0, -0.5), (0.0, 2.0)), expected)
    np.testing.assert_array_equal(points_in_box(points, (-0.5, 1.0), (2.0, 0.0)), expected)
