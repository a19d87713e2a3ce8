"""Shared pieces of the dashboard: opening the atlas, headers, the error guard, progress, tables.

Pages import from here (and the map from :mod:`app.maps`) and hold no science: they call
engine functions and draw the results. Everything more than one page uses lives here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pandas as pd
import streamlit as st
from plotly.colors import qualitative

from engine.bundle.atlas import Atlas, read_atlas
from engine.errors import VCellError

BUNDLE_ENV = "VCELL_BUNDLE"
"""Environment variable holding the bundle path (set by ``vcell serve BUNDLE``)."""
STRICT_ENV = "VCELL_APP_STRICT"
"""When ``"1"``, unexpected exceptions propagate (tests), instead of becoming a short error box."""
ROLE_LABELS = {"cell_type": "Cell type", "condition": "Condition", "donor": "Donor", "batch": "Batch"}
GREY = "#d3d6dc"
ACCENT = "#e4572e"
PALETTE = qualitative.Dark24 + qualitative.Light24 + qualitative.Alphabet
_RESULTS_KEPT = 8

T = TypeVar("T")
logger = logging.getLogger("vcell.app")


# --------------------------------------------------------------------------- the atlas
@st.cache_resource(show_spinner="Opening the atlas…", max_entries=4)
def load_atlas(path: str) -> Atlas:
    """Open the bundle at ``path`` once per server process and load its metadata and layout.

    Parameters
    ----------
    path
        Absolute bundle path (the cache key).

    Returns
    -------
    Atlas
        The opened atlas, with ``obs`` and ``layout`` already read.
    """
    atlas = read_atlas(path)
    _ = atlas.obs, atlas.layout  # read now, so a broken bundle fails here and pages stay fast
    return atlas


def bundle_path() -> str | None:
    """The bundle path from :data:`BUNDLE_ENV`, or ``None`` when unset."""
    value = os.environ.get(BUNDLE_ENV, "").strip()
    return str(Path(value).expanduser().resolve()) if value else None


def current_atlas() -> Atlas:
    """The atlas this dashboard serves; on failure an error box, a hint, and the script stops.

    Returns
    -------
    Atlas
        The opened atlas (never returns otherwise).
    """
    path = bundle_path()
    if path is None:
        st.error("No atlas bundle is open: this dashboard needs one to show.")
        _how_to_start()
        st.stop()
    try:
        return load_atlas(path)
    except VCellError as err:
        st.error(str(err))
    except Exception as err:  # a corrupt bundle is bad input, not an app bug
        logger.exception("could not open %s", path)
        st.error(f"The atlas bundle at {path} could not be read ({type(err).__name__}: {err}): "
                 "check it with `vcell validate` and rebuild it with `vcell build`.")
    _how_to_start()
    st.stop()
    raise AssertionError("unreachable")  # st.stop raises


def _how_to_start() -> None:
    st.markdown("Start the dashboard on a bundle:\n\n"
                "```bash\nvcell build INPUT.h5ad --out atlas.vcell   # once\nvcell serve atlas.vcell\n```\n\n"
                "or try it on a generated demo atlas with `vcell demo`.")


def sidebar_header(atlas: Atlas) -> None:
    """Atlas name, size and the *generated* badge at the top of the sidebar (all pages)."""
    with st.sidebar:
        st.markdown(f"**{atlas.title}**")
        if atlas.generated:
            st.badge("Generated data", icon=":material/science:", color="orange",
                     help="Synthetic cells from `vcell generate`, not measurements.")
        st.caption(f"{atlas.n_cells:,} cells · {atlas.n_genes:,} genes · "
                   f"embedding {atlas.default_embedding}")


def page_header(atlas: Atlas, title: str, description: str) -> None:
    """Page title, a one-line description, and a visible badge when the atlas is generated."""
    st.title(title)
    if atlas.generated:
        st.badge("Generated data: synthetic cells with a known ground truth, not measurements",
                 icon=":material/science:", color="orange")
    st.caption(description)


@contextmanager
def guard(action: str) -> Iterator[None]:
    """Turn failures inside the block into one error box instead of a traceback.

    :class:`~engine.errors.VCellError` shows its own sentence; anything else shows a short
    message with the exception type (and propagates when :data:`STRICT_ENV` is ``"1"``, so
    tests see bugs).

    Parameters
    ----------
    action
        What was being done, for the unexpected case ("comparing conditions").
    """
    try:
        yield
    except VCellError as err:
        st.error(str(err), icon=":material/error:")
    except Exception as err:
        if os.environ.get(STRICT_ENV) == "1":
            raise
        logger.exception("unexpected error while %s", action)
        st.error(f"Unexpected {type(err).__name__} while {action}: {err}. "
                 "This is a bug in Virtual Cell Explorer; the server log has the details.",
                 icon=":material/bug_report:")


@contextmanager
def progress_bar(text: str) -> Iterator[Callable[[float, str], None]]:
    """A progress bar driven by an engine ``progress(fraction, message)`` callback.

    The bar is removed when the block ends.
    """
    bar = st.progress(0.0, text=text)

    def callback(fraction: float, message: str) -> None:
        bar.progress(min(max(float(fraction), 0.0), 1.0), text=message)

    try:
        yield callback
    finally:
        bar.empty()


def remembered(name: str, params: tuple, compute: Callable[[], T]) -> T:
    """Compute once per session and parameters; later reruns reuse the result.

    Failures are not remembered. The last few results are kept per session.
    """
    store: dict = st.session_state.setdefault("_vcell_results", {})
    key = (name, bundle_path(), params)
    if key not in store:
        store[key] = compute()
        while len(store) > _RESULTS_KEPT:
            store.pop(next(iter(store)))
    return store[key]


def download_csv(frame: pd.DataFrame, label: str, file_name: str, key: str) -> None:
    """A CSV download button for ``frame``."""
    st.download_button(label, frame.to_csv(index=False).encode(), file_name=file_name, mime="text/csv",
                       key=key, icon=":material/download:")


# --------------------------------------------------------------------------- colours and labels
def role_columns(atlas: Atlas) -> dict[str, str]:
    """Role → obs column for the roles this atlas has (cell type, condition, donor, batch)."""
    return {role: col for role, col in atlas.roles.items() if col is not None and col in atlas.obs.columns}


def colour_map(values: Sequence[str]) -> dict[str, str]:
    """A fixed colour per category, in the given order (same colours on every page)."""
    return {str(v): PALETTE[i % len(PALETTE)] for i, v in enumerate(values)}


def category_colours(atlas: Atlas, column: str) -> dict[str, str]:
    """Colours of an obs column's categories."""
    values = atlas.obs[column]
    categories = values.cat.categories if isinstance(values.dtype, pd.CategoricalDtype) else pd.unique(values)
    return colour_map([str(c) for c in categories])


