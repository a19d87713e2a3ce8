"""Cells from any source, for comparing two data sets: expression, genes, labels, and the genes they share.

:func:`read_cells` opens a bundle, an ``.h5ad`` (any :func:`engine.data.read.read_source` input) or an
AnnData as :class:`CellData`; :func:`match_genes` pairs two gene tables by Ensembl ID (version ignored)
or symbol and refuses an overlap too small to trust, with advice. Label transfer uses both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from engine.build.prepare import prepare_matrices
from engine.bundle.atlas import Atlas
from engine.data.genes import gene_table, read_gene_map
from engine.data.hvg import GeneStats, select_hvg
from engine.data.normalise import normalise_log1p
from engine.data.read import read_source
from engine.data.schema import harmonise_obs
from engine.data.store import InMemoryStore
from engine.errors import InputError
from engine.models.serialize import align_genes

MIN_SHARED_GENES = 200
MIN_INFORMATIVE_FRACTION = 0.1
"""Smallest share of the reference's highly variable genes that the query must have (kang_ifnb_donors, a
filtered panel with 11% of kang_ifnb_1k's, still transfers well: benchmarks/RESULTS.md)."""
CHUNK = 20_000


# -- cells of one data set -----------------------------------------------------------------------------------
@dataclass
class CellData:
    """Expression, genes and (optionally) cell-type labels of a reference or a query.

    Attributes
    ----------
    store
        An :class:`~engine.data.store.ExpressionStore` (a bundle's) or
        :class:`~engine.data.store.InMemoryStore`: layers ``lognorm`` and, where known, ``counts``.
    genes
        Gene table (:func:`engine.data.genes.gene_table`; ``highly_variable`` where known).
    labels
        One cell type per cell (``str``), or ``None``.
    source
        Where the cells came from (for the manifest and messages).
    label_key
        The column the labels came from.
    """

    store: object
    genes: pd.DataFrame
    labels: np.ndarray | None = None
    source: str = ""
    label_key: str | None = None

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return int(self.store.n_cells)

    @property
    def has_counts(self) -> bool:
        """True when raw counts are available."""
        return "counts" in self.store.layers

    def subset(self, cells: np.ndarray) -> CellData:
        """The given cells (row positions) as a new, in-memory :class:`CellData`."""

        cells = np.asarray(cells, dtype=np.int64)
        counts = self.store.rows(cells, layer="counts") if self.has_counts else None
        return CellData(InMemoryStore(self.store.rows(cells), counts), self.genes,
                        None if self.labels is None else self.labels[cells], self.source, self.label_key)


def read_cells(source, *, cell_type_key: str | None = None, gene_map: str | os.PathLike | pd.DataFrame | None = None,
               labelled: bool = True) -> CellData:
    """Read a reference or query: a bundle, an ``.h5ad`` / SOMA / generated source, or an AnnData.

    Parameters
    ----------
    source
        Bundle directory or :class:`~engine.bundle.atlas.Atlas`, any input :func:`engine.data.read.read_source`
        reads, or an :class:`anndata.AnnData` (raw counts, or log-normalised values in ``X`` / ``.raw``).
    cell_type_key
        The obs column of cell types; guessed (``cell_type``, ``seurat_annotations``, ``cluster_id``,
        ``bulk_labels``, ...) when not given. For a bundle, its cell-type role.
    gene_map
        A table (or TSV/CSV path) of Ensembl ID and symbol that fills whichever side the genes lack.
    labelled
        Require cell-type labels (a reference); a query may come without.

    Raises
    ------
    InputError
        No cells; no cell-type column where ``labelled`` (the message lists the obs columns); a bundle
        whose cell types are clusters.
    """
    import anndata as ad


    if gene_map is not None and not isinstance(gene_map, pd.DataFrame):
        gene_map = read_gene_map(gene_map)
    if isinstance(source, Atlas) or (isinstance(source, (str, os.PathLike))
                                     and os.path.isfile(os.path.join(source, "manifest.json"))):
        return _read_bundle(source if isinstance(source, Atlas) else Atlas(source), cell_type_key, gene_map,
                            labelled)

    name = "the given AnnData" if isinstance(source, ad.AnnData) else str(source)
    adata = source if isinstance(source, ad.AnnData) else read_source(source, backed=False)
    if adata.n_obs == 0:
        raise InputError(f"{name} has no cells: give a data set with at least one cell.")
    labels, key = None, None
    if labelled or cell_type_key is not None:
        adata, mapping = harmonise_obs(adata, cell_type_key=cell_type_key)
        if mapping["cell_type"] is None:
            columns = ", ".join(map(str, adata.obs.columns)) or "(none)"
            raise InputError(f"{name} has no cell-type column (its obs columns are: {columns}): name the "
                             "column that holds cell types with --reference-cell-type-key.")
        labels, key = adata.obs["cell_type"].astype(str).to_numpy(), mapping["cell_type"]["source"]
    lognorm, counts, _ = prepare_matrices(adata)
    return CellData(InMemoryStore(lognorm, counts), gene_table(adata.var, gene_map), labels, name, key)


