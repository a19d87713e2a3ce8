"""The manifest schema: today's bundles still open, round trips, one-sentence errors, edits, the atomic writer.

The fixtures in ``fixtures/`` are manifests of real bundles written by the engine before the
schema existed (commit d6be3d7; the commands are in their provenance):

- ``v1-pca-clusters``: ``vcell build`` of a log-normalised input without cell types (Leiden
  clusters, no raw counts, PCA only);
- ``v1-mae-annotated``: ``vcell build --model mae --model-seeds 2`` of a generated atlas, then
  ``vcell embed`` (a Barlow Twins model), ``vcell embed-shards`` + ``merge-shards --bundle`` (the
  bundle's own model: its default index replaced) and ``vcell annotate``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest

from engine.bundle.atlas import read_atlas, validate_atlas
from engine.bundle.manifest import (
    FORMAT,
    FORMAT_VERSION,
    ColumnSource,
    Embeddings,
    ExtraModel,
    IndexEntry,
    LayoutInfo,
    Manifest,
    ModelInfo,
    Provenance,
    Step,
    gene_hash,
    provenance,
    read_manifest,
    write_manifest,
)
from engine.bundle.record import Record
from engine.errors import BundleError
from engine.space.index import IndexInfo

FIXTURES = Path(__file__).parent / "fixtures"
NAMES = ("v1-pca-clusters", "v1-mae-annotated")


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.manifest.json").read_text())


def bundle_with(tmp_path: Path, data: dict | list | str) -> Path:
    """A directory holding only ``manifest.json`` (``data`` as JSON, or a string written as it is)."""
    bundle = tmp_path / "b.vcell"
    bundle.mkdir(exist_ok=True)
    (bundle / "manifest.json").write_text(data if isinstance(data, str) else json.dumps(data))
    return bundle


def unknown_keys(record: Record, path: str = "") -> list[str]:
    """Paths of every key kept in an ``extra`` (keys the schema does not declare)."""
    found = [f"{path}.{key}".lstrip(".") for key in record.extra]
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, tuple) else ()
        if isinstance(value, Record):
            found += unknown_keys(value, f"{path}.{f.name}")
        for key, child in children:
            if isinstance(child, Record):
                found += unknown_keys(child, f"{path}.{f.name}.{key}")
    return found


def one_sentence(message: str) -> bool:
    return message.endswith(".") and "\n" not in message and not re.search(r"[.!?]\s+[A-Z]", message)


@pytest.mark.parametrize("name", NAMES)
def test_todays_manifests_open_and_round_trip_unchanged(name, tmp_path):
    data = fixture(name)
    manifest = Manifest.from_dict(data)
    assert manifest.to_dict() == data
    # every key today's writers write is declared; only the label transfer's own record is kept as it is
    expected = {"harmonisation.cell_type." + key for key in data["harmonisation"]["cell_type"]
                if key not in ("source", "guessed", "method", "note")}
    assert set(unknown_keys(manifest)) == expected
    # written by the one writer, it reads back the same
    bundle = tmp_path / "b.vcell"
    bundle.mkdir()
    write_manifest(bundle, manifest)
    assert json.loads((bundle / "manifest.json").read_text()) == data
    assert read_manifest(bundle) == manifest


def test_pca_bundle_with_clusters_fields(tmp_path):
    m = Manifest.from_dict(fixture("v1-pca-clusters"))
    assert (m.format, m.format_version, m.n_cells, m.n_genes) == (FORMAT, FORMAT_VERSION, 300, 120)
    assert m.roles.to_dict() == {"cell_type": "cell_type", "condition": "disease", "donor": "donor_id", "batch": None}
    assert m.harmonisation.cell_types_are_clusters and m.harmonisation.cell_type.source is None
    assert m.harmonisation.column("donor_id") == ColumnSource(source="sample", guessed=True)
    assert m.harmonisation.batch is None and m.harmonisation.column("tissue") is None
    assert m.matrices.counts is None and "No raw counts" in m.matrices.warning
    assert m.embedding == Embeddings(default="X_pca", available=("X_pca",)) and m.extra_models == {}
    assert m.model == ModelInfo(name="pca", n_components=8, genes="highly_variable",
                                explained_variance=m.model.explained_variance, fit_cells=300, seed=0)
    assert m.index.path == "index/X_pca.faiss" and m.index.nprobe is None and m.index.factory == "Flat"
    assert m.layout == LayoutInfo(embedding="X_pca", method="umap", n_neighbors=15, min_dist=0.3, n_landmarks=300,
                                  k_place=10, seed=0)
    assert set(m.quality) == {"pca_explained_variance", "index_recall_at_10"}
    assert not m.provenance.generated and m.provenance.generator is None and m.provenance.steps == ()
    # an Atlas opens on it (its other parts load lazily), and validation names the parts that are not there
    bundle = bundle_with(tmp_path, fixture("v1-pca-clusters"))
    atlas = read_atlas(bundle)
    assert (atlas.n_cells, atlas.default_embedding, atlas.reference_condition) == (300, "X_pca", "normal")
    assert atlas.roles["donor"] == "donor_id" and atlas.title == "lognorm300"
    assert "cells.parquet is missing" in validate_atlas(bundle)


def test_learned_annotated_bundle_fields(tmp_path):
    m = Manifest.from_dict(fixture("v1-mae-annotated"))
    assert m.embedding == Embeddings(default="X_mae", available=("X_pca", "X_barlow", "X_mae"))
    assert m.model.name == "mae" and m.model.seeds == (0, 1) and m.model.training["epochs"] == 1
    assert m.model.baseline.path == "baselines/pca" and m.model.baseline.n_components == 10
    assert m.model.explained_variance is None and m.model.config["latent"] == 64
    assert set(m.extra_models) == {"X_barlow", "X_mae"}
    assert m.extra_models["X_barlow"].index is None and m.extra_models["X_barlow"].n_genes == 200
    sharded = m.extra_models["X_mae"]
    assert sharded.sharded == {"world_size": 1} and sharded.index == m.index
    record = m.harmonisation.cell_type
    assert record.method.startswith("label transfer") and not m.harmonisation.cell_types_are_clusters
    assert record.extra["previous"] == {"source": "cell_type", "guessed": True} and record.extra["k"] == 15
    assert m.provenance.generated and m.provenance.generator["generator"] == "vcell generate"
    assert [s.step for s in m.provenance.steps] == ["annotate"] and m.provenance.steps[0].reference.endswith(".h5ad")
    atlas = read_atlas(bundle_with(tmp_path, fixture("v1-mae-annotated")))
    assert atlas.generated and atlas.title == "gen400 (generated)"


def _drop(data: dict, path: str) -> dict:
    *parents, key = path.split(".")
    node = data
    for part in parents:
        node = node[part]
    del node[key]
    return data


def _set(data: dict, path: str, value) -> dict:
    *parents, key = path.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[key] = value
    return data


@pytest.mark.parametrize("change, says", [
    (lambda d: _drop(d, "index"), "has no key 'index'"),
    (lambda d: _drop(d, "index.path"), "has no key 'index.path'"),
    (lambda d: _drop(d, "provenance.generated"), "has no key 'provenance.generated'"),
    (lambda d: _drop(d, "harmonisation.cell_type.source"), "has no key 'harmonisation.cell_type.source'"),
    (lambda d: _drop(d, "extra_models.X_mae.index.factory"), "has no key 'extra_models.X_mae.index.factory'"),
    (lambda d: _set(d, "n_cells", "400"), "has 'n_cells' = \"400\", not an integer"),
    (lambda d: _set(d, "n_cells", True), "has 'n_cells' = true, not an integer"),
    (lambda d: _set(d, "index.nprobe", "8"), "has 'index.nprobe' = \"8\", not an integer or null"),
    (lambda d: _set(d, "embedding.default", None), "has 'embedding.default' = null, not a string"),
    (lambda d: _set(d, "embedding.available", "X_mae"), "has 'embedding.available' = \"X_mae\", not a list"),
    (lambda d: _set(d, "model.seeds", [0, "one"]), "has 'model.seeds[1]' = \"one\", not an integer"),
    (lambda d: _set(d, "roles", ["cell_type"]), "has 'roles' = [\"cell_type\"], not an object"),
    (lambda d: _set(d, "quality.k", "fifteen"), "has 'quality.k' = \"fifteen\", not a number"),
    (lambda d: _set(d, "provenance.steps", [{"step": "annotate"}]), "has no key 'provenance.steps[0].command'"),
    (lambda d: _set(d, "format_version", 99), "format version 99, but this engine reads version 1"),
    (lambda d: _set(d, "format", "anndata"), "not that of a vcell atlas bundle (format 'anndata')"),
    (lambda d: [d], "is not a JSON object"),
])
def test_a_bad_manifest_is_refused_in_one_sentence_naming_the_key(tmp_path, change, says):
    bundle = bundle_with(tmp_path, change(fixture("v1-mae-annotated")))
    with pytest.raises(BundleError) as error:
        read_atlas(bundle)
    message = str(error.value)
    assert says in message and str(bundle) in message and one_sentence(message), message
    assert "vcell build" in message or "format 'anndata'" in message


@pytest.mark.parametrize("problem, says", [("missing", "does not exist"), ("empty", "no manifest.json"),
                                           ("not_json", "is not valid JSON")])
def test_a_missing_or_unreadable_manifest_is_refused_in_one_sentence(tmp_path, problem, says):
    bundle = tmp_path / "b.vcell"
    if problem == "empty":
        bundle.mkdir()
    elif problem == "not_json":
        bundle_with(tmp_path, '{"format": "vcell-atlas",')
    with pytest.raises(BundleError, match=says) as error:
        read_manifest(bundle)
    assert one_sentence(str(error.value)) and "vcell build" in str(error.value)


def test_unknown_keys_are_kept_through_reads_edits_and_writes(tmp_path):
    data = fixture("v1-pca-clusters")
    data["future_section"] = {"answer": 42}
    data["index"]["future_setting"] = [1, 2]
    data["harmonisation"]["tissue"] = {"source": "organ", "guessed": False}
    manifest = Manifest.from_dict(data)
    assert manifest.extra == {"future_section": {"answer": 42}} and manifest.index.extra == {"future_setting": [1, 2]}
    assert manifest.to_dict() == data
    edited = manifest.with_embedding("X_barlow", ExtraModel(source="run/model"))
    bundle = tmp_path / "b.vcell"
    bundle.mkdir()
    write_manifest(bundle, edited)
    written = json.loads((bundle / "manifest.json").read_text())
    assert written["future_section"] == {"answer": 42} and written["index"]["future_setting"] == [1, 2]
    assert written["harmonisation"]["tissue"] == {"source": "organ", "guessed": False}


def test_edits_return_new_manifests_and_leave_the_old_one_as_it_was():
    manifest = Manifest.from_dict(fixture("v1-pca-clusters"))
    before = manifest.to_dict()
    with pytest.raises(dataclasses.FrozenInstanceError):
        manifest.n_cells = 1

    info = IndexInfo(factory="IVF16,Flat", metric="l2", n=300, dim=64, nprobe=4, recall_at_10=0.97)
    index = IndexEntry.of("X_mae", info)
    assert index.path == "index/X_mae.faiss" and index.nprobe == 4 and index.device == "cpu"

    added = manifest.with_embedding("X_barlow", ExtraModel(source="run/model", n_genes=120))
    assert added.embedding == Embeddings(default="X_pca", available=("X_pca", "X_barlow"))
    assert added.extra_models["X_barlow"].n_genes == 120 and added.index == manifest.index
    again = added.with_embedding("X_pca", ExtraModel(source="merged", index=index))
    assert again.embedding.available == ("X_barlow", "X_pca") and set(again.extra_models) == {"X_barlow", "X_pca"}

    model = ModelInfo(name="mae", n_components=64, genes="highly_variable", seeds=(0, 1))
    layout = dataclasses.replace(manifest.layout, embedding="X_mae")
    learned = added.with_default_embedding("X_mae", model=model, index=index, layout=layout,
                                           quality={"knn_label_agreement": 0.8})
    assert learned.embedding == Embeddings(default="X_mae", available=("X_mae", "X_pca", "X_barlow"))
    assert (learned.model, learned.index, learned.layout) == (model, index, layout)
    assert learned.quality == {"knn_label_agreement": 0.8}

    assert manifest.with_default_index(index).index == index

    labels = ColumnSource(source=None, method="label transfer", extra={"k": 15})
    annotated = dataclasses.replace(manifest, roles=dataclasses.replace(manifest.roles, cell_type=None)).with_cell_types(
        labels, {"knn_label_agreement": 0.9})
    assert annotated.roles.cell_type == "cell_type" and annotated.harmonisation.cell_type == labels
    assert annotated.harmonisation.disease == manifest.harmonisation.disease
    assert annotated.quality == {**manifest.quality, "knn_label_agreement": 0.9}
    assert not annotated.harmonisation.cell_types_are_clusters

    step = Step.now("annotate", "vcell annotate b.vcell", reference="ref.h5ad")
    stepped = annotated.with_step(step).with_step(step)
    assert stepped.provenance.steps == (step, step) and stepped.to_dict()["provenance"]["steps"][0]["reference"] == "ref.h5ad"
    assert manifest.to_dict() == before


def test_provenance_and_gene_hash():
    made = provenance("/data/atlas.h5ad/", "vcell build /data/atlas.h5ad", {"statement": "GENERATED"})
    assert isinstance(made, Provenance) and made.name == "atlas" and made.generated
    assert made.command == "vcell build /data/atlas.h5ad" and made.generator == {"statement": "GENERATED"}
    assert Provenance.from_dict(made.to_dict()) == made and "steps" not in made.to_dict()
    assert provenance("x.h5ad", "c", None).generator is None
    assert gene_hash(["A", "B"]) == gene_hash(["A", "B"]) != gene_hash(["B", "A"])


def test_the_writer_is_atomic_and_writes_only_what_reads_back(tmp_path):
    source = FIXTURES / "v1-pca-clusters.manifest.json"
    bundle = tmp_path / "b.vcell"
    bundle.mkdir()
    shutil.copy(source, bundle / "manifest.json")
    before = (bundle / "manifest.json").read_text()
    manifest = read_manifest(bundle)

    wrong = dataclasses.replace(manifest, n_cells="many")
    with pytest.raises(ValueError, match="would not read back: it has 'n_cells' = \"many\", not an integer"):
        write_manifest(bundle, wrong)
    with pytest.raises(ValueError, match="version 2: this engine writes"):
        write_manifest(bundle, dataclasses.replace(manifest, format_version=2))
    unwritable = dataclasses.replace(manifest, extra={"note": object()})  # fails half-way through the JSON
    with pytest.raises(TypeError):
        write_manifest(bundle, unwritable)
    assert (bundle / "manifest.json").read_text() == before
    assert sorted(p.name for p in bundle.iterdir()) == ["manifest.json"]  # no temporary file left behind

    edited = manifest.with_embedding("X_mae", ExtraModel(source="run/model"))
    assert write_manifest(bundle, edited) == bundle / "manifest.json"
    assert read_manifest(bundle) == edited
