"""The expression store of a bundle: raw counts and log-normalised values for every cell.

Two layouts sit side by side (DESIGN.md, "The contract"):

``soma/``
    A TileDB-SOMA experiment (measurement ``RNA``, X layers ``counts`` and ``lognorm``,
    obs, var): the reference format of the field, and the row-order access path
    ("these cells, all genes") used for comparison, training and embedding.
``by_gene/``
    A derived gene-major copy of ``lognorm`` as three ``.npy`` files, memory-mapped:
    "this gene, all cells" (colouring a map) is one contiguous slice. It is compact, since at
    10M cells it is the largest file of a bundle: cells are cut into segments of
    :data:`SEGMENT` cells, ``indices`` holds a cell's position inside its segment (``uint16``),
    ``segment_ptr[g, s]`` where gene ``g``'s values of segment ``s`` start, and ``data`` holds
    float32 values, or float16 (3 significant digits, for display) above
    :data:`HALF_PRECISION_ABOVE` cells. Numbers for analysis come from ``soma/``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from engine.errors import BundleError, InputError
from engine.fileio import write_npy

MEASUREMENT = "RNA"
LOGNORM = "lognorm"
COUNTS = "counts"
SEGMENT = 2**16
"""Cells per segment of the gene-major copy (positions inside a segment fit ``uint16``)."""
HALF_PRECISION_ABOVE = 1_000_000
"""Atlases with more cells than this keep the gene-major values as float16 (half the disk)."""


def write_store(path: str | os.PathLike, obs: pd.DataFrame, var: pd.DataFrame,
                lognorm: sp.csr_matrix, counts: sp.csr_matrix | None = None) -> Path:
    """Write an expression store at ``path`` (a fresh directory inside a bundle being built).

    Parameters
    ----------
    path
        Directory to create.
    obs, var
        Cell and gene tables (row order = matrix order).
    lognorm
        Log-normalised values, cells x genes.
    counts
        Raw counts, or ``None`` when the input had none.
    """
    import tiledbsoma.io

    path = Path(path)
    path.mkdir(parents=True)
    layers = {COUNTS: sp.csr_matrix(counts, dtype=np.float32)} if counts is not None else {}
    adata = ad.AnnData(X=sp.csr_matrix(lognorm, dtype=np.float32), obs=_soma_safe(obs),
                       var=_soma_safe(var), layers=layers)
    tiledbsoma.io.from_anndata(str(path / "soma"), adata, measurement_name=MEASUREMENT,
                               X_layer_name=LOGNORM)
    write_gene_major(path / "by_gene", lognorm)
    return path


def write_gene_major(path: Path, matrix: sp.spmatrix) -> None:
    """Write ``matrix`` (cells x genes) as the gene-major copy (see the module docstring)."""
    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    matrix.sum_duplicates()
    writer = GeneMajorWriter(path, np.bincount(matrix.indices, minlength=matrix.shape[1]), matrix.shape[0])
    writer.write(0, matrix)
    writer.close()


class StoreWriter:
    """Write an expression store block by block (the streaming counterpart of :func:`write_store`).

    The SOMA experiment (obs, var, empty X layers of the full shape) is created at once;
    :meth:`write` appends a block of rows to every layer. The gene-major copy is written by
    :class:`GeneMajorWriter`, which needs the per-gene counts of stored values first.

    Parameters
    ----------
    path
        The store directory to create.
    obs, var
        Cell and gene tables (row order = matrix order).
    with_counts
        Create the ``counts`` layer too.
    """

    def __init__(self, path: str | os.PathLike, obs: pd.DataFrame, var: pd.DataFrame, with_counts: bool):
        import pyarrow as pa
        import tiledbsoma
        import tiledbsoma.io

        self.path = Path(path)
        self.path.mkdir(parents=True)
        uri = str(self.path / "soma")
        tiledbsoma.io.from_anndata(uri, ad.AnnData(obs=_soma_safe(obs), var=_soma_safe(var)),
                                   measurement_name=MEASUREMENT, X_layer_name=LOGNORM)
        # Blocks are written in TileDB's global order (soma_global_order), so TileDB's own sort and
        # order / duplicate checks (most of the write time) are skipped.
        self._experiment = tiledbsoma.Experiment.open(uri, "w", context=tiledbsoma.SOMATileDBContext(
            tiledb_config={"sm.check_global_order": "false", "sm.check_coord_dups": "false",
                           "sm.check_coord_oob": "false"}))
        collection = self._experiment.ms[MEASUREMENT].X
        shape = (len(obs), len(var))
        self._arrays = {name: collection.add_new_sparse_ndarray(name, type=pa.float32(), shape=shape)
                        for name in ((LOGNORM, COUNTS) if with_counts else (LOGNORM,))}
        dims = json.loads(self._arrays[LOGNORM].schema_config_options().dims)
        self._tile = (int(dims["soma_dim_0"]["tile"]), int(dims["soma_dim_1"]["tile"]))
        self._pa = pa

    def write(self, start: int, blocks: dict[str, sp.csr_matrix]) -> None:
        """Append ``{layer: block}`` for the cells ``start .. start + len(block)``."""
        for name, block in blocks.items():
            block = sp.csr_matrix(block, dtype=np.float32)
            block.sum_duplicates()  # canonical: sorted columns within rows, no duplicates
            rows = np.repeat(np.arange(start, start + block.shape[0], dtype=np.int64), np.diff(block.indptr))
            rows, cols, data = soma_global_order(rows, block.indices.astype(np.int64), block.data, self._tile)
            self._arrays[name].write(self._pa.table({"soma_dim_0": rows, "soma_dim_1": cols, "soma_data": data}),
                                     platform_config={"tiledb": {"write": {"sort_coords": False}}})

    def update_axes(self, obs: pd.DataFrame | None, var: pd.DataFrame | None) -> None:
        """Replace the cell and / or gene table (columns added since, e.g. clusters, gene statistics)."""
        import tiledbsoma.io

        if obs is not None:
            tiledbsoma.io.update_obs(self._experiment, _soma_safe(obs))
        if var is not None:
            tiledbsoma.io.update_var(self._experiment, _soma_safe(var), measurement_name=MEASUREMENT)

    def close(self) -> None:
        """Close the experiment."""
        for array in self._arrays.values():
            array.close()
        self._experiment.close()


def update_store_axes(path: str | os.PathLike, obs: pd.DataFrame | None, var: pd.DataFrame | None) -> None:
    """Replace the cell and / or gene table of the store at ``path`` (written by a closed :class:`StoreWriter`)."""
    import tiledbsoma
    import tiledbsoma.io

    with tiledbsoma.Experiment.open(str(Path(path) / "soma"), "w") as experiment:
        if obs is not None:
            tiledbsoma.io.update_obs(experiment, _soma_safe(obs))
        if var is not None:
            tiledbsoma.io.update_var(experiment, _soma_safe(var), measurement_name=MEASUREMENT)


class GeneMajorWriter:
    """Write the gene-major copy (module docstring) from row blocks in row order.

    Each gene's slice of ``indices`` and ``data`` is sized from the per-gene counts of stored
    values and filled at its own cursor; the files are memory-mapped only while a block is
    scattered into them, so memory stays at one block.

    Parameters
    ----------
    path
        The ``by_gene`` directory to create.
    nnz_per_gene
        Stored values per gene over all cells.
    n_cells
        Number of cells (chooses the value precision, :data:`HALF_PRECISION_ABOVE`).
    """

    def __init__(self, path: Path, nnz_per_gene: np.ndarray, n_cells: int):
        self.path, self.n_cells, self._rows = Path(path), int(n_cells), 0
        self.path.mkdir(parents=True)
        self._end = np.cumsum(nnz_per_gene, dtype=np.int64)
        self._cursor = self._end - np.asarray(nnz_per_gene, dtype=np.int64)
        self._ptr = np.zeros((len(self._end), -(-self.n_cells // SEGMENT) + 1), dtype=np.int64)
        total = int(self._end[-1]) if len(self._end) else 0
        value_dtype = np.float16 if self.n_cells > HALF_PRECISION_ABOVE else np.float32
        for name, dtype in (("indices", np.uint16), ("data", value_dtype)):
            if total == 0:
                write_npy(self.path / f"{name}.npy", np.zeros(0, dtype=dtype))
            else:
                np.lib.format.open_memmap(self.path / f"{name}.npy", mode="w+", dtype=dtype, shape=(total,)).flush()

    def write(self, start: int, block: sp.csr_matrix) -> None:
        """Add the cells ``start .. start + len(block)`` (blocks must follow each other)."""
        if start != self._rows:
            raise ValueError(f"blocks must come in row order: expected cells from {self._rows}, got {start}")
        block = sp.csr_matrix(block, dtype=np.float32)
        stop = start + block.shape[0]
        while self._rows < stop:  # one piece per segment the block touches
            first, segment = self._rows, self._rows // SEGMENT
            last = min(stop, (segment + 1) * SEGMENT)
            if first == segment * SEGMENT:
                self._ptr[:, segment] = self._cursor
            self._scatter(block[first - start:last - start], first - segment * SEGMENT)
            self._rows = last

    def _scatter(self, piece: sp.csr_matrix, offset: int) -> None:
        csc = sp.csc_matrix(piece)
        csc.sort_indices()
        per_gene = np.diff(csc.indptr)
        if csc.nnz == 0:
            return
        if np.any(self._cursor + per_gene > self._end):
            raise ValueError("a block has more values for some gene than the per-gene counts given")
        target = np.repeat(self._cursor - csc.indptr[:-1], per_gene) + np.arange(csc.nnz)
        for name, values in (("indices", csc.indices + offset), ("data", csc.data)):
            mapped = np.lib.format.open_memmap(self.path / f"{name}.npy", mode="r+")
            mapped[target] = values.astype(mapped.dtype)
            mapped.flush()
            del mapped  # unmapped after each block: written pages do not accumulate in this process
        self._cursor += per_gene

    def close(self) -> None:
        """Check that every cell and every gene's slice was written; write ``segment_ptr.npy``."""
        if self._rows != self.n_cells or not np.array_equal(self._cursor, self._end):
            raise ValueError("the blocks written do not match the cells and per-gene counts given")
        self._ptr[:, -1] = self._end
        write_npy(self.path / "segment_ptr.npy", self._ptr)


