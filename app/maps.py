"""The atlas map and cell breakdowns: colourings, WebGL scatter figures, selections, bar charts.

Every map point carries its true cell position as ``customdata[0]``, so lasso / box
selections map back to cells. Above :data:`MAX_MAP_POINTS` cells the map draws an image of every
cell (rendered on the server, :func:`engine.space.raster.rasterise`) under an interactive WebGL sample,
and lasso / box selections are resolved against every cell's layout position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go
import streamlit as st

from app.components import ACCENT, GREY, ROLE_LABELS, category_colours, role_columns
from engine.bundle.atlas import Atlas
from engine.space.raster import points_in_box, points_in_polygon, rasterise
from engine.space.selection import SelectionSummary

MAX_MAP_POINTS = 50_000
"""Above this many cells the interactive map draws a reproducible random sample over an image of all cells.

Every point travels to the browser with its hover text at each rerun (200k points were ~17 MB of
JSON and 6-8 s per interaction on the 2-core test machine); the image shows every cell anyway.

Read at call time, so tests may monkeypatch it to exercise the large-atlas path on a small bundle."""
MAP_IMAGE_WIDTH = 800
"""Width in pixels of the server-side image of every cell (its height follows the layout's aspect)."""
SAMPLE_OPACITY = 0.55
"""Opacity of the interactive sample's markers drawn over the image of every cell."""
MAX_LEGEND = 60
"""Categorical colourings with more values than this are drawn as one trace without a legend."""
MAX_OVERLAY_POINTS = 50_000
"""Overlays larger than this are drawn only where they meet the map's sample."""
NUMERIC_SCALE = "Viridis"
EXPRESSION_SCALE = [[0.0, "#dcdcdc"], [0.02, "#fee8c8"], [0.35, "#fc8d59"], [0.7, "#d7301f"], [1.0, "#67000d"]]


@dataclass
class Colouring:
    """What colours the map: one value per cell of the atlas.

    Attributes
    ----------
    label
        Legend / colour-bar title.
    values
        Per cell (atlas order): strings for categories, floats for numbers; ``None`` for
        categories given by ``codes`` alone (a 10M-cell column is not turned into strings).
    colours
        Category → colour; ``None`` for numeric values.
    scale
        Plotly colour scale for numeric values.
    codes
        Optional per-cell position of the category in ``colours`` (``-1``: none); derived from
        ``values`` when not given.
    """

    label: str
    values: np.ndarray | None
    colours: dict[str, str] | None = None
    scale: str | list = NUMERIC_SCALE
    codes: np.ndarray | None = None

    @property
    def categorical(self) -> bool:
        """True for categories, False for a continuous value."""
        return self.colours is not None

    def category_codes(self) -> np.ndarray:
        """Per cell, the position of its category in ``colours`` (``-1`` for none)."""
        if self.codes is not None:
            return self.codes
        return pd.Categorical(self.values, categories=list(self.colours)).codes

    def values_at(self, cells: np.ndarray) -> np.ndarray:
        """The values of ``cells`` (category names for categories, ``"nan"`` for none)."""
        if self.values is not None:
            return self.values[cells]
        names = np.asarray([*self.colours, "nan"], dtype=object)
        return names[self.codes[cells]]  # code -1 (no category) picks the last name


@dataclass
class Overlay:
    """A group of cells drawn on top of the map (query cells, neighbours, a population)."""

    name: str
    cells: np.ndarray
    colour: str = ACCENT
    size: float = 7.0
    symbol: str = "circle"


def obs_colouring(atlas: Atlas, column: str) -> Colouring:
    """Colour by an obs column (categories, or a colour scale for numbers)."""
    values = atlas.obs[column]
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return Colouring(column, values.to_numpy(dtype=np.float64))
    if isinstance(values.dtype, pd.CategoricalDtype):
        return Colouring(column, None, category_colours(atlas, column), codes=values.cat.codes.to_numpy())
    return Colouring(column, values.astype(str).to_numpy(), category_colours(atlas, column))


def gene_colouring(atlas: Atlas, gene: str) -> Colouring:
    """Colour by a gene's log-normalised expression (raises GeneNotFoundError with suggestions)."""
    position = atlas.genes.resolve(gene)
    values = np.asarray(atlas.gene_values(position), dtype=np.float64)
    return Colouring(f"{atlas.genes.label(position)} (log1p CP10k)", values, scale=EXPRESSION_SCALE)


@st.cache_data(show_spinner=False, max_entries=8)
def map_sample(n_cells: int, max_points: int = MAX_MAP_POINTS, seed: int = 0) -> np.ndarray:
    """The cells the interactive map draws: all, or a reproducible random sample (sorted)."""
    if n_cells <= max_points:
        return np.arange(n_cells)
    return np.sort(np.random.default_rng(seed).choice(n_cells, max_points, replace=False))


def map_cells(atlas: Atlas) -> np.ndarray:
    """The cells drawn as points on this atlas's map (see :func:`map_sample`)."""
    return map_sample(atlas.n_cells, MAX_MAP_POINTS)


def is_sampled(atlas: Atlas) -> bool:
    """True when the map draws only a sample of the cells as points (over an image of all of them)."""
    return atlas.n_cells > MAX_MAP_POINTS


def map_caption(atlas: Atlas) -> None:
    """Say when the map's points are a sample rather than every cell."""
    if is_sampled(atlas):
        st.caption(f"The map is an image of all {atlas.n_cells:,} cells under a reproducible random sample of "
                   f"{len(map_cells(atlas)):,} for hover; lasso and box selections count every cell.")


# --------------------------------------------------------------------------- image of every cell
def colour_scale(scale: str | list) -> list:
    """A plotly colour scale (a name or ``[[position, colour], ...]``) as explicit stops."""
    return plotly.colors.get_colorscale(scale) if isinstance(scale, str) else list(scale)


def value_range(values: np.ndarray) -> tuple[float, float]:
    """Finite minimum and maximum of numeric values (``(0, 1)`` when there are none)."""
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)