def colour_columns(atlas: Atlas) -> list[str]:
    """Obs columns a map can be coloured by: role columns first, then other categoricals and numbers."""
    roles = list(dict.fromkeys(role_columns(atlas).values()))
    others = [c for c in atlas.obs.columns if c not in roles and _colourable(atlas.obs[c])]
    return roles + others


def _colourable(values: pd.Series) -> bool:
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return True
    return values.nunique(dropna=True) <= max(200, len(values) // 2) and values.nunique(dropna=True) > 1


def column_label(atlas: Atlas, column: str) -> str:
    """``"Cell type (cell_type)"`` for role columns, the name otherwise."""
    for role, col in role_columns(atlas).items():
        if col == column:
            return f"{ROLE_LABELS[role]} ({column})"
    return column


def kv_table(items: dict, prefix: str = "") -> pd.DataFrame:
    """A two-column table (``setting``, ``value``) of a possibly nested dict, values as text."""
    rows: list[tuple[str, str]] = []
    for name, value in items.items():
        label = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            rows += list(kv_table(value, prefix=f"{label} › ").itertuples(index=False, name=None))
        else:
            rows.append((label, _as_text(value)))
    return pd.DataFrame(rows, columns=["setting", "value"])


def _as_text(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_as_text(v) for v in value) if value else "—"
    if isinstance(value, dict):
        return "—"
    return str(value)


def show_table(frame: pd.DataFrame, height: int | str = "auto") -> None:
    """A tidy dataframe without the index."""
    st.dataframe(frame, hide_index=True, height=height)


@st.cache_resource(show_spinner=False, max_entries=4)
def _sorted_gene_labels(path: str) -> list[str]:
    atlas = load_atlas(path)
    return atlas.genes.search("", limit=len(atlas.genes))


def gene_options(atlas: Atlas) -> list[str]:
    """Every gene label of the atlas, alphabetical (the options of the gene pickers)."""
    return _sorted_gene_labels(str(atlas.path.resolve()))