def soma_global_order(rows: np.ndarray, cols: np.ndarray, data: np.ndarray,
                      tile: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Put row-major COO (columns sorted within rows) into TileDB's global (tile-major) order.

    Row-major order already is the global order when the columns fit one tile (``tile`` is the
    ``(row, column)`` tile extent of a SOMA sparse array); otherwise the entries are sorted.
    """
    if cols.size and int(cols.max()) >= tile[1]:
        order = np.lexsort((cols, rows, cols // tile[1], rows // tile[0]))
        return rows[order], cols[order], data[order]
    return rows, cols, data


def _soma_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Make a frame SOMA-writable: string index, no object columns holding mixed types."""
    frame = frame.copy()
    frame.index = frame.index.astype(str)
    for col in frame.columns:
        if frame[col].dtype == object:
            frame[col] = frame[col].astype(str)
    return frame


class ExpressionStore:
    """Read access to a bundle's expression store.

    Parameters
    ----------
    path
        The ``store/`` directory of a bundle.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not (self.path / "soma").exists() or not (self.path / "by_gene" / "segment_ptr.npy").exists():
            raise BundleError(f"The expression store at {self.path} is incomplete or in an older layout: "
                              "rebuild the bundle with `vcell build`.")
        self._segment_ptr = np.load(self.path / "by_gene" / "segment_ptr.npy", mmap_mode="r")
        self._indices = np.load(self.path / "by_gene" / "indices.npy", mmap_mode="r")
        self._data = np.load(self.path / "by_gene" / "data.npy", mmap_mode="r")

    @cached_property
    def _experiment(self):
        import tiledbsoma

        return tiledbsoma.Experiment.open(str(self.path / "soma"))

    @cached_property
    def layers(self) -> list[str]:
        """The X layers present (``lognorm`` always, ``counts`` when the input had counts)."""
        return sorted(self._experiment.ms[MEASUREMENT].X.keys())

    @property
    def n_genes(self) -> int:
        """Number of genes."""
        return len(self._segment_ptr)

    @cached_property
    def n_cells(self) -> int:
        """Number of cells."""
        return int(self._experiment.ms[MEASUREMENT].X[LOGNORM].shape[0])

    def rows(self, cells: np.ndarray, genes: np.ndarray | None = None,
             layer: str = LOGNORM) -> sp.csr_matrix:
        """Expression of ``cells`` (positions, any order) x ``genes`` (all when ``None``).

        Returns a float32 CSR matrix whose rows follow the order of ``cells``.
        """
        cells = np.asarray(cells, dtype=np.int64)
        if layer not in self.layers:
            raise InputError(f"This atlas has no '{layer}' layer (it has {', '.join(self.layers)}): "
                             "raw counts were not in the input.")
        n_genes = self.n_genes
        if len(cells) == 0:
            width = n_genes if genes is None else len(genes)
            return sp.csr_matrix((0, width), dtype=np.float32)
        unique, inverse = np.unique(cells, return_inverse=True)
        array = self._experiment.ms[MEASUREMENT].X[layer]
        table = array.read(coords=(unique,)).tables().concat()
        rows = np.searchsorted(unique, table["soma_dim_0"].to_numpy())
        matrix = sp.csr_matrix(
            (table["soma_data"].to_numpy().astype(np.float32), (rows, table["soma_dim_1"].to_numpy())),
            shape=(len(unique), n_genes),
        )
        matrix = matrix[inverse]
        if genes is not None:
            matrix = matrix[:, np.asarray(genes, dtype=np.int64)]
        matrix.sort_indices()
        return matrix

    def iter_rows(self, layer: str = LOGNORM, chunk_size: int = 20_000) -> Iterator[tuple[int, sp.csr_matrix]]:
        """Yield ``(start, block)`` for consecutive blocks of cells, in row order."""
        for start in range(0, self.n_cells, chunk_size):
            stop = min(start + chunk_size, self.n_cells)
            yield start, self.rows(np.arange(start, stop), layer=layer)

    def gene(self, gene: int) -> np.ndarray:
        """Log-normalised values of one gene for every cell (dense float32)."""
        if not 0 <= gene < self.n_genes:
            raise IndexError(f"gene position {gene} is outside 0..{self.n_genes - 1}")
        ptr = self._segment_ptr[gene]
        cells = self._indices[ptr[0]:ptr[-1]].astype(np.int64)
        cells += np.repeat(np.arange(len(ptr) - 1, dtype=np.int64) * SEGMENT, np.diff(ptr))
        values = np.zeros(self.n_cells, dtype=np.float32)
        values[cells] = self._data[ptr[0]:ptr[-1]]
        return values

    def close(self) -> None:
        """Close the SOMA experiment if it was opened."""
        if "_experiment" in self.__dict__:
            self._experiment.close()
            del self.__dict__["_experiment"]


class InMemoryStore:
    """The read interface of :class:`ExpressionStore` over matrices already in memory.

    Lets the streaming loaders train on an atlas while its bundle is still being built.

    Parameters
    ----------
    lognorm
        Log-normalised values (cells x genes, CSR).
    counts
        Raw counts, or ``None``.
    """

    def __init__(self, lognorm: sp.csr_matrix, counts: sp.csr_matrix | None = None):
        self._layers = {LOGNORM: sp.csr_matrix(lognorm, dtype=np.float32)}
        if counts is not None:
            self._layers[COUNTS] = sp.csr_matrix(counts, dtype=np.float32)

    @property
    def layers(self) -> list[str]:
        """The layers held."""
        return sorted(self._layers)

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return self._layers[LOGNORM].shape[0]

    @property
    def n_genes(self) -> int:
        """Number of genes."""
        return self._layers[LOGNORM].shape[1]

    def rows(self, cells: np.ndarray, genes: np.ndarray | None = None, layer: str = LOGNORM) -> sp.csr_matrix:
        """Expression of ``cells`` x ``genes`` (all when ``None``), rows in the order of ``cells``."""
        if layer not in self._layers:
            raise InputError(f"This atlas has no '{layer}' layer (it has {', '.join(self.layers)}): "
                             "raw counts were not in the input.")
        matrix = self._layers[layer][np.asarray(cells, dtype=np.int64)]
        return matrix if genes is None else matrix[:, np.asarray(genes, dtype=np.int64)]

    def iter_rows(self, layer: str = LOGNORM, chunk_size: int = 20_000) -> Iterator[tuple[int, sp.csr_matrix]]:
        """Yield ``(start, block)`` for consecutive blocks of cells, in row order."""
        for start in range(0, self.n_cells, chunk_size):
            yield start, self.rows(np.arange(start, min(start + chunk_size, self.n_cells)), layer=layer)