def colouring_key(colouring: Colouring | None) -> str:
    """A cache key naming a colouring (its label and kind)."""
    if colouring is None:
        return "density"
    return f"{'categories' if colouring.categorical else 'values'}:{colouring.label}"


def render_cells(atlas: Atlas, colouring: Colouring | None) -> tuple[str, tuple[float, float, float, float]]:
    """An image of every cell in ``colouring`` (PNG data URI) and the layout extent it spans."""
    if colouring is None:
        style = dict(colour=GREY)
    elif colouring.categorical:
        style = dict(codes=colouring.category_codes(), colours=list(colouring.colours.values()))
    else:
        style = dict(values=colouring.values, scale=colour_scale(colouring.scale),
                     value_range=value_range(colouring.values))
    image = rasterise(np.asarray(atlas.layout, dtype=np.float32), width=MAP_IMAGE_WIDTH, **style)
    return image.to_data_uri(), image.extent


@st.cache_data(show_spinner="Drawing every cell…", max_entries=16)
def _cached_render(bundle: str, n_cells: int, key: str, _atlas: Atlas,
                   _colouring: Colouring | None) -> tuple[str, tuple[float, float, float, float]]:
    """:func:`render_cells`, keyed by bundle path, cell count and colouring key (the objects are not hashed)."""
    return render_cells(_atlas, _colouring)


def map_image(atlas: Atlas, colouring: Colouring | None) -> tuple[str, tuple[float, float, float, float]]:
    """:func:`render_cells`, cached per bundle and colouring across reruns and sessions."""
    return _cached_render(str(atlas.path), atlas.n_cells, colouring_key(colouring), atlas, colouring)


def add_cell_image(fig: go.Figure, atlas: Atlas, colouring: Colouring | None) -> None:
    """Put the image of every cell under the figure's traces and fix the axes to its extent."""
    source, (x0, x1, y0, y1) = map_image(atlas, colouring)
    fig.add_layout_image(source=source, xref="x", yref="y", x=x0, y=y1, sizex=x1 - x0, sizey=y1 - y0,
                         xanchor="left", yanchor="top", sizing="stretch", layer="below")
    fig.update_xaxes(range=[x0, x1], autorange=False)
    fig.update_yaxes(range=[y0, y1], autorange=False)


