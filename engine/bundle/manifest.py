"""The bundle's ``manifest.json`` as a typed, versioned schema with one reader and one writer.

:class:`Manifest` and its sections are frozen :class:`~engine.bundle.record.Record` dataclasses
whose fields are the JSON keys of format version :data:`FORMAT_VERSION` (so every bundle of
this version opens). :func:`read_manifest` checks the format, the version and every key's
presence and type, and says in one sentence what is wrong; :func:`write_manifest` is the only
place a manifest is written (atomically, and only one that reads back). Changes are made with
the ``with_*`` methods, which return a new manifest.

Keys the schema does not know are kept (in each section's ``extra``) and written back: within
a format version keys are only ever added, so an engine that edits a bundle written by a newer
one (an annotation, an added embedding) must not drop what it cannot read; a change that old
readers would misread takes a new format version, which they refuse.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Self

from engine import __version__
from engine.bundle.record import Record, RecordError
from engine.errors import BundleError
from engine.fileio import write_json
from engine.space.index import IndexInfo

FORMAT = "vcell-atlas"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REBUILD = "rebuild the bundle with `vcell build`"


def gene_hash(gene_ids: list[str]) -> str:
    """SHA-256 of the ordered gene list (ties a bundle's parts to one gene order)."""
    return hashlib.sha256("\n".join(gene_ids).encode()).hexdigest()


@dataclass(frozen=True)
class GeneIds(Record):
    """How genes are named: the index (``"ensembl"`` or ``"symbol"``) and how many have each name."""

    index: str
    with_ensembl_id: int
    with_symbol: int


@dataclass(frozen=True)
class Roles(Record):
    """Which obs column plays which role (``None``: the atlas has no such column)."""

    cell_type: str | None
    condition: str | None
    donor: str | None
    batch: str | None


@dataclass(frozen=True)
class ColumnSource(Record):
    """Where a bundle column came from: an input ``source`` column (``guessed`` or given), or a
    ``method`` (Leiden clusters, label transfer) whose details are kept in ``extra``."""

    source: str | None
    guessed: bool | None = None
    method: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Harmonisation(Record):
    """How the input's obs columns became the CELLxGENE-named role columns (keyed by bundle column)."""

    cell_type: ColumnSource | None
    disease: ColumnSource | None
    donor_id: ColumnSource | None
    batch: ColumnSource | None
    reference_condition: str | None
    reference_guessed: bool

    COLUMNS: ClassVar[tuple[str, ...]] = ("cell_type", "disease", "donor_id", "batch")

    def column(self, name: str) -> ColumnSource | None:
        """The record of bundle column ``name`` (``None`` when it is no role column or came from no input column)."""
        return getattr(self, name) if name in self.COLUMNS else None

    @property
    def cell_types_are_clusters(self) -> bool:
        """True when the cell types are clusters (Leiden), not labels."""
        return "leiden" in ((self.cell_type.method if self.cell_type else None) or "").lower()


@dataclass(frozen=True)
class Matrices(Record):
    """Which input matrix gave the counts (``None``: none) and the log-normalised values."""

    counts: str | None
    lognorm: str
    warning: str | None = None


@dataclass(frozen=True)
class Normalisation(Record):
    """Counts scaled to ``target_sum`` per cell, then ``log1p``."""

    target_sum: float
    log1p: bool


@dataclass(frozen=True)
class Hvg(Record):
    """The highly variable genes: how many, chosen how."""

    n_top: int
    flavor: str


@dataclass(frozen=True)
class Embeddings(Record):
    """The embeddings in ``obsm/``: the ``default`` one (map, index, neighbours) and all ``available``."""

    default: str
    available: tuple[str, ...]


@dataclass(frozen=True)
class BaselineModel(Record):
    """The PCA baseline kept beside a learned model (``path`` in the bundle)."""

    name: str
    path: str
    n_components: int | None = None
    explained_variance: float | None = None


@dataclass(frozen=True)
class ModelInfo(Record):
    """The model of the default embedding; ``genes`` is ``"highly_variable"`` or ``"custom"``.

    PCA records ``explained_variance``, ``fit_cells`` and ``seed``; a learned model its
    ``source``, ``config``, ``training`` record, ``n_genes``, the training ``seeds`` (with
    ``--model-seeds``) and the PCA ``baseline``.
    """

    name: str
    n_components: int
    genes: str
    explained_variance: float | None = None
    fit_cells: int | None = None
    seed: int | None = None
    n_genes: int | None = None
    source: str | None = None
    config: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    seeds: tuple[int, ...] | None = None
    baseline: BaselineModel | None = None


@dataclass(frozen=True)
class IndexEntry(Record):
    """A FAISS index in the bundle: its file, the embedding it indexes, and how it was made."""

    path: str
    embedding: str
    factory: str
    metric: str
    n: int
    dim: int
    nprobe: int | None
    recall_at_10: float | None
    device: str

    @classmethod
    def of(cls, embedding: str, info: IndexInfo) -> Self:
        """The entry of ``index/<embedding>.faiss``, made as ``info`` says."""
        return cls(path=f"index/{embedding}.faiss", embedding=embedding, **info.to_dict())


@dataclass(frozen=True)
class LayoutInfo(Record):
    """The 2-D map (``obsm/X_umap.npy``): the embedding it was computed on and its parameters."""

    embedding: str
    method: str
    n_neighbors: int
    min_dist: float
    n_landmarks: int
    k_place: int
    seed: int


@dataclass(frozen=True)
class ExtraModel(Record):
    """The model of an embedding added beside the default one (``vcell embed``, ``merge-shards``)."""

    source: str
    n_genes: int | None = None
    config: dict[str, Any] | None = None
    model_hash: str | None = None
    sharded: dict[str, Any] | None = None
    index: IndexEntry | None = None


@dataclass(frozen=True)
class Step(Record):
    """A later step that changed the bundle (e.g. ``annotate``): command, date, engine, machine."""

    step: str
    command: str
    date: str
    engine_version: str
    machine: str
    reference: str | None = None

    @classmethod
    def now(cls, step: str, command: str | None, reference: str | None = None) -> Self:
        """The record of ``step`` run now by ``command`` (default: this process's command line)."""
        return cls(step=step, reference=reference, **_run_now(command))


@dataclass(frozen=True)
class Provenance(Record):
    """How the bundle was made: source, command, date, machine, the generator's statement, later steps."""

    source: str
    name: str
    command: str
    date: str
    engine_version: str
    python: str
    machine: str
    generated: bool
    generator: dict[str, Any] | None
    steps: tuple[Step, ...] = ()


@dataclass(frozen=True)
class Manifest(Record):
    """A bundle's manifest (format version :data:`FORMAT_VERSION`); JSON keys = field names."""

    format: str
    format_version: int
    n_cells: int
    n_genes: int
    gene_hash: str
    genes: GeneIds
    roles: Roles
    harmonisation: Harmonisation
    reference_condition: str | None
    matrices: Matrices
    normalisation: Normalisation
    hvg: Hvg
    embedding: Embeddings
    model: ModelInfo
    index: IndexEntry
    layout: LayoutInfo
    quality: dict[str, float]
    provenance: Provenance
    extra_models: dict[str, ExtraModel] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, source: str = "The manifest") -> Self:
        """Read and check a manifest's JSON object.

        Parameters
        ----------
        data
            The parsed ``manifest.json``.
        source
            How messages name it (e.g. ``"The manifest of atlas.vcell"``).

        Raises
        ------
        BundleError
            Another format or format version, a missing key or a value of the wrong type.
        """
        if not isinstance(data, dict):
            raise BundleError(f"{source} is not a JSON object: {REBUILD}.")
        if data.get("format") != FORMAT:
            raise BundleError(f"{source} is not that of a vcell atlas bundle (format {data.get('format')!r}).")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(f"{source} is of format version {version}, but this engine reads version "
                              f"{FORMAT_VERSION}: rebuild the bundle with this version's `vcell build`.")
        try:
            return super().from_dict(data)
        except RecordError as exc:
            raise BundleError(f"{source} {exc.problem}: {REBUILD}.") from None

    def with_embedding(self, name: str, model: ExtraModel) -> Manifest:
        """``name`` listed (last) among the available embeddings, made by ``model``; the default stays."""
        available = (*(e for e in self.embedding.available if e != name), name)
        return replace(self, embedding=replace(self.embedding, available=available),
                       extra_models={**self.extra_models, name: model})

    def with_default_embedding(self, name: str, *, model: ModelInfo, index: IndexEntry, layout: LayoutInfo,
                               quality: Mapping[str, float]) -> Manifest:
        """``name`` as the default embedding (listed first; the others stay available), with the model
        that made it, its index, the layout computed on it and the quality scores measured on it."""
        available = (name, *(e for e in self.embedding.available if e != name))
        return replace(self, embedding=replace(self.embedding, default=name, available=available), model=model,
                       index=index, layout=layout, quality=dict(quality))

    def with_default_index(self, index: IndexEntry) -> Manifest:
        """``index`` as the bundle's FAISS index (of the default embedding)."""
        return replace(self, index=index)

    def with_cell_types(self, record: ColumnSource, quality: Mapping[str, float]) -> Manifest:
        """Cell types (column ``cell_type``) made as ``record`` says, e.g. by label transfer; ``quality``
        adds or replaces scores measured on them."""
        return replace(self, roles=replace(self.roles, cell_type="cell_type"),
                       harmonisation=replace(self.harmonisation, cell_type=record),
                       quality={**self.quality, **quality})

    def with_step(self, step: Step) -> Manifest:
        """``step`` appended to the provenance's later steps."""
        return replace(self, provenance=replace(self.provenance, steps=(*self.provenance.steps, step)))