def _read_bundle(atlas, cell_type_key: str | None, gene_map: pd.DataFrame | None, labelled: bool) -> CellData:

    genes = gene_table(atlas.var, gene_map)
    genes["highly_variable"] = atlas.var["highly_variable"].to_numpy()
    key = cell_type_key or atlas.roles.get("cell_type")
    labels = None
    if labelled:
        if key is None or key not in atlas.obs:
            raise InputError(f"Bundle {atlas.path} has no cell-type column {key!r} (its columns are: "
                             f"{', '.join(atlas.obs.columns)}): name one with --reference-cell-type-key.")
        if atlas.manifest.harmonisation.cell_types_are_clusters and cell_type_key is None:
            raise InputError(f"The cell types of bundle {atlas.path} are Leiden clusters, not labels: give a "
                             "labelled reference (or annotate this bundle first).")
    if key is not None and key in atlas.obs:
        labels = atlas.obs[key].astype(str).to_numpy()
    return CellData(atlas.store, genes, labels, str(atlas.path), key)


def shared_expression(data: CellData, cells: np.ndarray, genes: np.ndarray, use_counts: bool) -> sp.csr_matrix:
    """Log-normalised ``cells`` x ``genes``: renormalised from counts over ``genes`` when ``use_counts``."""

    if use_counts:
        return normalise_log1p(data.store.rows(cells, genes, layer="counts"))
    return sp.csr_matrix(data.store.rows(cells, genes, layer="lognorm"), dtype=np.float32)


def shared_blocks(data: CellData, genes: np.ndarray, use_counts: bool,
                  chunk: int = CHUNK) -> Iterator[tuple[int, sp.csr_matrix]]:
    """:func:`shared_expression` of all cells, ``chunk`` cells at a time, with each block's first row."""
    for start in range(0, data.n_cells, chunk):
        yield start, shared_expression(data, np.arange(start, min(start + chunk, data.n_cells)), genes, use_counts)


def informative_genes(data: CellData, n_top: int = 2000) -> np.ndarray:
    """Boolean mask of the highly variable genes of ``data`` (stored in a bundle, else computed)."""

    if "highly_variable" in data.genes:
        return data.genes["highly_variable"].to_numpy(dtype=bool)
    stats = GeneStats(len(data.genes))
    for _, block in data.store.iter_rows("lognorm", CHUNK):
        stats.update(block)
    return select_hvg(stats, n_top=n_top)