def _hover(atlas: Atlas, cells: np.ndarray, extra: np.ndarray | None = None,
           extra_label: str | None = None) -> tuple[np.ndarray, str]:
    """customdata (cell position first) and a hover template naming the role columns."""
    columns = [np.asarray(cells)]
    lines = ["<b>%{customdata[1]}</b>", "cell %{customdata[0]}"]
    drawn = atlas.obs.iloc[np.asarray(cells, dtype=np.int64)]  # only these rows become strings
    columns.append(drawn.index.to_numpy().astype(str))
    for role, column in role_columns(atlas).items():
        if role == "batch":
            continue
        columns.append(drawn[column].astype(str).to_numpy())
        lines.append(f"{ROLE_LABELS[role]}: %{{customdata[{len(columns) - 1}]}}")
    if extra is not None:
        columns.append(np.round(extra, 3) if np.issubdtype(np.asarray(extra).dtype, np.number) else extra)
        lines.append(f"{extra_label}: %{{customdata[{len(columns) - 1}]}}")
    return np.column_stack(columns).astype(object), "<br>".join(lines) + "<extra></extra>"


def _marker_size(n: int) -> float:
    return 6.0 if n < 5_000 else 4.0 if n < 50_000 else 3.0 if n < 150_000 else 2.0


def category_traces(atlas: Atlas, cells: np.ndarray, colouring: Colouring, size: float,
                    showlegend: bool = True) -> list[go.Scattergl]:
    """One WebGL trace per category of ``colouring`` among ``cells`` (empty categories skipped)."""
    xy = atlas.layout
    values = colouring.values_at(cells)
    traces = []
    for category, colour in colouring.colours.items():
        members = cells[values == category]
        if len(members) == 0:
            continue
        data, template = _hover(atlas, members)
        traces.append(go.Scattergl(x=xy[members, 0], y=xy[members, 1], mode="markers", name=category,
                                   marker=dict(size=size, color=colour), customdata=data, hovertemplate=template,
                                   legendgroup=category, showlegend=showlegend))
    return traces


def value_trace(atlas: Atlas, cells: np.ndarray, colouring: Colouring, size: float, showscale: bool = True,
                cmin: float | None = None, cmax: float | None = None) -> go.Scattergl:
    """One WebGL trace of ``cells`` on a colour scale, highest values drawn last (on top)."""
    xy = atlas.layout
    order = cells[np.argsort(colouring.values[cells], kind="stable")]
    ordered = colouring.values[order]
    data, template = _hover(atlas, order, ordered, colouring.label)
    return go.Scattergl(x=xy[order, 0], y=xy[order, 1], mode="markers", name=colouring.label, customdata=data,
                        hovertemplate=template, showlegend=False,
                        marker=dict(size=size, color=ordered, colorscale=colouring.scale, cmin=cmin, cmax=cmax,
                                    showscale=showscale,
                                    colorbar=dict(title=dict(text=colouring.label, side="right"), thickness=12)))