def read_manifest(bundle: str | os.PathLike) -> Manifest:
    """Read and check a bundle's manifest: it exists, is JSON, has a format version we read and fits its schema.

    Raises
    ------
    BundleError
        One sentence saying what is wrong and what to do.
    """
    bundle = Path(bundle)
    if not bundle.exists():
        raise BundleError(f"{bundle} does not exist: build a bundle with `vcell build INPUT --out {bundle}`.")
    path = bundle / MANIFEST
    if not path.exists():
        raise BundleError(f"{bundle} is not an atlas bundle (no {MANIFEST}): build one with `vcell build`.")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON ({exc.msg}): {REBUILD}.") from exc
    return Manifest.from_dict(data, source=f"The manifest of {bundle}")


def write_manifest(bundle: str | os.PathLike, manifest: Manifest) -> Path:
    """Write ``manifest`` as ``bundle/manifest.json``, atomically: the one writer of manifests.

    Raises
    ------
    ValueError
        The manifest would not read back (a value of the wrong type); nothing is written.
    """
    if (manifest.format, manifest.format_version) != (FORMAT, FORMAT_VERSION):
        raise ValueError(f"Refusing to write a manifest of format {manifest.format!r} version "
                         f"{manifest.format_version}: this engine writes {FORMAT!r} version {FORMAT_VERSION}.")
    try:
        data = manifest.to_checked_dict()
    except RecordError as exc:
        raise ValueError(f"Refusing to write a manifest that would not read back: it {exc.problem}.") from None
    path = Path(bundle) / MANIFEST
    write_json(path, data)
    return path


def provenance(source: str, command: str | None, generated: dict | None) -> Provenance:
    """How a bundle is being made now: source, command, date, machine, and the generator's statement."""
    return Provenance(source=str(source), name=Path(str(source).rstrip("/")).stem, python=platform.python_version(),
                      generated=bool(generated), generator=generated or None, **_run_now(command))


def _run_now(command: str | None) -> dict[str, str]:
    """Command (default: this process's), date, engine version and machine of a step run now."""
    return {"command": command or " ".join(sys.argv), "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "engine_version": __version__, "machine": f"{platform.machine()} {os.cpu_count()} cores"}
