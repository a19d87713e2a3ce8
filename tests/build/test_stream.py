"""The streaming first half of a build (engine.build.stream): row blocks give the bundle the in-memory path gives.

The three tests comparing whole builds of a generated atlas and of real files moved here from
tests/build/test_build.py.
"""

from __future__ import annotations

import anndata as ad
import pytest
from vcell_testing import TINY_ROLES, assert_same_bundle, make_counts_adata, write_tiny_h5ad

from engine.build.pipeline import build_atlas
from engine.build.prepare import BuildOptions
from engine.build.stream import count_cells
from engine.bundle.atlas import read_atlas
from engine.data.schema import CANDIDATES
from engine.data.synth.generate import generate_atlas


@pytest.fixture(scope="module")
def small_generated(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "gen3k"
    generate_atlas(path, 3000, seed=0)
    return path


def _build_both(source, tmp_path, progress=None, **options):
    built = {}
    for stream in (False, True):
        built[stream] = build_atlas(source, tmp_path / f"stream{stream}.vcell",
                                    BuildOptions(stream=stream, n_landmarks=1000, pca_sample=2000, **options),
                                    progress=progress if stream else None)
    return read_atlas(built[False]), read_atlas(built[True])


def test_count_cells_reads_only_the_cell_table(tmp_path):
    assert count_cells(write_tiny_h5ad(tmp_path / "tiny.h5ad", n_cells=345)) == 345
    assert count_cells(generate_atlas(tmp_path / "gen", 120, n_genes=30, n_regulators=2, truth_cells=120)) == 120


@pytest.mark.parametrize("labelled", [True, False])
def test_many_small_blocks_give_the_in_memory_bundle(tmp_path, monkeypatch, labelled):
    """Blocks of 128 rows (the last one short): pass boundaries, the PCA sample and summaries across blocks."""
    source = write_tiny_h5ad(tmp_path / "tiny.h5ad", n_cells=600)
    roles = TINY_ROLES
    if not labelled:  # clustered after the passes: the summaries take a third pass over the blocks
        adata = make_counts_adata()
        adata.obs = adata.obs.drop(columns="cell_label")
        adata.write_h5ad(source)
        roles = {k: v for k, v in TINY_ROLES.items() if k != "cell_type_key"}
    monkeypatch.setattr("engine.build.stream.BLOCK", 128)
    messages = []
    memory, streamed = _build_both(source, tmp_path, progress=lambda f, m: messages.append(m), **roles)
    for step in ("pass 1/2: normalising and storing", "pass 2/2: embedding"):
        assert [m for m in messages if m.startswith(step)] == [f"{step} ({start}/600 cells)"
                                                              for start in (0, 128, 256, 384, 512)]
    assert streamed.categories("cell_type")[0].startswith("cluster ") != labelled
    assert_same_bundle(memory, streamed)


def test_streaming_build_equals_in_memory_build_generated(small_generated, tmp_path):
    assert_same_bundle(*_build_both(small_generated, tmp_path))


def test_streaming_build_equals_in_memory_build_h5ad(shared_data, tmp_path):
    assert_same_bundle(*_build_both(shared_data("kang_ifnb_1k.h5ad"), tmp_path))


def test_streaming_build_equals_in_memory_build_without_labels(shared_data, tmp_path):
    """Inputs without cell types are clustered after the passes: summaries and store obs follow."""
    adata = ad.read_h5ad(shared_data("kang_ifnb_1k.h5ad"))
    adata.obs = adata.obs[[c for c in adata.obs.columns if c.lower() not in CANDIDATES["cell_type"]]]
    adata.write_h5ad(tmp_path / "unlabelled.h5ad")
    memory, streamed = _build_both(tmp_path / "unlabelled.h5ad", tmp_path)
    assert streamed.categories("cell_type")[0].startswith("cluster ")
    assert_same_bundle(memory, streamed)