def map_figure(atlas: Atlas, colouring: Colouring | None = None, overlays: Sequence[Overlay] = (),
               height: int = 620, dragmode: str = "lasso") -> go.Figure:
    """The 2-D map of the atlas as WebGL scatter traces.

    Every point carries its true cell position as ``customdata[0]``, so selections map back
    to cells even when only a sample is drawn.

    Parameters
    ----------
    atlas
        The atlas.
    colouring
        How to colour the cells; ``None`` draws them grey (a background for overlays).
    overlays
        Cell groups drawn on top, in order.
    height
        Figure height in pixels.
    dragmode
        Initial drag tool (``"lasso"``, ``"select"`` or ``"pan"``).
    """
    cells = map_cells(atlas)
    xy = atlas.layout
    sampled = is_sampled(atlas)
    size = max(1.5, _marker_size(len(cells)) - 1) if sampled else _marker_size(len(cells))
    fig = go.Figure()
    if colouring is None:
        data, template = _hover(atlas, cells)
        fig.add_trace(go.Scattergl(x=xy[cells, 0], y=xy[cells, 1], mode="markers", name="all cells",
                                   marker=dict(size=size, color=GREY), customdata=data, hovertemplate=template))
    elif colouring.categorical and len(colouring.colours) > MAX_LEGEND:  # too many for a legend: one trace
        values = colouring.values_at(cells)
        data, template = _hover(atlas, cells, values, colouring.label)
        fig.add_trace(go.Scattergl(x=xy[cells, 0], y=xy[cells, 1], mode="markers", name=colouring.label,
                                   marker=dict(size=size, color=[colouring.colours.get(v, GREY) for v in values]),
                                   customdata=data, hovertemplate=template, showlegend=False))
    elif colouring.categorical:
        fig.add_traces(category_traces(atlas, cells, colouring, size))
    else:
        low, high = value_range(colouring.values) if sampled else (None, None)
        fig.add_trace(value_trace(atlas, cells, colouring, size, cmin=low, cmax=high))
    if sampled:
        fig.update_traces(marker_opacity=SAMPLE_OPACITY)
    for overlay in overlays:
        members = np.asarray(overlay.cells, dtype=np.int64)
        if len(cells) < atlas.n_cells and len(members) > MAX_OVERLAY_POINTS:
            members = np.intersect1d(members, cells)  # large groups: only their cells in the drawn sample
        data, template = _hover(atlas, members)
        fig.add_trace(go.Scattergl(
            x=xy[members, 0], y=xy[members, 1], mode="markers", name=overlay.name, customdata=data,
            hovertemplate=template,
            marker=dict(size=overlay.size, color=overlay.colour, symbol=overlay.symbol,
                        line=dict(width=0.5, color="white"))))
    axis = dict(showticklabels=False, showgrid=False, zeroline=False, title=None, showline=False)
    fig.update_layout(
        height=height, margin=dict(l=0, r=0, t=10, b=0), dragmode=dragmode, uirevision="map",
        plot_bgcolor="white", xaxis=axis, yaxis={**axis, "scaleanchor": "x", "scaleratio": 1},
        legend=dict(itemsizing="constant", title=dict(text=colouring.label if colouring and colouring.categorical
                                                      else None), bgcolor="rgba(255,255,255,0.7)"),
        hoverlabel=dict(bgcolor="white"))
    if sampled:
        add_cell_image(fig, atlas, colouring)
    return fig


def show_map(fig: go.Figure, key: str, selectable: bool = True, atlas: Atlas | None = None) -> np.ndarray:
    """Draw a map; with ``selectable``, return the cell positions picked by lasso / box (may be empty).

    Give ``atlas`` so that, when the map draws only a sample, selections count every cell.
    """
    config = {"displaylogo": False, "scrollZoom": True}
    if not selectable:
        st.plotly_chart(fig, key=key, config=config)
        return np.empty(0, dtype=np.int64)
    event = st.plotly_chart(fig, key=key, on_select="rerun", selection_mode=("lasso", "box"), config=config)
    return selected_cells(event, atlas)


def _selection(event) -> dict:
    try:
        return dict(event["selection"])
    except (KeyError, TypeError):
        return {}


def selected_cells(event, atlas: Atlas | None = None) -> np.ndarray:
    """Cell positions picked by a plotly selection event (sorted, unique).

    With an ``atlas`` whose map draws only a sample, the event's lasso polygons and boxes are
    resolved against every cell's layout position (their union); otherwise the picked points'
    ``customdata[0]`` are used.
    """
    selection = _selection(event)
    if atlas is not None and is_sampled(atlas) and (selection.get("lasso") or selection.get("box")):
        return cells_in_shapes(atlas.layout, selection.get("lasso") or [], selection.get("box") or [])
    cells = [int(p["customdata"][0]) for p in selection.get("points") or [] if p.get("customdata")]
    return np.unique(np.asarray(cells, dtype=np.int64))


def cells_in_shapes(layout: np.ndarray, lassos: Sequence[dict], boxes: Sequence[dict]) -> np.ndarray:
    """Cells inside any of the lasso polygons / boxes (``{"x": [...], "y": [...]}`` in layout coordinates)."""
    found = [points_in_polygon(layout, np.column_stack([lasso["x"], lasso["y"]]))
             for lasso in lassos if len(lasso.get("x") or []) >= 3]
    found += [points_in_box(layout, box["x"], box["y"]) for box in boxes
              if len(box.get("x") or []) == 2 and len(box.get("y") or []) == 2]
    if len(found) <= 1:  # each shape's cells come sorted and unique
        return found[0] if found else np.empty(0, dtype=np.int64)
    inside = np.zeros(len(layout), dtype=bool)  # the union in O(n), not a sort of millions of positions
    for cells in found:
        inside[cells] = True
    return np.flatnonzero(inside)


