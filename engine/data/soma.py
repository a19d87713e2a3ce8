"""Reading TileDB-SOMA experiments and the CELLxGENE census into memory.

:func:`read_soma` reads (part of) an experiment, local or on object storage (``s3://``,
``tiledb://``); :func:`census_query` reads the primary cells of the CELLxGENE census matching
a tissue, disease or cell type, and :func:`write_census` saves such a slice as ``.h5ad`` (the input
of ``vcell build``). Both readers give obs and var meaningful names and record where the cells came
from in ``uns["vcell_source"]``. :func:`engine.data.read.read_source` dispatches here.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from engine.data.object_store import is_object_store, open_error, soma_context
from engine.errors import InputError, suggest
from engine.fileio import atomic_path

__all__ = ["SUPPORTED", "LAYER_PREFERENCE", "read_soma", "census_query", "write_census", "soma_type", "first_line"]

SUPPORTED = ("an .h5ad file, an AnnData .zarr store, a TileDB-SOMA experiment (directory or URI) "
             "or a `vcell generate` output directory")
"""The inputs :func:`engine.data.read.read_source` takes, as named in error messages."""
LAYER_PREFERENCE = ("counts", "raw", "data")
"""X layers of a SOMA measurement read by default, first present wins."""

_VAR_ID_COLUMNS = ("var_id", "feature_id", "gene_ids", "gene_id", "feature_name")
_OBS_ID_COLUMNS = ("obs_id", "soma_joinid")


def read_soma(
    uri: str | os.PathLike,
    *,
    measurement: str = "RNA",
    layer: str | None = None,
    obs_value_filter: str | None = None,
    obs_coords: Any = None,
    load_x: bool = True,
) -> ad.AnnData:
    """Read (part of) a TileDB-SOMA experiment into memory.

    Parameters
    ----------
    uri
        Local directory or URI (``s3://``, ``tiledb://``, ...) of a SOMA Experiment.
    measurement
        The measurement (``ms``) to read.
    layer
        X layer; default the first of ``counts``, ``raw``, ``data`` present (or the only one).
    obs_value_filter
        SOMA value filter on obs, e.g. ``"disease == 'normal'"``.
    obs_coords
        obs ``soma_joinid`` values (int, sequence, array or slice) to read.
    load_x
        ``False``: read obs and var only (``X`` is ``None``).

    Returns
    -------
    anndata.AnnData
        obs indexed by ``obs_id`` where present (else ``soma_joinid``); var indexed by the
        first of ``var_id``/``feature_id``/``gene_ids``/``feature_name`` present, those
        columns kept; ``uns["vcell_source"]`` names the URI, measurement and layer.
    """
    import tiledbsoma as soma


    text = os.fspath(uri)
    try:
        experiment = soma.open(text, mode="r", context=soma_context(text))
    except (soma.SOMAError, RuntimeError) as err:  # TileDB raises RuntimeError when it cannot connect
        if is_object_store(text):
            raise open_error(text, err) from None
        raise InputError(f"'{text}' could not be opened as a TileDB-SOMA experiment ({first_line(err)}): "
                         f"check the path or URI; give {SUPPORTED}.") from None
    with experiment:
        if experiment.soma_type != "SOMAExperiment":
            hint = (" (for the CELLxGENE census use census_query)" if experiment.soma_type == "SOMACollection"
                    else "")
            raise InputError(f"'{text}' is a {experiment.soma_type}, not a SOMAExperiment: give the experiment "
                             f"itself{hint}.")
        names = list(experiment.ms.keys())
        if measurement not in names:
            raise InputError(f"SOMA experiment '{text}' has no measurement '{measurement}': choose one of "
                             f"{', '.join(names) or '(none)'}.{suggest(measurement, names)}")
        layer = _choose_layer(experiment.ms[measurement], layer, text, measurement)
        coords = (slice(None),) if obs_coords is None else (_coords(obs_coords),)
        try:
            with experiment.axis_query(
                measurement, obs_query=soma.AxisQuery(value_filter=obs_value_filter, coords=coords)
            ) as query:
                with warnings.catch_warnings():  # "Transforming to str index": we set the index below
                    warnings.simplefilter("ignore", ad.ImplicitModificationWarning)
                    adata = query.to_anndata(X_name=layer if load_x else None)
        except (soma.SOMAError, ValueError, RuntimeError) as err:
            if obs_value_filter is None or isinstance(err, RuntimeError):  # the store or its connection failed
                raise open_error(text, err, what="read") from None
            raise InputError(f"The obs filter {obs_value_filter!r} could not be applied to '{text}' "
                             f"({first_line(err)}): use obs column names and quoted values, e.g. "
                             "\"disease == 'normal'\".") from None
    if adata.n_obs == 0:
        raise InputError(f"No cells of '{text}' match the obs filter {obs_value_filter!r}: loosen the filter.")
    _tidy_axes(adata)
    adata.uns["vcell_source"] = {"kind": "soma", "uri": text, "measurement": measurement, "layer": layer}
    return adata


def census_query(
    *,
    organism: str = "homo_sapiens",
    tissue: str | None = None,
    disease: str | None = None,
    cell_type: str | None = None,
    max_cells: int | None = None,
    census_version: str = "stable",
    uri: str | None = None,
    seed: int = 0,
) -> ad.AnnData:
    """Read primary cells of the CELLxGENE census matching tissue / disease / cell type.

    Parameters
    ----------
    organism
        ``"homo_sapiens"`` / ``"Homo sapiens"`` / ``"mus_musculus"``.
    tissue, disease, cell_type
        Census values of ``tissue_general``, ``disease`` and ``cell_type`` (``None``: any).
    max_cells
        Read at most this many cells, sampled reproducibly (``seed``) from all matching cells.
    census_version
        Census release (``"stable"``, ``"latest"``, ``"2025-01-30"``); used when ``uri`` is
        not given (needs internet).
    uri
        A census copy (local path or URI) opened with ``cellxgene_census.open_soma(uri=...)``.
    seed
        Seed of the cell sample.

    Returns
    -------
    anndata.AnnData
        Raw counts (X layer ``raw``), var indexed by Ensembl ``feature_id`` with
        ``feature_name`` kept; obs indexed by ``soma_joinid``; ``uns["vcell_source"]`` records
        the query, the census build and how many cells matched.
    """
    import cellxgene_census
    import tiledbsoma as soma


    if max_cells is not None and max_cells < 1:
        raise InputError(f"max_cells is {max_cells}: give a positive number of cells.")
    name = re.sub(r"[ ]+", "_", organism.strip()).lower()
    where = uri if uri is not None else f"census version '{census_version}'"
    try:
        census = (cellxgene_census.open_soma(uri=uri, context=soma_context(uri)) if uri is not None
                  else cellxgene_census.open_soma(census_version=census_version))
    except (soma.SOMAError, ValueError, OSError) as err:
        raise InputError(f"The CELLxGENE census ({where}) could not be opened ({first_line(err)}): check the "
                         "internet connection, the census version or the census URI.") from None
    with census:
        if "census_data" not in census:
            raise InputError(f"'{where}' is not a CELLxGENE census (it has no census_data collection): give the "
                             "census root.")
        organisms = list(census["census_data"].keys())
        if name not in organisms:
            raise InputError(f"The census has no organism '{organism}': choose one of {', '.join(organisms)}."
                             f"{suggest(name, organisms)}")
        experiment = census["census_data"][name]
        criteria = {"tissue_general": tissue, "disease": disease, "cell_type": cell_type}
        value_filter = " and ".join(["is_primary_data == True"] + [
            f"{column} == {_quote(value)}" for column, value in criteria.items() if value is not None])
        try:
            joinids = (experiment.obs.read(value_filter=value_filter, column_names=["soma_joinid"])
                       .concat().column("soma_joinid").to_numpy())
        except soma.SOMAError as err:
            raise InputError(f"The census obs could not be filtered with {value_filter!r} ({first_line(err)}): "
                             "this census lacks a column the query needs; give another census version.") from None
        if joinids.size == 0:
            raise InputError(f"No primary census cells match {_describe(criteria)}: check the spelling against "
                             f"the census values.{_census_hints(census, name, criteria)}")
        n_matching = int(joinids.size)
        if max_cells is not None and n_matching > max_cells:
            joinids = np.sort(np.random.default_rng(seed).choice(joinids, size=int(max_cells), replace=False))
        with warnings.catch_warnings():  # "Transforming to str index": we set the index below
            warnings.simplefilter("ignore", ad.ImplicitModificationWarning)
            adata = cellxgene_census.get_anndata(census, name, measurement_name="RNA", X_name="raw",
                                                 obs_coords=np.sort(joinids))
        build = _census_build(census)
    _tidy_axes(adata)
    adata.uns["vcell_source"] = {
        "kind": "census", "where": where, "organism": name, "value_filter": value_filter,
        "n_matching": n_matching, "n_read": int(adata.n_obs), "seed": int(seed), **build,
    }
    return adata


def write_census(
    out: str | os.PathLike,
    *,
    organism: str = "homo_sapiens",
    tissue: str | None = None,
    disease: str | None = None,
    cell_type: str | None = None,
    max_cells: int | None = None,
    census_version: str = "stable",
    uri: str | None = None,
    seed: int = 0,
) -> ad.AnnData:
    """Query the census (:func:`census_query`) and write the slice to ``out`` as ``.h5ad``, atomically.

    Parameters
    ----------
    out
        The ``.h5ad`` file to write (replaced if it exists; nothing is left behind on failure).
    organism, tissue, disease, cell_type, max_cells, census_version, uri, seed
        The query, as in :func:`census_query`.

    Returns
    -------
    anndata.AnnData
        The slice written. Its ``uns["vcell_source"]`` (the query record) is not in the file:
        it may hold values HDF5 cannot store.

    Raises
    ------
    InputError
        ``out`` does not end in ``.h5ad``, or the query fails (see :func:`census_query`).
    """
    out = Path(out)
    if out.suffix != ".h5ad":
        raise InputError(f"The census slice is written as .h5ad: give an output file ending in .h5ad "
                         f"(got {out.name}).")
    adata = census_query(organism=organism, tissue=tissue, disease=disease, cell_type=cell_type,
                         max_cells=max_cells, census_version=census_version, uri=uri, seed=seed)
    source = adata.uns.pop("vcell_source", None)
    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp)
    if source is not None:
        adata.uns["vcell_source"] = source
    return adata


def soma_type(path: Path) -> str | None:
    """The SOMA type of the object at ``path`` (``"SOMAExperiment"``, ...); ``None`` when it is none."""
    import tiledbsoma as soma

    try:
        with soma.open(str(path), mode="r") as obj:
            return obj.soma_type
    except soma.SOMAError:
        return None


def _choose_layer(ms: Any, layer: str | None, where: str, measurement: str) -> str:
    layers = list(ms.X.keys()) if "X" in ms else []
    if layer is not None:
        if layer not in layers:
            raise InputError(f"Measurement '{measurement}' of '{where}' has no X layer '{layer}': choose one of "
                             f"{', '.join(layers) or '(none)'}.{suggest(layer, layers)}")
        return layer
    for name in LAYER_PREFERENCE:
        if name in layers:
            return name
    if len(layers) == 1:
        return layers[0]
    raise InputError(f"Measurement '{measurement}' of '{where}' has X layers {', '.join(layers) or '(none)'} and "
                     "none is called counts, raw or data: name the layer to read.")


def _tidy_axes(adata: ad.AnnData) -> None:
    """Give SOMA results meaningful obs/var names (ids stay as columns)."""
    for frame, columns, axis in ((adata.var, _VAR_ID_COLUMNS, "var"), (adata.obs, _OBS_ID_COLUMNS, "obs")):
        if not _is_default_index(frame.index):
            continue
        for column in columns:
            if column in frame.columns and frame[column].is_unique:
                names = pd.Index(frame[column].astype(str).to_numpy(), name=None)
                if axis == "var":
                    adata.var_names = names
                else:
                    adata.obs_names = names
                break


def _is_default_index(index: pd.Index) -> bool:
    return len(index) == 0 or bool(np.array_equal(index.astype(str), np.arange(len(index)).astype(str)))


def _coords(obs_coords: Any) -> Any:
    if isinstance(obs_coords, slice | int | np.integer):
        return obs_coords
    return np.asarray(obs_coords, dtype=np.int64)


def _quote(value: str) -> str:
    value = str(value)
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise InputError(f"The value {value!r} has both kinds of quote, which a census filter cannot hold: leave "
                     "one kind out.")


def _describe(criteria: dict[str, str | None]) -> str:
    given = [f"{column} '{value}'" for column, value in criteria.items() if value is not None]
    return " and ".join(given) if given else "the query"


def _census_hints(census: Any, organism: str, criteria: dict[str, str | None]) -> str:
    """`` Did you mean`` suffix from the census's summary_cell_counts table, where present."""
    import tiledbsoma as soma

    try:
        summary = census["census_info"]["summary_cell_counts"].read().concat().to_pandas()
    except (KeyError, soma.SOMAError):  # hints are best-effort; the error itself is already clear
        return ""
    if not {"organism", "category", "label"} <= set(summary.columns):
        return ""
    hints = ""
    for column, value in criteria.items():
        if value is None:
            continue
        known = summary.loc[(summary["organism"].str.lower().str.replace(" ", "_") == organism)
                            & (summary["category"] == column), "label"].astype(str)
        if len(known) and value not in set(known):
            hints += suggest(value, known)
    return hints


def _census_build(census: Any) -> dict[str, str]:
    import tiledbsoma as soma

    try:
        summary = census["census_info"]["summary"].read().concat().to_pandas()
    except (KeyError, soma.SOMAError):  # provenance is best-effort
        return {}
    if not {"label", "value"} <= set(summary.columns):
        return {}
    values = dict(zip(summary["label"].astype(str), summary["value"].astype(str)))
    return {k: values[k] for k in ("census_schema_version", "census_build_date") if k in values}


def first_line(err: BaseException) -> str:
    """The first line of an error's message, unquoted, for a one-sentence error of our own."""
    lines = str(err).strip().splitlines()
    first = lines[0].removeprefix("SOMAError: ").strip() if lines else ""
    if len(first) > 1 and first[0] == first[-1] and first[0] in "'\"":
        first = first[1:-1]
    return first or type(err).__name__
