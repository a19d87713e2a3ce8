"""The atlas bundle: build, read and validate (the contract between engine and app).

A bundle is a versioned, self-describing directory, written atomically::

    manifest.json         format, versions, counts, gene hash, obs roles, embedding, index, layout, model, provenance
    cells.parquet         per-cell metadata (harmonised to CELLxGENE names; categoricals)
    genes.parquet         gene table: gene_id, gene_symbol, highly_variable, mean, frac_expressing
    obsm/X_<model>.npy    embeddings (float32, memory-mapped on read); obsm/X_umap.npy the layout
    store/                expression store (TileDB-SOMA + gene-major copy), see engine.data.store
    index/X_<model>.faiss FAISS index of the default embedding, row i = cell i
    model/                checkpoint of the embedding model (config.json, weights.safetensors, genes.txt)
    summaries/            per (cell type x condition x donor) aggregates, see engine.bundle.summaries
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from engine.bundle.manifest import Manifest, gene_hash, read_manifest
from engine.bundle.summaries import Summaries
from engine.data.gene_index import GeneIndex
from engine.data.store import ExpressionStore
from engine.errors import BundleError
from engine.models.checkpoint import load_checkpoint
from engine.space.index import load_index


class Atlas:
    """A read-only view of an atlas bundle.

    Everything is loaded lazily: per-cell metadata and the layout on first use, embeddings
    memory-mapped, expression read from the store on demand.

    Parameters
    ----------
    path
        The bundle directory.

    Attributes
    ----------
    manifest
        The bundle's :class:`~engine.bundle.manifest.Manifest`, read and checked on opening.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.manifest: Manifest = read_manifest(self.path)

    # -- metadata ---------------------------------------------------------------------
    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return self.manifest.n_cells

    @property
    def n_genes(self) -> int:
        """Number of genes."""
        return self.manifest.n_genes

    @property
    def roles(self) -> dict[str, str | None]:
        """Which obs column plays which role: ``cell_type``, ``condition``, ``donor``, ``batch``."""
        return self.manifest.roles.to_dict()

    @property
    def reference_condition(self) -> str | None:
        """The healthy / control condition, if known."""
        return self.manifest.reference_condition

    @property
    def generated(self) -> bool:
        """True when the atlas holds generated (synthetic) cells."""
        return self.manifest.provenance.generated

    @property
    def title(self) -> str:
        """A short name for display, marked when generated."""
        name = self.manifest.provenance.name or self.path.stem
        return f"{name} (generated)" if self.generated else name

    @cached_property
    def obs(self) -> pd.DataFrame:
        """Per-cell metadata (categoricals), row order = cell order."""
        return pd.read_parquet(self.path / "cells.parquet")

    @cached_property
    def var(self) -> pd.DataFrame:
        """Gene table: ``gene_id``, ``gene_symbol``, ``highly_variable``, ``mean``, ``frac_expressing``.

        Checked against the manifest's gene hash, so every part indexes the same genes.
        """
        var = pd.read_parquet(self.path / "genes.parquet")
        if gene_hash(list(var.index)) != self.manifest.gene_hash:
            raise BundleError(f"The gene list of {self.path} does not match its manifest: the bundle was "
                              "modified or mixed with another; rebuild it with `vcell build`.")
        return var

    @cached_property
    def genes(self):
        """A :class:`~engine.data.gene_index.GeneIndex` resolving symbols and Ensembl IDs."""

        return GeneIndex(self.var)

    def categories(self, role: str) -> list[str]:
        """The values of a role's column (e.g. ``categories("condition")``), or ``[]``."""
        column = self.roles.get(role)
        if column is None:
            return []
        return [str(c) for c in self.obs[column].cat.categories]

    # -- embeddings, layout, index ------------------------------------------------------
    @property
    def default_embedding(self) -> str:
        """Name of the default embedding, e.g. ``X_pca``."""
        return self.manifest.embedding.default

    def embedding(self, name: str | None = None) -> np.ndarray:
        """An embedding, memory-mapped, ``(n_cells, dim)`` float32."""
        name = name or self.default_embedding
        path = self.path / "obsm" / f"{name}.npy"
        if not path.exists():
            available = ", ".join(p.stem for p in sorted((self.path / "obsm").glob("X_*.npy")))
            raise BundleError(f"No embedding {name} in this bundle (it has {available}): "
                              "run `vcell build --model ...` to add one.")
        return np.load(path, mmap_mode="r")

    @cached_property
    def layout(self) -> np.ndarray:
        """The 2-D map coordinates, ``(n_cells, 2)``."""
        return np.asarray(np.load(self.path / "obsm" / "X_umap.npy"))

    @cached_property
    def index(self):
        """The FAISS index of the default embedding."""

        info = self.manifest.index
        index = load_index(self.path / info.path, nprobe=info.nprobe)
        if index.ntotal != self.n_cells:
            raise BundleError(f"The FAISS index of {self.path} has {index.ntotal:,} rows for {self.n_cells:,} cells: "
                              "rebuild the bundle with `vcell build`.")
        return index

    # -- expression -------------------------------------------------------------------------
    @cached_property
    def store(self):
        """The :class:`~engine.data.store.ExpressionStore`."""

        return ExpressionStore(self.path / "store")

    def expression(self, cells: np.ndarray, genes: np.ndarray | None = None, layer: str = "lognorm"):
        """Expression of ``cells`` x ``genes`` (positions) as float32 CSR.

        ``layer`` is ``"lognorm"`` (log1p of counts per 10,000) or ``"counts"``.
        """
        return self.store.rows(cells, genes, layer=layer)

    def gene_values(self, gene: str | int) -> np.ndarray:
        """Log-normalised values of one gene (symbol, Ensembl ID or position) for all cells."""
        position = gene if isinstance(gene, (int, np.integer)) else self.genes.resolve(gene)
        return self.store.gene(int(position))

    @cached_property
    def summaries(self) -> Summaries:
        """Per (cell type x condition x donor) aggregates."""
        return Summaries.load(self.path / "summaries")

    @cached_property
    def model(self):
        """The embedding model's checkpoint."""

        return load_checkpoint(self.path / "model")


