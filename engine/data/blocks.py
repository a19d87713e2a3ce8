"""Read an input atlas in row blocks, never holding its expression matrix whole.

:func:`open_rows` reads obs and var (small) and leaves the matrices on disk: a backed ``.h5ad``
or a TileDB-SOMA X layer (:class:`SomaRows`, also inside ``vcell generate`` output).
:func:`plan_matrices` picks raw counts or log-normalised values as the in-memory path does
(:func:`engine.data.normalise.choose_counts` / ``choose_lognorm``), looking at a few rows only,
and :func:`iter_expression` yields ``(start, lognorm, counts)`` blocks, checked block by block.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from engine.data.normalise import (
    COUNTS_LAYERS,
    LOGNORM_LAYERS,
    check_counts,
    find_counts,
    find_lognorm,
    iter_row_blocks,
    lognorm_description,
    looks_logged,
    matrix_candidates,
    normalise_log1p,
)
from engine.data.object_store import open_error, soma_context
from engine.data.read import read_source
from engine.errors import InputError

NAN_MESSAGE = "The expression matrix contains NaN or infinite values: fix the input file."


class SomaRows:
    """Rows of one X layer of a TileDB-SOMA experiment, read on demand as CSR float32.

    Supports what the block readers use of a matrix: ``shape`` and ``[rows]`` with ``rows`` a
    slice (step 1) or an array of row positions (obs in ``soma_joinid`` order).

    Parameters
    ----------
    uri, measurement, layer
        Where the X layer is.
    n_genes
        Width of the layer (var rows).
    """

    def __init__(self, uri: str, measurement: str, layer: str, n_genes: int):
        import tiledbsoma as soma


        self._uri = str(uri)
        try:
            self._experiment = soma.Experiment.open(self._uri, context=soma_context(self._uri))
        except (soma.SOMAError, RuntimeError) as err:  # RuntimeError: TileDB could not connect
            raise open_error(self._uri, err) from None
        self._array = self._experiment.ms[measurement].X[layer]
        joinids = np.sort(self._experiment.obs.read(column_names=["soma_joinid"]).concat()
                          .column("soma_joinid").to_numpy())
        self._joinids = None if np.array_equal(joinids, np.arange(len(joinids))) else joinids
        self.shape = (len(joinids), int(n_genes))

    def __getitem__(self, rows: slice | np.ndarray) -> sp.csr_matrix:
        positions = np.arange(self.shape[0])[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64)
        if len(positions) == 0:
            return sp.csr_matrix((0, self.shape[1]), dtype=np.float32)
        ids = positions if self._joinids is None else self._joinids[positions]
        contiguous = bool(np.all(np.diff(ids) == 1))
        ascending = contiguous or bool(np.all(np.diff(ids) > 0))
        # rows in any order, repeats included: read each row once, in ascending order, then put them in place
        wanted, order = (ids, None) if ascending else np.unique(ids, return_inverse=True)
        coords = slice(int(ids[0]), int(ids[-1])) if contiguous else wanted  # SOMA slices include their end
        table = self._read(coords)
        dim0 = table["soma_dim_0"].to_numpy()
        rows_out = dim0 - ids[0] if contiguous else np.searchsorted(wanted, dim0)
        matrix = sp.csr_matrix((table["soma_data"].to_numpy().astype(np.float32),
                                (rows_out, table["soma_dim_1"].to_numpy())), shape=(len(wanted), self.shape[1]))
        return matrix if order is None else matrix[order]

    def _read(self, coords: slice | np.ndarray) -> Any:
        import tiledbsoma as soma


        try:
            return self._array.read(coords=(coords,)).tables().concat()
        except (soma.SOMAError, RuntimeError) as err:  # e.g. the connection to an object store dropped mid-build
            raise open_error(self._uri, err, what="read (X rows)") from None

    def close(self) -> None:
        """Close the experiment."""
        self._experiment.close()


@dataclass
class RowSource:
    """An input atlas whose obs / var are in memory and whose matrices stay on disk.

    Attributes
    ----------
    adata
        obs, var and uns (``vcell_generated`` for generator output); ``X`` only when backed.
    lazy_x
        The SOMA X layer read row by row, or ``None`` (the matrices are those of ``adata``).
    """

    adata: ad.AnnData
    lazy_x: SomaRows | None = None

    @property
    def n_obs(self) -> int:
        """Number of cells."""
        return self.adata.n_obs

    def candidates(self, names: tuple[str, ...], layers_first: bool = True) -> list[tuple[str, Any]]:
        """``(label, matrix)`` candidates as :func:`engine.data.normalise.matrix_candidates` gives."""

        if self.lazy_x is not None:
            return [("X", self.lazy_x)]
        return matrix_candidates(self.adata, names, layers_first=layers_first)

    def close(self) -> None:
        """Release the files held open."""
        if self.lazy_x is not None:
            self.lazy_x.close()
        if self.adata.isbacked:
            self.adata.file.close()


def open_rows(source: str | os.PathLike) -> RowSource:
    """Open ``source`` (any input :func:`engine.data.read.read_source` takes) for row-block reading."""

    adata = read_source(source, backed=True, load_x=False)
    where = adata.uns.get("vcell_source") or {}
    if where.get("kind") == "generated":
        where = where.get("store") or {}
    lazy = None
    if adata.X is None and where.get("kind") == "soma":
        lazy = SomaRows(where["uri"], where["measurement"], where["layer"], adata.n_vars)
        if lazy.shape[0] != adata.n_obs:
            raise InputError(f"The SOMA experiment '{where['uri']}' has {lazy.shape[0]} obs rows but its query "
                             f"returned {adata.n_obs}: repair or re-export the experiment.")
    return RowSource(adata, lazy)


@dataclass
class MatrixPlan:
    """Which input matrix becomes the counts and log-normalised values, and how.

    Attributes
    ----------
    label
        The matrix, as the manifest names it (``"X"``, ``"layers['counts']"``).
    matrix
        The matrix itself, on disk (sliced by rows).
    is_counts
        Raw counts (normalised here) rather than normalised values.
    needs_log
        Normalised values that still need :func:`~engine.data.normalise.normalise_log1p`.
    notes
        The manifest's ``matrices`` entry.
    """

    label: str
    matrix: Any
    is_counts: bool
    needs_log: bool = False
    notes: dict = field(default_factory=dict)


def plan_matrices(source: RowSource) -> MatrixPlan:
    """Choose the matrices as :func:`engine.build.pipeline.prepare_matrices` does, reading a few rows only."""

    label, matrix, _ = find_counts(source.candidates(COUNTS_LAYERS))
    if matrix is not None:
        return MatrixPlan(label, matrix, True, notes={"counts": label, "lognorm": "log1p(counts / total * 1e4)"})
    label, matrix = find_lognorm(source.candidates(LOGNORM_LAYERS, layers_first=False))
    logged = looks_logged(matrix)
    return MatrixPlan(label, matrix, False, needs_log=not logged, notes={
        "counts": None, "lognorm": lognorm_description(label, logged),
        "warning": "No raw counts in the input: pseudobulk and count models are unavailable."})


def iter_expression(plan: MatrixPlan, obs_names: pd.Index, chunk_rows: int
                    ) -> Iterator[tuple[int, sp.csr_matrix, sp.csr_matrix | None]]:
    """Yield ``(start, lognorm, counts)`` CSR float32 blocks of ``chunk_rows`` cells (``counts`` may be ``None``).

    Raises
    ------
    InputError
        A block holds NaN, infinite or negative values (named by its first bad cell).
    """

    what = "raw counts" if plan.is_counts else "normalised values"
    for start, block in iter_row_blocks(plan.matrix, chunk_rows):
        block = block.astype(np.float32)
        check_counts(block, obs_names=obs_names[start:start + block.shape[0]], name=plan.label, what=what,
                     chunk_rows=max(block.shape[0], 1))
        lognorm = normalise_log1p(block) if plan.is_counts or plan.needs_log else block
        lognorm = sp.csr_matrix(lognorm, dtype=np.float32)
        if not np.isfinite(lognorm.data).all():
            raise InputError(NAN_MESSAGE)
        yield start, lognorm, block if plan.is_counts else None