# -- genes -------------------------------------------------------------------------------------------------
@dataclass
class GeneMatch:
    """Genes shared by a reference and a query.

    Attributes
    ----------
    reference, query
        Positions of the shared genes in the reference and in the query (same order).
    n_reference, n_query
        Number of genes on each side.
    n_informative, n_informative_shared
        The reference's highly variable genes, and how many of them the query has.
    """

    reference: np.ndarray
    query: np.ndarray
    n_reference: int
    n_query: int
    n_informative: int
    n_informative_shared: int

    @property
    def n_shared(self) -> int:
        """Number of shared genes."""
        return int(len(self.reference))

    @property
    def informative_fraction(self) -> float:
        """Share of the reference's highly variable genes found in the query."""
        return self.n_informative_shared / max(self.n_informative, 1)

    def to_dict(self) -> dict:
        """Plain-dict overlap report (for the manifest)."""
        return {"n_reference_genes": self.n_reference, "n_query_genes": self.n_query, "n_shared": self.n_shared,
                "n_reference_hvg": self.n_informative, "n_reference_hvg_shared": self.n_informative_shared,
                "reference_hvg_fraction": round(self.informative_fraction, 4)}


def match_genes(reference_genes: pd.DataFrame, query_genes: pd.DataFrame, informative: np.ndarray | None = None, *,
                min_shared: int = MIN_SHARED_GENES, min_fraction: float = MIN_INFORMATIVE_FRACTION) -> GeneMatch:
    """Match reference genes to query genes by Ensembl ID (version ignored), then symbol, then name.

    Parameters
    ----------
    reference_genes, query_genes
        Gene tables (:func:`engine.data.genes.gene_table`). Their own names are matched first, then the IDs
        and symbols the shipped GENCODE tables give them (:func:`engine.models.serialize.align_genes`), so a
        reference named by Ensembl IDs matches a query named by symbols; a ``--gene-map``'s names are their own.
    informative
        Boolean mask of the reference's highly variable genes (all genes when ``None``).
    min_shared, min_fraction
        Refuse fewer shared genes than ``min_shared``, or fewer than ``min_fraction`` of the informative genes.

    Raises
    ------
    InputError
        The overlap is too small; the message says how large it is and how to fix it.
    """

    positions = align_genes(reference_genes, query_genes, min_overlap=0.0)[0]
    found = np.flatnonzero(positions >= 0)
    _, first = np.unique(positions[found], return_index=True)  # one reference gene per query gene
    reference = np.sort(found[first])
    informative = np.ones(len(reference_genes), bool) if informative is None else np.asarray(informative, bool)
    match = GeneMatch(reference=reference, query=positions[reference], n_reference=len(reference_genes),
                      n_query=len(query_genes), n_informative=int(informative.sum()),
                      n_informative_shared=int(informative[reference].sum()))
    if match.n_shared < min_shared or match.informative_fraction < min_fraction:
        ref_kind, query_kind = _id_kind(reference_genes), _id_kind(query_genes)
        hint = (f"the reference names genes by {ref_kind} and the query by {query_kind}: give a TSV of Ensembl ID "
                "and symbol with --gene-map" if ref_kind != query_kind else
                "check that both are the same species, or give a TSV of Ensembl ID and symbol with --gene-map")
        raise InputError(f"The reference and query share only {match.n_shared:,} genes ({match.n_informative_shared:,}"
                         f" of the reference's {match.n_informative:,} highly variable genes, "
                         f"{100 * match.informative_fraction:.0f}%); label transfer needs at least {min_shared:,} "
                         f"genes and {100 * min_fraction:.0f}% of them: {hint}.")
    return match


def _id_kind(genes: pd.DataFrame) -> str:
    ids = genes["gene_id"].notna().mean() if "gene_id" in genes and len(genes) else 0.0
    symbols = genes["gene_symbol"].notna().mean() if "gene_symbol" in genes and len(genes) else 0.0
    return "Ensembl ID only" if ids > 0.5 and symbols < 0.5 else "symbol only" if symbols > 0.5 and ids < 0.5 \
        else "Ensembl ID and symbol"
