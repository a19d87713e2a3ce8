"""Reading and validating a bundle (engine.bundle.atlas): refusals, lazy parts, genes by name, tampering found."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from vcell_testing import tiny_ensembl_id

from engine.bundle.atlas import read_atlas, validate_atlas
from engine.data.normalise import normalise_log1p
from engine.errors import BundleError, GeneNotFoundError
from engine.space.index import build_index, save_index


def _copy(bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy.vcell"
    shutil.copytree(bundle, copy)
    return copy


def _edit_manifest(bundle: Path, edit) -> None:
    """Change the manifest file on disk as a JSON object (``edit`` changes the dict in place)."""
    data = json.loads((bundle / "manifest.json").read_text())
    edit(data)
    (bundle / "manifest.json").write_text(json.dumps(data))


# ----------------------------------------------------------------------------- opening
@pytest.mark.parametrize("problem, says", [
    ("missing", "does not exist: build a bundle with `vcell build INPUT --out"),
    ("no_manifest", "is not an atlas bundle (no manifest.json): build one with `vcell build`."),
    ("format", "is not that of a vcell atlas bundle (format 'anndata')."),
    ("version", "is of format version 2, but this engine reads version 1: rebuild the bundle"),
])
def test_read_atlas_refuses_what_it_cannot_read_in_one_sentence(tiny_bundle, tmp_path, problem, says):
    path = tmp_path / "absent.vcell"
    if problem == "no_manifest":
        path.mkdir()
        (path / "cells.parquet").write_bytes(b"")
    elif problem in ("format", "version"):
        path = _copy(tiny_bundle, tmp_path)
        change = {"format": "anndata"} if problem == "format" else {"format_version": 2}
        _edit_manifest(path, lambda d: d.update(change))
    with pytest.raises(BundleError) as error:
        read_atlas(path)
    message = str(error.value)
    assert says in message and str(path) in message
    assert "\n" not in message and message.endswith(".")
    with pytest.raises(BundleError):  # validation cannot open it either
        validate_atlas(path)


# ----------------------------------------------------------------------------- parts
def test_parts_load_lazily_and_agree_with_the_manifest(tiny_bundle):
    atlas = read_atlas(tiny_bundle)
    assert not {"obs", "var", "layout", "index", "store", "summaries", "model"} & set(vars(atlas))  # nothing read yet
    assert (atlas.n_cells, atlas.n_genes) == (600, 200)
    assert atlas.roles == {"cell_type": "cell_type", "condition": "disease", "donor": "donor_id", "batch": None}
    assert atlas.reference_condition == "normal" and not atlas.generated and atlas.title == "tiny"
    assert atlas.categories("condition") == ["disease", "normal"] and atlas.categories("batch") == []
    assert atlas.categories("cell_type") == ["B cell", "T cell", "monocyte"]

    assert len(atlas.obs) == atlas.n_cells and "obs" in vars(atlas)  # loaded on first use, then kept
    assert atlas.obs is atlas.obs and isinstance(atlas.obs["disease"].dtype, pd.CategoricalDtype)
    assert list(atlas.var.index) == [f"G{i}" for i in range(200)]
    assert atlas.var["gene_id"].tolist() == [tiny_ensembl_id(i) for i in range(200)]
    assert {"highly_variable", "mean", "frac_expressing"} <= set(atlas.var.columns)

    embedding = atlas.embedding()
    assert atlas.default_embedding == "X_pca" and isinstance(embedding, np.memmap)
    assert embedding.dtype == np.float32 and embedding.shape == (600, atlas.manifest.model.n_components)
    assert atlas.layout.shape == (600, 2) and np.isfinite(atlas.layout).all()
    assert atlas.index.ntotal == atlas.n_cells and atlas.index.d == embedding.shape[1]
    assert atlas.store.n_cells == 600 and set(atlas.store.layers) == {"lognorm", "counts"}
    assert int(atlas.summaries.groups["n_cells"].sum()) == 600
    with pytest.raises(BundleError, match=r"^No embedding X_scvi in this bundle \(it has X_pca, X_umap\): run "):
        atlas.embedding("X_scvi")


def test_gene_values_by_symbol_ensembl_id_and_position(tiny_bundle):
    atlas = read_atlas(tiny_bundle)
    source = ad.read_h5ad(tiny_bundle.parent / "tiny.h5ad")
    expected = normalise_log1p(source.X).toarray()[:, 7]
    values = atlas.gene_values("G7")
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    for name in ("g7", tiny_ensembl_id(7), tiny_ensembl_id(7) + ".3", 7, np.int64(7)):
        np.testing.assert_array_equal(atlas.gene_values(name), values)
    cells = np.array([599, 0, 42])
    np.testing.assert_allclose(atlas.expression(cells, np.array([7])).toarray().ravel(), expected[cells], rtol=1e-6)
    counts = atlas.expression(cells, np.array([7]), layer="counts").toarray().ravel()
    np.testing.assert_array_equal(counts, source.X[cells][:, 7].toarray().ravel())
    with pytest.raises(GeneNotFoundError, match="Gene 'G7x' is not in this atlas's 200 genes.*Did you mean"):
        atlas.gene_values("G7x")


def test_reading_a_mixed_up_part_is_refused(tiny_bundle, tmp_path):
    copy = _copy(tiny_bundle, tmp_path)
    genes = pd.read_parquet(copy / "genes.parquet")
    genes.iloc[::-1].to_parquet(copy / "genes.parquet")  # another gene order: every gene column would be wrong
    with pytest.raises(BundleError, match="gene list of .* does not match its manifest: .* rebuild it"):
        read_atlas(copy).var
    small, _ = build_index(np.zeros((10, read_atlas(copy).embedding().shape[1]), dtype=np.float32))
    save_index(small, copy / "index" / "X_pca.faiss")
    with pytest.raises(BundleError, match="has 10 rows for 600 cells: rebuild the bundle"):
        read_atlas(copy).index


# ----------------------------------------------------------------------------- validation
def test_a_built_bundle_is_valid(tiny_bundle, tiny_mae_bundle):
    assert validate_atlas(tiny_bundle) == []
    assert validate_atlas(tiny_mae_bundle) == []  # a second embedding, a neural model and its own index


def test_validate_finds_tampering(tiny_bundle, tmp_path):
    """Moved from tests/build/test_build.py (there on the Kang bundle)."""
    copy = _copy(tiny_bundle, tmp_path)
    np.save(copy / "obsm" / "X_umap.npy", np.zeros((5, 2), dtype=np.float32))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["gene_hash"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    problems = validate_atlas(copy)
    assert any("layout" in p for p in problems) and any("hash" in p for p in problems)


def _drop_cells(bundle: Path) -> None:
    pd.read_parquet(bundle / "cells.parquet").iloc[:-1].to_parquet(bundle / "cells.parquet")


def _nan_embedding(bundle: Path) -> None:
    x = np.load(bundle / "obsm" / "X_pca.npy")
    x[3, 0] = np.nan
    np.save(bundle / "obsm" / "X_pca.npy", x)


def _short_index(bundle: Path) -> None:
    index, _ = build_index(np.load(bundle / "obsm" / "X_pca.npy")[:10])
    save_index(index, bundle / "index" / "X_pca.faiss")


@pytest.mark.parametrize("tamper, problem", [
    (_drop_cells, "cells.parquet has 599 rows, manifest says 600 cells"),
    (lambda b: np.save(b / "obsm" / "X_umap.npy", np.zeros((600, 3), np.float32)),
     "layout has shape (600, 3), expected (600, 2)"),
    (_nan_embedding, "X_pca contains NaN or infinite values"),
    (lambda b: np.save(b / "obsm" / "X_pca.npy", np.zeros((599, 4), np.float32)), "X_pca does not have 600 rows"),
    (_short_index, "has 10 rows for 600 cells"),
    (lambda b: _edit_manifest(b, lambda d: d["roles"].update(donor="patient")),
     "role donor names column 'patient', not in cells.parquet"),
])
def test_validate_names_the_tampered_part(tiny_bundle, tmp_path, tamper, problem):
    copy = _copy(tiny_bundle, tmp_path)
    tamper(copy)
    problems = validate_atlas(copy)
    assert len(problems) == 1 and problem in problems[0], problems


@pytest.mark.parametrize("part", ["cells.parquet", "obsm/X_umap.npy", "store", "summaries", "model",
                                  "index/X_pca.faiss"])
def test_validate_lists_a_missing_part(tiny_bundle, tmp_path, part):
    copy = _copy(tiny_bundle, tmp_path)
    path = copy / part
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert validate_atlas(copy) == [f"{part} is missing"]
