"""Server-side rendering of every cell of a map, and selections resolved against every cell.

A browser cannot draw ten million WebGL points, so the dashboard shows an image of all cells
(:func:`rasterise`: one pass of :func:`numpy.bincount` over pixel indices) under an interactive
sample, and resolves lasso / box selections against the full layout
(:func:`points_in_polygon`, :func:`points_in_box`) rather than only the sampled points.

Only numpy (and matplotlib's path test) is needed; :meth:`RasterImage.to_png` uses Pillow.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ColourScale = Sequence[tuple[float, str]] | Sequence[Sequence]
"""A colour scale as ``[(position in [0, 1], colour), ...]`` (plotly's form); colours as
``"#rrggbb"`` or ``"rgb(r, g, b)"``."""

VIRIDIS: list[tuple[float, str]] = [
    (0.0, "#440154"), (0.111, "#482878"), (0.222, "#3e4989"), (0.333, "#31688e"), (0.444, "#26828e"),
    (0.556, "#1f9e89"), (0.667, "#35b779"), (0.778, "#6ece58"), (0.889, "#b5de2b"), (1.0, "#fde725")]
"""The default scale for numeric values (plotly's Viridis stops)."""
DENSITY_COLOUR = "#8c8c8c"
"""Colour of an uncoloured (density only) rendering."""
MIN_ALPHA = 0.5
"""Opacity of a pixel holding a single cell; the densest pixel is opaque (log scale in between)."""
DENSE_MAJORITY_BINS = 1 << 26
"""Above this many pixel × category bins the majority colour is found by sorting instead of a dense table."""
LUT_SIZE = 256


@dataclass(frozen=True)
class RasterImage:
    """An RGBA image of cells binned to pixels.

    Attributes
    ----------
    rgba
        ``(height, width, 4)`` uint8; row 0 is the top of the map (largest y).
    extent
        ``(x0, x1, y0, y1)``: the layout coordinates the image spans (left, right, bottom, top).
    counts
        ``(height, width)`` cells per pixel.
    """

    rgba: np.ndarray
    extent: tuple[float, float, float, float]
    counts: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return self.rgba.shape[0], self.rgba.shape[1]

    def to_png(self) -> bytes:
        """The image as PNG bytes (needs Pillow)."""
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(self.rgba, mode="RGBA").save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    def to_data_uri(self) -> str:
        """The image as a ``data:image/png;base64,…`` URI (for a plotly layout image)."""
        return "data:image/png;base64," + base64.b64encode(self.to_png()).decode("ascii")


# --------------------------------------------------------------------------- colours
def parse_colour(colour: str) -> np.ndarray:
    """``"#rrggbb"``, ``"#rgb"`` or ``"rgb(r, g, b)"`` / ``"rgba(…)"`` → float RGB in [0, 255].

    Raises
    ------
    ValueError
        For any other form.
    """
    text = colour.strip().lower()
    try:
        if text.startswith("#") and len(text) in (4, 7):
            digits = text[1:] if len(text) == 7 else "".join(c * 2 for c in text[1:])
            return np.array([int(digits[i:i + 2], 16) for i in (0, 2, 4)], dtype=np.float64)
        if text.startswith(("rgb(", "rgba(")) and text.endswith(")"):
            parts = text[text.index("(") + 1:-1].split(",")
            return np.array([float(p) for p in parts[:3]], dtype=np.float64)
    except ValueError:
        pass
    raise ValueError(f"Cannot read the colour {colour!r}: use '#rrggbb' or 'rgb(r, g, b)'.")


def palette_rgb(colours: Sequence[str]) -> np.ndarray:
    """``(k, 3)`` uint8 RGB of a list of colours."""
    rgb = np.array([parse_colour(c) for c in colours], dtype=np.float64).reshape(-1, 3)
    return np.rint(np.clip(rgb, 0, 255)).astype(np.uint8)


def scale_lut(scale: ColourScale, size: int = LUT_SIZE) -> np.ndarray:
    """A ``(size, 3)`` uint8 lookup table interpolating a colour scale linearly in RGB."""
    stops = sorted((float(position), parse_colour(str(colour))) for position, colour in scale)
    if not stops:
        raise ValueError("The colour scale is empty: give at least one (position, colour) stop.")
    positions = np.array([p for p, _ in stops])
    rgb = np.array([c for _, c in stops])
    grid = np.linspace(positions[0], positions[-1], size) if positions[-1] > positions[0] else np.zeros(size)
    table = np.column_stack([np.interp(grid, positions, rgb[:, i]) for i in range(3)])
    return np.rint(table).astype(np.uint8)


def density_alpha(counts: np.ndarray, min_alpha: float = MIN_ALPHA) -> np.ndarray:
    """uint8 opacity per pixel: 0 where empty, ``min_alpha`` for one cell, rising with log density to 1."""
    counts = np.asarray(counts)
    top = float(counts.max()) if counts.size else 0.0
    alpha = np.zeros(counts.shape, dtype=np.float64)
    occupied = counts > 0
    if top > 0:
        span = np.log(top) if top > 1 else 1.0
        alpha[occupied] = min_alpha + (1.0 - min_alpha) * np.log(counts[occupied]) / span
    return np.rint(alpha * 255).astype(np.uint8)


# --------------------------------------------------------------------------- binning
def data_extent(coords: np.ndarray) -> tuple[float, float, float, float]:
    """``(x0, x1, y0, y1)`` of finite coordinates (none may be NaN), widened where flat so each side has a length."""
    x0, x1 = float(coords[:, 0].min()), float(coords[:, 0].max())
    y0, y1 = float(coords[:, 1].min()), float(coords[:, 1].max())
    if x1 <= x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 <= y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    return x0, x1, y0, y1


def _check_coords(coords: np.ndarray) -> np.ndarray:
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords must be an (n, 2) array of x, y; got shape {coords.shape}.")
    return coords


def _finite_rows(coords: np.ndarray) -> np.ndarray | None:
    """Row mask of finite coordinates, or ``None`` when every row is finite (no copy needed)."""
    finite = np.isfinite(coords[:, 0]) & np.isfinite(coords[:, 1])
    return None if finite.all() else finite


def pixel_index(coords: np.ndarray, extent: tuple[float, float, float, float], width: int,
                height: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat pixel index (row-major, row 0 at the top) of each cell, and the mask of cells inside ``extent``.

    Non-finite coordinates fall outside. The right and top edges belong to the last pixel.
    """
    x0, x1, y0, y1 = extent
    x = coords[:, 0]
    y = coords[:, 1]
    inside = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)  # False for NaN
    with np.errstate(invalid="ignore", over="ignore"):  # cells outside (or NaN) are masked out anyway
        col = ((x - np.float32(x0)) * np.float32(width / (x1 - x0))).astype(np.int32, copy=False)
        row = ((np.float32(y1) - y) * np.float32(height / (y1 - y0))).astype(np.int32, copy=False)
    np.clip(col, 0, width - 1, out=col)
    np.clip(row, 0, height - 1, out=row)
    row *= np.int32(width)
    row += col
    return row, inside


def _raster_shape(extent: tuple[float, float, float, float], width: int, height: int | None) -> tuple[int, int]:
    if width < 1 or (height is not None and height < 1):
        raise ValueError(f"The image needs a positive size; got width={width}, height={height}.")
    if height is None:
        x0, x1, y0, y1 = extent
        height = max(1, int(round(width * (y1 - y0) / (x1 - x0))))
    return width, height


# --------------------------------------------------------------------------- colourings
def _majority_dense(pixels: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    table = np.bincount(pixels * k + codes, minlength=(int(pixels.max()) + 1) * k if len(pixels) else 0)
    return table.reshape(-1, k).argmax(axis=1)


def _majority_sparse(pixels: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    keys, counts = np.unique(pixels * k + codes, return_counts=True)
    pixel, code = keys // k, keys % k
    order = np.lexsort((-code, counts, pixel))  # last per pixel: most cells, then the lowest code
    pixel, code = pixel[order], code[order]
    last = np.r_[pixel[1:] != pixel[:-1], True]
    winner = np.zeros(int(pixel[-1]) + 1 if len(pixel) else 0, dtype=np.int64)
    winner[pixel[last]] = code[last]
    return winner


def majority_codes(pixels: np.ndarray, codes: np.ndarray, counts: np.ndarray, k: int) -> np.ndarray:
    """Per pixel, the most frequent category code among its cells (ties: the lowest code; 0 where empty).

    Only occupied pixels get a row of the pixel × category table (cells are renumbered by
    their pixel's rank among occupied pixels first), which keeps the table small enough for
    the cache-unfriendly scatter of :func:`numpy.bincount` to stay fast.
    """
    occupied = counts > 0
    n_occupied = int(occupied.sum())
    index_type = np.int32 if n_occupied * k < 2**31 else np.int64
    rank = np.cumsum(occupied, dtype=index_type) - 1
    dense, codes = rank[pixels], codes.astype(index_type, copy=False)
    majority = _majority_dense if n_occupied * k <= DENSE_MAJORITY_BINS else _majority_sparse
    found = majority(dense, codes, k)
    winners = np.zeros(counts.size, dtype=np.int64)
    winners[np.flatnonzero(occupied)[:len(found)]] = found
    return winners


def _category_rgb(pixels: np.ndarray, codes: np.ndarray, colours: Sequence[str], counts: np.ndarray,
                  blend: str) -> np.ndarray:
    rgb = palette_rgb(colours)
    if blend == "majority":
        return rgb[majority_codes(pixels, codes, counts, len(rgb))]
    if blend == "mix":
        sums = np.column_stack([np.bincount(pixels, weights=rgb[codes, i], minlength=counts.size)
                                for i in range(3)])
        return np.rint(sums / np.maximum(counts, 1)[:, None]).astype(np.uint8)
    raise ValueError(f"Unknown blend {blend!r}: use 'majority' or 'mix'.")


def _value_rgb(pixels: np.ndarray, values: np.ndarray, n_pixels: int, scale: ColourScale,
               value_range: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel uint8 RGB of the mean value, and the per-pixel count of cells with a (non-NaN) value."""
    known = ~np.isnan(values)
    if not known.all():
        pixels, values = pixels[known], values[known]
    counts = np.bincount(pixels, minlength=n_pixels)
    means = np.bincount(pixels, weights=values, minlength=n_pixels) / np.maximum(counts, 1)
    low, high = value_range if value_range is not None else (
        (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0))
    fraction = (means - low) / (high - low) if high > low else np.zeros_like(means)
    lut = scale_lut(scale)
    slot = np.clip(np.rint(fraction * (len(lut) - 1)), 0, len(lut) - 1).astype(np.intp)
    return lut[slot], counts


def _per_cell(array: np.ndarray | None, n: int, name: str) -> np.ndarray | None:
    if array is None:
        return None
    array = np.asarray(array)
    if array.shape != (n,):
        raise ValueError(f"{name} must hold one value per cell ({n:,}); got shape {array.shape}.")
    return array


def _check_codes(codes: np.ndarray, k: int) -> np.ndarray:
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"Category codes must be integers; got {codes.dtype}.")
    if len(codes) and (codes.min() < -1 or codes.max() >= k):
        raise ValueError(f"Category codes must lie in [-1, {k - 1}] for {k} colours (-1: no category).")
    return codes


def rasterise(coords: np.ndarray, *, width: int = 1024, height: int | None = None,
              extent: tuple[float, float, float, float] | None = None,
              codes: np.ndarray | None = None, colours: Sequence[str] | None = None,
              values: np.ndarray | None = None, scale: ColourScale = VIRIDIS,
              value_range: tuple[float, float] | None = None, blend: str = "majority",
              colour: str = DENSITY_COLOUR) -> RasterImage:
    """Render every cell of a 2-D map into an RGBA image in one binning pass.

    Parameters
    ----------
    coords
        ``(n, 2)`` layout coordinates (float32 is fastest); rows with NaN / inf are dropped.
    width, height
        Image size in pixels; ``height=None`` keeps the extent's aspect ratio.
    extent
        ``(x0, x1, y0, y1)`` to draw; cells outside are left out. Default: the data's bounds.
    codes, colours
        Categorical colouring: an integer code per cell and one colour per code; cells with
        code ``-1`` (no category) are left out of the image.
    values, scale, value_range
        Numeric colouring: a float per cell (NaN: no value); each pixel shows the mean of its
        cells' values through ``scale`` over ``value_range`` (default: the values' min and max).
    blend
        Categorical pixels: ``"majority"`` (the most frequent category's colour) or ``"mix"``
        (the count-weighted mean colour).
    colour
        Colour of an uncoloured (density only) rendering.

    Returns
    -------
    RasterImage
        RGBA pixels whose opacity rises with the log of the cell density, and the extent.

    Raises
    ------
    ValueError
        With no cell with finite coordinates, for both a categorical and a numeric colouring,
        for codes without colours, or for arrays not of one value per cell.
    """
    coords = _check_coords(coords)
    n = len(coords)
    codes, values = _per_cell(codes, n, "codes"), _per_cell(values, n, "values")
    if codes is not None and values is not None:
        raise ValueError("Colour by categories (codes) or by values, not both.")
    if (codes is None) != (colours is None):
        raise ValueError("A categorical colouring needs both codes and colours.")
    finite = _finite_rows(coords) if n else None
    if n == 0 or (finite is not None and not finite.any()):
        raise ValueError("There are no cells with finite coordinates to draw.")
    if finite is not None:
        coords, codes, values = (None if a is None else a[finite] for a in (coords, codes, values))
    if extent is None:
        extent = data_extent(coords)
    width, height = _raster_shape(extent, width, height)
    pixels, inside = pixel_index(coords, extent, width, height)
    keep = inside if codes is None else inside & (codes >= 0)
    if not keep.all():
        pixels = pixels[keep]
        codes = codes[keep] if codes is not None else None
        values = values[keep] if values is not None else None
    counts = np.bincount(pixels, minlength=width * height)
    if codes is not None:
        rgb = _category_rgb(pixels, _check_codes(codes, len(colours)), colours, counts, blend)
    elif values is not None:
        rgb, counts = _value_rgb(pixels, values.astype(np.float64, copy=False), width * height, scale, value_range)
    else:
        rgb = palette_rgb([colour])[0]
    rgba = np.empty((width * height, 4), dtype=np.uint8)
    rgba[:, :3] = rgb
    rgba[:, 3] = density_alpha(counts)
    return RasterImage(rgba.reshape(height, width, 4), tuple(float(e) for e in extent),
                       counts.reshape(height, width))


# --------------------------------------------------------------------------- selections
def points_in_box(coords: np.ndarray, x_range: Sequence[float], y_range: Sequence[float]) -> np.ndarray:
    """Indices (sorted, int64) of the points inside an axis-aligned box, edges included.

    ``x_range`` / ``y_range`` are two numbers each, in either order. NaN points are never inside.
    """
    coords = _check_coords(coords)
    (x0, x1), (y0, y1) = sorted(map(float, x_range)), sorted(map(float, y_range))
    x, y = coords[:, 0], coords[:, 1]
    return np.flatnonzero((x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)).astype(np.int64, copy=False)


def _polygon_vertices(polygon_xy: np.ndarray | Sequence) -> np.ndarray:
    vertices = np.asarray(polygon_xy, dtype=np.float64)
    if vertices.ndim != 2 or vertices.shape[1] != 2:
        raise ValueError(f"The polygon must be an (m, 2) array of x, y vertices; got shape {vertices.shape}.")
    vertices = vertices[np.isfinite(vertices).all(axis=1)]
    if len(vertices) < 3:
        raise ValueError(f"A polygon needs at least 3 vertices; got {len(vertices)}.")
    return vertices


def _edge_samples(vertices: np.ndarray, step: float) -> np.ndarray:
    """Points along every edge of the closed polygon, at most ``step`` apart (vertices included)."""
    starts, ends = vertices, np.roll(vertices, -1, axis=0)
    pieces = np.maximum(np.ceil(np.hypot(*(ends - starts).T) / step), 1).astype(np.int64)
    edge = np.repeat(np.arange(len(vertices)), pieces)
    fraction = (np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces)) / pieces[edge]
    return starts[edge] + fraction[:, None] * (ends[edge] - starts[edge])


def _dilate(mask: np.ndarray) -> np.ndarray:
    """A boolean grid grown by one cell in all eight directions."""
    padded = np.pad(mask, 1)
    grown = np.zeros_like(mask)
    rows, cols = mask.shape
    for dy in range(3):
        for dx in range(3):
            grown |= padded[dy:dy + rows, dx:dx + cols]
    return grown


def _polygon_grid(path, lower: np.ndarray, cell: np.ndarray, size: int) -> np.ndarray:
    """Per cell of a ``size`` × ``size`` grid over the polygon's box: 0 outside, 1 inside, 2 crossed by an edge.

    Cells the boundary may pass through are found conservatively: every cell holding an edge
    sample (samples at most one cell apart), grown by one cell. Any other cell lies wholly on
    one side, decided by its centre.
    """
    samples = _edge_samples(path.vertices, float(cell.min()))
    index = np.clip(((samples - lower) / cell).astype(np.int64), 0, size - 1)
    crossed = np.zeros((size, size), dtype=bool)
    crossed[index[:, 1], index[:, 0]] = True
    crossed = _dilate(crossed)
    centres = lower + (np.stack(np.meshgrid(np.arange(size), np.arange(size)), axis=-1).reshape(-1, 2) + 0.5) * cell
    grid = path.contains_points(centres).reshape(size, size).astype(np.int8)
    grid[crossed] = 2
    return grid


def points_in_polygon(coords: np.ndarray, polygon_xy: np.ndarray | Sequence, grid: int = 256) -> np.ndarray:
    """Indices (sorted, int64) of the points inside a polygon (a lasso), by the even-odd rule.

    Points outside the polygon's bounding box are discarded first (cheap comparisons). The box
    is then cut into a ``grid`` × ``grid`` lattice whose cells are classified once as inside,
    outside or crossed by the boundary; only points in crossed cells are tested exactly with
    :meth:`matplotlib.path.Path.contains_points`, so the cost hardly grows with the number of
    vertices.

    Parameters
    ----------
    coords
        ``(n, 2)`` points.
    polygon_xy
        ``(m, 2)`` vertices, closed implicitly (a repeated first vertex is harmless).
    grid
        Cells per side of the acceleration lattice (``1``: test every candidate exactly).
    """
    from matplotlib.path import Path

    vertices = _polygon_vertices(polygon_xy)
    lower, upper = vertices.min(axis=0), vertices.max(axis=0)
    candidates = points_in_box(coords, (lower[0], upper[0]), (lower[1], upper[1]))
    if len(candidates) == 0:
        return candidates
    path = Path(vertices)
    points = np.asarray(coords[candidates], dtype=np.float64)
    cell = np.maximum((upper - lower) / grid, np.finfo(np.float64).tiny)
    index = np.minimum(((points - lower) / cell).astype(np.int64), grid - 1)
    verdict = _polygon_grid(path, lower, cell, grid)[index[:, 1], index[:, 0]]
    unsure = np.flatnonzero(verdict == 2)
    verdict[unsure] = path.contains_points(points[unsure])
    return candidates[verdict == 1]