# --------------------------------------------------------------------------- summaries of cells
def breakdown_chart(frame: pd.DataFrame, title: str, colours: dict[str, str] | None = None,
                    top: int = 15) -> go.Figure:
    """Horizontal bars of a selection breakdown (``value, n_cells, fraction, enrichment``)."""
    frame = frame.head(top).iloc[::-1]
    colour = [colours.get(v, ACCENT) for v in frame["value"]] if colours else ACCENT
    fig = go.Figure(go.Bar(
        x=frame["n_cells"], y=frame["value"], orientation="h", marker_color=colour,
        customdata=np.column_stack([frame["fraction"] * 100, frame["enrichment"]]),
        hovertemplate="<b>%{y}</b><br>%{x:,} cells (%{customdata[0]:.1f}% of these)<br>"
                      "enrichment vs atlas: %{customdata[1]:.2f}×<extra></extra>"))
    fig.update_layout(height=max(180, 26 * len(frame) + 60), margin=dict(l=0, r=10, t=30, b=0),
                      title=dict(text=title, font=dict(size=14)), xaxis_title="cells", yaxis_title=None,
                      plot_bgcolor="white")
    fig.update_xaxes(showgrid=True, gridcolor="#eee")
    return fig


def show_breakdown(atlas: Atlas, summary: SelectionSummary, key: str) -> None:
    """Tabs of breakdown charts (cell type, condition, donor) for a set of cells."""
    roles = [r for r in ("cell_type", "condition", "donor") if r in summary.breakdown]
    if not roles:
        st.info("This atlas has no cell-type, condition or donor column to break the cells down by.")
        return
    columns = role_columns(atlas)
    for tab, role in zip(st.tabs([ROLE_LABELS[r] for r in roles]), roles):
        with tab:
            frame = summary.breakdown[role]
            shown = min(len(frame), 15)
            fig = breakdown_chart(frame, f"{ROLE_LABELS[role]}: top {shown} of {len(frame)}",
                                  category_colours(atlas, columns[role]))
            st.plotly_chart(fig, key=f"{key}_{role}", config={"displaylogo": False})


def split_map_figure(atlas: Atlas, colouring: Colouring, groups: Sequence[tuple[str, np.ndarray]],
                     height: int = 460) -> go.Figure:
    """Side-by-side maps, one panel per group of cells (e.g. the two conditions), on shared axes.

    Each panel draws the whole map in light grey for context and the group's cells (within the
    map's sample) coloured by ``colouring``; gene colour scales share one range across panels so
    the panels can be compared.
    """
    from plotly.subplots import make_subplots

    drawn = map_cells(atlas)
    xy = atlas.layout
    fig = make_subplots(rows=1, cols=len(groups), shared_xaxes=True, shared_yaxes=True,
                        subplot_titles=[f"{name} ({len(cells):,} cells)" for name, cells in groups],
                        horizontal_spacing=0.02)
    size = _marker_size(len(drawn))
    values = colouring.values
    low, high = (None, None) if colouring.categorical else (float(np.nanmin(values)), float(np.nanmax(values)))
    for col, (_, cells) in enumerate(groups, start=1):
        fig.add_trace(go.Scattergl(x=xy[drawn, 0], y=xy[drawn, 1], mode="markers", hoverinfo="skip",
                                   marker=dict(size=size, color="#eeeeee"), showlegend=False), row=1, col=col)
        members = np.intersect1d(np.asarray(cells, dtype=np.int64), drawn)
        if colouring.categorical:
            traces = category_traces(atlas, members, colouring, size, showlegend=col == 1)
        else:
            traces = [value_trace(atlas, members, colouring, size, showscale=col == len(groups), cmin=low, cmax=high)]
        for trace in traces:
            fig.add_trace(trace, row=1, col=col)
    axis = dict(showticklabels=False, showgrid=False, zeroline=False, title=None, showline=False)
    fig.update_xaxes(**axis)
    fig.update_yaxes(**axis, scaleanchor="x", scaleratio=1)
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=30, b=0), plot_bgcolor="white", dragmode="pan",
                      legend=dict(itemsizing="constant", bgcolor="rgba(255,255,255,0.7)"),
                      hoverlabel=dict(bgcolor="white"))
    return fig
