"""Helpers shared by the tests: the real data sets in ``../shared/data`` and tiny atlases.

Imported as ``from vcell_testing import ...`` (a unique module name: the test tree has
more than one ``conftest.py``, so ``from conftest import`` is ambiguous).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VCELL_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_file(name: str) -> Path:
    """Path of a file in ``../shared/data``; skip (or fail on CI) when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        message = f"{path} is absent: real-data tests need ../shared/data beside the checkout"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def make_counts_adata(n_cells: int = 600, n_genes: int = 200, seed: int = 0) -> ad.AnnData:
    """A small raw-count AnnData with cell types, two conditions and four donors.

    Cell types differ in a block of marker genes; the ``disease`` condition raises genes
    ``G0..G9`` in every cell type, so a comparison has a known answer.
    """
    rng = np.random.default_rng(seed)
    cell_types = np.array(["T cell", "B cell", "monocyte"])
    ct = rng.integers(0, len(cell_types), n_cells)
    donors = np.array(["d1", "d2", "d3", "d4"])
    donor = rng.integers(0, len(donors), n_cells)
    condition = np.where(donor < 2, "normal", "disease")
    base = rng.gamma(2.0, 0.5, size=n_genes)
    mu = np.tile(base, (n_cells, 1))
    block = n_genes // 6
    for k in range(len(cell_types)):
        mu[ct == k, 20 + k * block: 20 + (k + 1) * block] *= 6.0
    mu[condition == "disease", :10] *= 4.0
    lib = rng.lognormal(0.0, 0.3, size=(n_cells, 1))
    counts = rng.poisson(mu * lib).astype(np.float32)
    obs = pd.DataFrame(
        {
            "cell_label": pd.Categorical(cell_types[ct]),
            "condition": pd.Categorical(condition),
            "sample": pd.Categorical(donors[donor]),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"G{i}" for i in range(n_genes)])
    return ad.AnnData(sp.csr_matrix(counts), obs=obs, var=var)


TINY_ROLES = dict(cell_type_key="cell_label", condition_key="condition", donor_key="sample")
"""The roles of :func:`make_counts_adata`'s columns, as build options."""


def tiny_ensembl_id(i: int) -> str:
    """The made-up Ensembl ID of gene ``G<i>`` of a tiny bundle (not in GENCODE)."""
    return f"ENSG9{i:010d}"


def write_tiny_h5ad(path: Path, **kwargs) -> Path:
    """:func:`make_counts_adata` written as ``.h5ad``, its genes given Ensembl IDs (``gene_ids``)."""
    adata = make_counts_adata(**kwargs)
    adata.var["gene_ids"] = [tiny_ensembl_id(i) for i in range(adata.n_vars)]
    adata.write_h5ad(path)
    return path


def build_tiny_bundle(root: Path, **options) -> Path:
    """A bundle of :func:`write_tiny_h5ad` (600 cells x 200 genes; 3 cell types, 2 conditions, 4 donors) in ``root``.

    ``options`` are further :class:`~engine.build.prepare.BuildOptions`.
    """
    from engine.build.pipeline import build_atlas
    from engine.build.prepare import BuildOptions

    source = write_tiny_h5ad(root / "tiny.h5ad")
    return build_atlas(source, root / "tiny.vcell", BuildOptions(**TINY_ROLES, n_landmarks=200, **options))


def with_toy_mae(bundle: Path, out: Path) -> Path:
    """A copy of a tiny bundle whose default embedding (map, index, model) is an untrained :func:`toy_mae`."""
    import shutil

    from engine.build.embed import add_learned_embedding
    from engine.bundle.atlas import read_atlas
    from engine.bundle.manifest import write_manifest
    from engine.models.serialize import save_model

    atlas = read_atlas(bundle)
    model, _, _ = toy_mae(g=atlas.n_genes)
    checkpoint = save_model(out.parent / f"{out.stem}-model", model, list(atlas.var.index))
    shutil.copytree(bundle, out)
    write_manifest(out, add_learned_embedding(out, read_atlas(out).manifest, str(checkpoint), n_landmarks=200))
    return out