def read_atlas(path: str | os.PathLike) -> Atlas:
    """Open an atlas bundle for reading (checks format and version).

    Parameters
    ----------
    path
        The bundle directory.

    Returns
    -------
    Atlas
        The bundle, read-only; parts are loaded on first use.
    """
    return Atlas(path)


def validate_atlas(path: str | os.PathLike) -> list[str]:
    """Check a bundle's parts against its manifest.

    Parameters
    ----------
    path
        The bundle directory.

    Returns
    -------
    list of str
        The problems found, one sentence each; empty when the bundle is sound.

    Raises
    ------
    BundleError
        The bundle cannot be opened at all.
    """
    atlas = Atlas(path)
    n = atlas.n_cells
    missing = [part for part in ("cells.parquet", "genes.parquet", "obsm/X_umap.npy", "store", "summaries", "model",
                                 atlas.manifest.index.path) if not (atlas.path / part).exists()]
    if missing:
        return [f"{part} is missing" for part in missing]
    problems: list[str] = []
    checks = [
        lambda: (len(atlas.obs) == n, f"cells.parquet has {len(atlas.obs)} rows, manifest says {n} cells"),
        lambda: (gene_hash(list(pd.read_parquet(atlas.path / "genes.parquet").index)) == atlas.manifest.gene_hash,
                 "gene list does not match the manifest's hash"),
        lambda: (len(atlas.var) == atlas.n_genes, f"genes.parquet has {len(atlas.var)} rows, manifest says {atlas.n_genes}"),
        lambda: (atlas.layout.shape == (n, 2), f"layout has shape {atlas.layout.shape}, expected ({n}, 2)"),
        lambda: (atlas.index.ntotal == n, "index rows differ from cells"),
        lambda: (atlas.store.n_cells == n and atlas.store.n_genes == atlas.n_genes,
                 f"expression store is {atlas.store.n_cells} x {atlas.store.n_genes}, expected {n} x {atlas.n_genes}"),
        lambda: (int(atlas.summaries.groups["n_cells"].sum()) == n, "summaries do not add up to the number of cells"),
        lambda: (atlas.manifest.model.genes == "custom"
                 or atlas.model.genes == [atlas.var.index[i] for i in np.flatnonzero(atlas.var["highly_variable"])],
                 "model gene list does not match the atlas's highly variable genes"),
    ]
    for name in atlas.manifest.embedding.available:
        checks.append(lambda name=name: (atlas.embedding(name).shape[0] == n, f"{name} does not have {n} rows"))
        checks.append(lambda name=name: (bool(np.isfinite(atlas.embedding(name)[: min(n, 10_000)]).all()),
                                         f"{name} contains NaN or infinite values"))
    for role, column in atlas.roles.items():
        checks.append(lambda role=role, column=column: (column is None or column in atlas.obs,
                                                        f"role {role} names column {column!r}, not in cells.parquet"))
    for check in checks:
        try:
            ok, message = check()
        except BundleError as exc:  # a part that refuses to open is a problem of its own
            ok, message = False, str(exc)
        if not ok:
            problems.append(message)
    return problems

