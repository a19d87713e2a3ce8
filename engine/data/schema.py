"""Harmonise obs metadata to the CELLxGENE column names.

Input atlases name their columns many ways (``stim``, ``group_id``, ``sample_id``,
``cluster_id``, ``seurat_annotations``, ...). :func:`harmonise_obs` maps them to the
CELLxGENE names the engine uses (``cell_type``, ``disease``, ``donor_id``, ``batch``), from
explicit keys or from guesses, and returns the mapping so the caller can record it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from engine.errors import InputError, MissingKeyError, suggest

CELL_TYPE = "cell_type"
CONDITION = "disease"
DONOR = "donor_id"
BATCH = "batch"
ROLES = (CELL_TYPE, CONDITION, DONOR, BATCH)

UNKNOWN = "unknown"
"""The value a role column gets where the source column is missing or empty."""

CANDIDATES: dict[str, tuple[str, ...]] = {
    CELL_TYPE: ("cell_type", "celltype", "cell_types", "cell_label", "seurat_annotations",
                "annotation", "cluster_id", "bulk_labels", "louvain", "leiden"),
    CONDITION: ("disease", "condition", "stim", "group_id", "group", "status", "treatment"),
    DONOR: ("donor_id", "donor", "individual", "patient", "subject", "sample_id", "sample",
            "orig.ident"),
    BATCH: ("batch", "batch_id", "assay", "source_file", "library", "library_id", "dataset_id"),
}
"""Ordered, case-insensitive guesses per role; the first usable column wins."""

REFERENCE_NAMES = ("normal", "healthy", "control", "ctrl", "pato:0000461", "unstimulated",
                   "baseline")
"""Condition values taken as the reference (healthy) condition, in order of preference."""

_MAX_LEVELS_FRACTION = 0.5  # a guessed column with more levels than this fraction of cells is an id


def harmonise_obs(
    adata: ad.AnnData,
    *,
    cell_type_key: str | None = None,
    condition_key: str | None = None,
    donor_key: str | None = None,
    batch_key: str | None = None,
    reference_condition: str | None = None,
) -> tuple[ad.AnnData, dict[str, Any]]:
    """Map obs columns to the CELLxGENE names ``cell_type``, ``disease``, ``donor_id``, ``batch``.

    Parameters
    ----------
    adata
        The atlas; it is not modified (the result shares its matrices).
    cell_type_key, condition_key, donor_key, batch_key
        Explicit source columns; they win over guesses. A missing one raises
        :class:`~engine.errors.MissingKeyError`.
    reference_condition
        The healthy / control condition; must be one of the condition values. Guessed from
        :data:`REFERENCE_NAMES` when not given.

    Returns
    -------
    adata
        A new AnnData whose obs holds the role columns as categoricals of ``str`` (missing or
        empty values become ``"unknown"``) beside the original columns. An original column
        that has a role's name but is not that role's source is kept as ``<name>_original``.
    mapping
        ``{role: {"source": column, "guessed": bool} | None, ..., "reference_condition":
        value | None, "reference_guessed": bool}``.

    Raises
    ------
    MissingKeyError
        An explicit key is not an obs column.
    InputError
        The reference condition is not a condition value, or no condition column exists.

    Notes
    -----
    A guessed column must have 2 or more levels and fewer levels than half the cells (so
    per-cell ids are never guessed); a guessed donor or batch column that merely relabels an
    already-mapped column (e.g. ``orig.ident`` = ``stim``) is skipped. One column never
    serves two roles.
    """
    obs = adata.obs
    explicit = {CELL_TYPE: cell_type_key, CONDITION: condition_key, DONOR: donor_key,
                BATCH: batch_key}
    sources: dict[str, str | None] = {}
    guessed: dict[str, bool] = {}
    for role, key in explicit.items():
        if key is not None:
            if key not in obs.columns:
                raise MissingKeyError(
                    f"obs has no column '{key}' (given as the {role} key); available columns: "
                    f"{_listing(obs.columns)}.{suggest(key, map(str, obs.columns))}"
                )
            sources[role] = key
            guessed[role] = False
    dupes = [k for k in set(sources.values()) if list(sources.values()).count(k) > 1]
    if dupes:
        raise InputError(f"obs column '{dupes[0]}' was given for two roles: give a different column to each of "
                         "--cell-type-key, --condition-key, --donor-key and --batch-key.")
    for role in ROLES:
        if role not in sources:
            sources[role] = _guess(obs, role, sources)
            guessed[role] = sources[role] is not None

    new_obs = obs.copy()
    for role in ROLES:
        source = sources[role]
        if role in new_obs.columns and source != role:
            new_obs = new_obs.rename(columns={role: f"{role}_original"})
        if source is not None:
            new_obs[role] = _as_str_categorical(obs[source])

    reference, reference_guessed = _reference(new_obs, sources[CONDITION], reference_condition)
    mapping: dict[str, Any] = {
        role: ({"source": sources[role], "guessed": guessed[role]} if sources[role] else None)
        for role in ROLES
    }
    mapping["reference_condition"] = reference
    mapping["reference_guessed"] = reference_guessed
    return _with_obs(adata, new_obs), mapping


def find_reference(values: Sequence[str]) -> str | None:
    """Return the first of ``values`` that names a healthy / control condition, or ``None``.

    Matching is case-insensitive against :data:`REFERENCE_NAMES`, preferring earlier names.
    """
    lowered = {str(v).strip().lower(): str(v) for v in values}
    for name in REFERENCE_NAMES:
        if name in lowered:
            return lowered[name]
    return None


def _guess(obs: pd.DataFrame, role: str, taken: dict[str, str | None]) -> str | None:
    """First candidate column for ``role`` that is usable and not already taken."""
    by_lower: dict[str, str] = {}
    for column in obs.columns:
        by_lower.setdefault(str(column).lower(), column)
    used = {c for c in taken.values() if c is not None}
    for candidate in CANDIDATES[role]:
        column = by_lower.get(candidate)
        if column is None or column in used:
            continue
        if not _usable(obs[column]):
            continue
        if role in (DONOR, BATCH) and any(_same_partition(obs[column], obs[c]) for c in used):
            continue
        return column
    return None


def _usable(series: pd.Series) -> bool:
    """A grouping column: 2 or more levels, clearly fewer levels than cells, not floats."""
    if pd.api.types.is_float_dtype(series.dtype):
        return False
    n_levels = series.nunique(dropna=True)
    return 2 <= n_levels and (n_levels <= _MAX_LEVELS_FRACTION * len(series) or n_levels <= 2)


def _same_partition(a: pd.Series, b: pd.Series) -> bool:
    """True when ``a`` and ``b`` group the cells identically (one relabels the other)."""
    codes_a = pd.factorize(a.astype(str))[0]
    codes_b = pd.factorize(b.astype(str))[0]
    pairs = pd.unique(codes_a.astype(np.int64) * (codes_b.max() + 1) + codes_b)
    return len(pairs) == codes_a.max() + 1 == codes_b.max() + 1


def _as_str_categorical(series: pd.Series) -> pd.Categorical:
    """Values as a categorical of ``str``; NaN and empty strings become :data:`UNKNOWN`."""
    values = series.astype(object)
    missing = values.isna().to_numpy()
    text = values.astype(str).str.strip()
    text[missing | (text == "").to_numpy() | text.str.lower().isin(["nan", "none"]).to_numpy()] = UNKNOWN
    if isinstance(series.dtype, pd.CategoricalDtype):
        present = set(text)
        order = list(dict.fromkeys(str(c).strip() for c in series.cat.categories))
        order = [c for c in order if c in present]
        extra = sorted(present - set(order))
        return pd.Categorical(text, categories=order + extra)
    return pd.Categorical(text)


def _reference(obs: pd.DataFrame, condition_source: str | None,
               explicit: str | None) -> tuple[str | None, bool]:
    """The reference condition and whether it was guessed."""
    if condition_source is None:
        if explicit is not None:
            raise InputError(
                f"A reference condition '{explicit}' was given but the atlas has no condition column: "
                "give --condition-key too."
            )
        return None, False
    values = [str(v) for v in obs[CONDITION].cat.categories]
    if explicit is not None:
        matches = [v for v in values if v == str(explicit)] or \
                  [v for v in values if v.lower() == str(explicit).lower()]
        if not matches:
            raise InputError(
                f"Reference condition '{explicit}' is not a value of '{condition_source}': choose one of "
                f"{_listing(values)}.{suggest(str(explicit), values)}"
            )
        return matches[0], False
    found = find_reference(values)
    return found, found is not None


def _with_obs(adata: ad.AnnData, obs: pd.DataFrame) -> ad.AnnData:
    """A new AnnData with ``obs`` replaced, sharing the matrices of ``adata`` (backed too)."""
    raw = None
    if adata.raw is not None:
        raw = {"X": adata.raw.X, "var": adata.raw.var.copy(), "varm": dict(adata.raw.varm)}
    new = ad.AnnData(
        X=adata.X,
        obs=obs,
        var=adata.var.copy(),
        uns=dict(adata.uns),
        obsm=dict(adata.obsm),
        varm=dict(adata.varm),
        obsp=dict(adata.obsp),
        varp=dict(adata.varp),
        layers=dict(adata.layers),
        raw=raw,
    )
    return new


def _listing(names, limit: int = 20) -> str:
    names = [str(n) for n in names]
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