def toy_mae(n: int = 300, g: int = 40, seed: int = 0, **config):
    """A small untrained masked autoencoder, ``(n, g)`` log-like data and gene labels; gene 3 is silent in every cell."""
    import torch

    from engine.models.ssl import build_model

    torch.manual_seed(seed)
    model = build_model("mae", g, hidden=[32, 16], latent=8, **config).eval()
    rng = np.random.default_rng(seed)
    x = np.log1p(rng.poisson(2.0, (n, g))).astype(np.float32)
    x[:, 3] = 0.0
    return model, x, [f"G{i}" for i in range(g)]


def fake_shards(out: Path, ranges, world: int, n: int, overrides: dict | None = None, dim: int = 4) -> None:
    """Shard files as embed-shards writes them, with random vectors (for the merge's checks).

    ``ranges`` are ``(rank, (start, stop))`` pairs; ``overrides`` maps a rank to record fields to change.
    """
    from engine.scale.records import ShardRecord, shard_stem

    rng = np.random.default_rng(0)
    for rank, (start, stop) in ranges:
        record = ShardRecord(rank=rank, world_size=world, start=start, stop=stop, n_cells=n, dim=dim, method="mae",
                             model_hash="m", gene_hash="g", bundle="b", checkpoint="c")
        for key, value in (overrides or {}).get(rank, {}).items():
            setattr(record, key, value)
        np.save(out / record.path, rng.standard_normal((stop - start, dim)).astype(np.float32))
        (out / (shard_stem(rank, world) + ".json")).write_text(json.dumps(record.__dict__))


def cell_type_in_both(atlas, condition_a: str, condition_b: str, min_cells: int = 20) -> str:
    """The first cell type of an atlas with at least ``min_cells`` cells in each of two conditions."""
    counts = pd.crosstab(atlas.obs[atlas.roles["cell_type"]], atlas.obs[atlas.roles["condition"]])
    return str(next(t for t in counts.index
                    if counts.loc[t, condition_a] >= min_cells and counts.loc[t, condition_b] >= min_cells))


def by_gene(table: pd.DataFrame, column: str = "shift") -> dict:
    """``{gene: value}`` of one column of a predicted-shift table."""
    return dict(zip(table["gene"], table[column]))


def assert_same_bundle(memory, streamed) -> None:
    """Assert that two bundles (``Atlas``) hold the same data (e.g. in-memory vs streaming builds)."""
    from engine.bundle.atlas import validate_atlas

    assert validate_atlas(streamed.path) == []
    pd.testing.assert_frame_equal(memory.obs, streamed.obs)
    for name in ("cells.parquet", "genes.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(memory.path / name), pd.read_parquet(streamed.path / name))
    for name in ("segment_ptr", "indices", "data"):
        a, b = (np.load(bundle.path / "store" / "by_gene" / f"{name}.npy") for bundle in (memory, streamed))
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    cells = np.arange(memory.n_cells)
    for layer in ("lognorm", "counts"):
        if layer in memory.store.layers:
            a, b = (bundle.expression(cells, None, layer=layer) for bundle in (memory, streamed))
            assert abs(a - b).max() == 0, layer
    assert memory.store.layers == streamed.store.layers
    for axis in ("obs", "var"):  # the SOMA experiment's own tables
        a, b = (_soma_table(bundle, axis) for bundle in (memory, streamed))
        pd.testing.assert_frame_equal(a, b)
    for name in ("sum", "sum_sq", "n_expressing", "counts"):
        a, b = (getattr(bundle.summaries, name) for bundle in (memory, streamed))
        assert (a is None) == (b is None) and (a is None or np.allclose(a, b, rtol=1e-6)), name
    m, s = memory.manifest, streamed.manifest
    for key in ("n_cells", "n_genes", "gene_hash", "roles", "matrices", "hvg", "harmonisation"):
        assert getattr(m, key) == getattr(s, key), key
    assert streamed.embedding().shape == memory.embedding().shape
    assert np.load(streamed.path / "obsm" / "X_umap.npy").shape == (memory.n_cells, 2)
    assert abs(m.model.explained_variance - s.model.explained_variance) < 1e-4


def _soma_table(bundle, axis: str) -> pd.DataFrame:
    """A bundle's SOMA ``obs`` or ``var`` table."""
    import tiledbsoma

    with tiledbsoma.Experiment.open(str(bundle.path / "store" / "soma")) as experiment:
        frame = experiment.obs if axis == "obs" else experiment.ms["RNA"].var
        return frame.read().concat().to_pandas()
