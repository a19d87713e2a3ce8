"""Read an atlas from any supported source into an AnnData.

Sources: an ``.h5ad`` file (backed when larger than memory allows), an AnnData ``.zarr``
store, a TileDB-SOMA experiment (local directory or URI such as ``s3://`` or
``tiledb://``; read by :mod:`engine.data.soma`, which also queries the CELLxGENE census),
and a ``vcell generate`` output directory (``generated.json`` beside ``atlas.soma/`` or
``atlas.h5ad``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import anndata as ad

from engine.data.soma import SUPPORTED, first_line, read_soma, soma_type
from engine.errors import InputError

GENERATED_JSON = "generated.json"
BACKED_RAM_FRACTION = 0.4
"""An .h5ad larger than this fraction of available memory is opened backed (read-only)."""

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def read_source(
    path_or_uri: str | os.PathLike,
    *,
    backed: bool | None = None,
    measurement: str = "RNA",
    layer: str | None = None,
    load_x: bool = True,
) -> ad.AnnData:
    """Read an atlas from a file, directory or URI.

    Parameters
    ----------
    path_or_uri
        An ``.h5ad`` file, an AnnData ``.zarr`` store, a TileDB-SOMA experiment (local
        directory or URI), or a ``vcell generate`` output directory.
    backed
        For ``.h5ad``: ``True`` opens read-only backed (X stays on disk), ``False`` loads it,
        ``None`` backs files larger than 40% of available memory. Ignored for other sources.
    measurement, layer
        For SOMA sources: the measurement and X layer (see :func:`read_soma`).
    load_x
        For SOMA sources: ``False`` reads obs and var only (``X`` is ``None``; the layer chosen
        is still recorded, for a row-block reader such as :mod:`engine.data.blocks`).

    Returns
    -------
    anndata.AnnData
        Generator output carries its parsed ``generated.json`` in ``uns["vcell_generated"]``.
        Every result records where it came from in ``uns["vcell_source"]`` (generator output
        also the inner store's record under ``"store"``).

    Raises
    ------
    InputError
        The path does not exist, is not an AnnData/HDF5 file, is a directory of no known
        kind, or has an unsupported extension.
    """
    text = os.fspath(path_or_uri)
    if _URI.match(text) and not text.startswith("file://"):
        return read_soma(text, measurement=measurement, layer=layer, load_x=load_x)
    path = Path(text.removeprefix("file://")).expanduser()
    if not path.exists():
        raise InputError(f"'{path}' does not exist: check the path; give {SUPPORTED}.")
    if path.is_dir():
        return _read_directory(path, backed=backed, measurement=measurement, layer=layer, load_x=load_x)
    suffix = path.suffix.lower()
    if suffix == ".h5ad":
        return _read_h5ad(path, backed)
    raise InputError(f"'{path.name}' has the unsupported extension '{path.suffix or '(none)'}': give {SUPPORTED} "
                     "(convert other formats with scanpy's readers and write_h5ad first).")


def available_memory() -> int:
    """Bytes of memory available to new allocations (psutil, /proc/meminfo or sysconf)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 * 1024**3


def _read_directory(path: Path, *, backed: bool | None, measurement: str, layer: str | None,
                    load_x: bool = True) -> ad.AnnData:
    if (path / GENERATED_JSON).is_file():
        return _read_generated(path, backed=backed, measurement=measurement, layer=layer, load_x=load_x)
    kind = soma_type(path)
    if kind == "SOMAExperiment":
        return read_soma(path, measurement=measurement, layer=layer, load_x=load_x)
    if _is_anndata_zarr(path):
        adata = ad.read_zarr(path)
        adata.uns["vcell_source"] = {"kind": "zarr", "path": str(path)}
        return adata
    if kind is not None:
        raise InputError(f"'{path}' is a TileDB-SOMA {kind.removeprefix('SOMA')}, not an experiment: give the "
                         "experiment inside it (for the CELLxGENE census use census_query).")
    raise InputError(f"Directory '{path}' is neither a TileDB-SOMA experiment nor a `vcell generate` output "
                     f"(no {GENERATED_JSON}): give {SUPPORTED}.")


def _read_generated(path: Path, *, backed: bool | None, measurement: str, layer: str | None,
                    load_x: bool = True) -> ad.AnnData:
    try:
        info = json.loads((path / GENERATED_JSON).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"'{path / GENERATED_JSON}' is not valid JSON ({err}): regenerate the atlas with "
                         "`vcell generate`.") from None
    if (path / "atlas.soma").is_dir():
        adata = read_soma(path / "atlas.soma", measurement=measurement, layer=layer, load_x=load_x)
    elif (path / "atlas.h5ad").is_file():
        adata = _read_h5ad(path / "atlas.h5ad", backed)
    else:
        raise InputError(f"Generator output '{path}' has {GENERATED_JSON} but no atlas.soma/ or atlas.h5ad: "
                         "regenerate it with `vcell generate`.")
    adata.uns["vcell_generated"] = info
    adata.uns["vcell_source"] = {"kind": "generated", "path": str(path), "store": adata.uns.get("vcell_source")}
    return adata


def _read_h5ad(path: Path, backed: bool | None) -> ad.AnnData:
    with open(path, "rb") as fh:
        head = fh.read(len(_HDF5_SIGNATURE))
    if head != _HDF5_SIGNATURE:
        raise InputError(f"'{path.name}' is not an HDF5 file, so not an AnnData .h5ad (perhaps a CSV or another "
                         "format renamed): give a file written by anndata's write_h5ad.")
    missing = _missing_anndata_groups(path)
    if missing:
        raise InputError(f"'{path.name}' is an HDF5 file but not an AnnData (it has no {' or '.join(missing)}; "
                         "perhaps a 10x .h5 or loom file): give a file written by anndata's write_h5ad.")
    if backed is None:
        backed = _should_back(path.stat().st_size, available_memory())
    try:
        adata = ad.read_h5ad(path, backed="r" if backed else None)
    except (KeyError, TypeError, ValueError, OSError, AttributeError, IndexError) as err:
        raise InputError(f"'{path.name}' is an HDF5 file but not a readable AnnData ({first_line(err)}): give a "
                         "file written by anndata's write_h5ad.") from None
    adata.uns["vcell_source"] = {"kind": "h5ad", "path": str(path), "backed": bool(backed)}
    return adata


def _should_back(size_bytes: int, available_bytes: int) -> bool:
    """Open backed when the file is larger than :data:`BACKED_RAM_FRACTION` of available memory."""
    return size_bytes > BACKED_RAM_FRACTION * available_bytes


def _missing_anndata_groups(path: Path) -> list[str]:
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            return [name for name in ("obs", "var") if name not in fh]
    except OSError as err:
        raise InputError(f"'{path.name}' could not be opened as HDF5 ({first_line(err)}): the file may be "
                         "truncated or still being written; give a complete .h5ad file.") from None


def _is_anndata_zarr(path: Path) -> bool:
    for name in (".zattrs", "zarr.json"):
        meta = path / name
        if meta.is_file():
            try:
                text = meta.read_text()
            except (OSError, UnicodeDecodeError):
                return False
            return '"anndata"' in text
    return False


