"""The expression store of a bundle: raw counts and log-normalised values for every cell.

Two layouts sit side by side (DESIGN.md, "The contract"):

``soma/``
    A TileDB-SOMA experiment (measurement ``RNA``, X layers ``counts`` and ``lognorm``,
    obs, var): the reference format of the field, and the row-order access path
    ("these cells, all genes") used for comparison, training and embedding.
``by_gene/``
    A derived gene-major CSC copy of ``lognorm`` as three ``.npy`` files, memory-mapped:
    "this gene, all cells" (colouring a map) is one contiguous slice.
"""

from __future__ import annotations

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
    """Write ``matrix`` (cells x genes) as a CSC copy: ``indptr``, ``indices``, ``data``."""
    path.mkdir(parents=True)
    csc = sp.csc_matrix(matrix, dtype=np.float32)
    csc.sort_indices()
    write_npy(path / "indptr.npy", csc.indptr.astype(np.int64))
    write_npy(path / "indices.npy", csc.indices.astype(np.int32 if csc.shape[0] < 2**31 else np.int64))
    write_npy(path / "data.npy", csc.data.astype(np.float32))


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
        if not (self.path / "soma").exists() or not (self.path / "by_gene" / "indptr.npy").exists():
            raise BundleError(f"The expression store at {self.path} is incomplete: rebuild the bundle with `vcell build`.")
        self._indptr = np.load(self.path / "by_gene" / "indptr.npy", mmap_mode="r")
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
        return len(self._indptr) - 1

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
        start, stop = int(self._indptr[gene]), int(self._indptr[gene + 1])
        values = np.zeros(self.n_cells, dtype=np.float32)
        values[np.asarray(self._indices[start:stop])] = self._data[start:stop]
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
