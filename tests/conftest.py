"""Shared fixtures: tiny synthetic atlases and the real data sets in ``../shared/data``.

Tests that need ``../shared/data`` skip with a message when it is absent, and fail when
``CI=true`` (CI always has it, so a skip there would hide a missing test).
"""

from __future__ import annotations

import sys
from pathlib import Path

import anndata as ad
import pytest
from vcell_testing import build_tiny_bundle, make_counts_adata, shared_file, with_toy_mae

try:  # small models train faster (and steadily) on one thread than on two busy cores
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a dependency
    pass


@pytest.fixture(autouse=True)
def keep_main_module():
    """Restore ``sys.modules["__main__"]`` after each test.

    Streamlit's ``AppTest`` leaves the page script there; a later test that starts "spawn" worker
    processes (the generator's ``n_jobs``) would then make each worker re-run that script as its main
    module, and the pool hangs.
    """
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture
def shared_data():
    """The :func:`shared_file` helper as a fixture: ``shared_data("kang_ifnb_1k.h5ad")``."""
    return shared_file


@pytest.fixture
def counts_adata() -> ad.AnnData:
    """A fresh small raw-count AnnData (see :func:`make_counts_adata`)."""
    return make_counts_adata()


def _build_shared_bundle(tmp_path_factory, file_name: str, **options):
    """Build a bundle from a file in ../shared/data once per test session."""
    from engine.build.pipeline import build_atlas
    from engine.build.prepare import BuildOptions

    source = shared_file(file_name)
    out = tmp_path_factory.mktemp("bundles") / (Path(file_name).stem + ".vcell")
    return build_atlas(source, out, BuildOptions(**options))


@pytest.fixture(scope="session")
def covid_bundle(tmp_path_factory) -> Path:
    """The COVID-19 vs healthy PBMC subset (condition, donor_id; no cell types) as a bundle."""
    return _build_shared_bundle(tmp_path_factory, "covid_pbmc_combat_subset.h5ad")


@pytest.fixture(scope="session")
def kang_bundle(tmp_path_factory) -> Path:
    """Kang et al. interferon-beta vs control PBMC (stim, seurat_annotations) as a bundle."""
    return _build_shared_bundle(tmp_path_factory, "kang_ifnb_1k.h5ad")


@pytest.fixture(scope="session")
def kang_donors_bundle(tmp_path_factory) -> Path:
    """Kang et al. PBMC with donors (muscat's example: ctrl / stim, 2 donors each, 5 cell types) as a bundle."""
    return _build_shared_bundle(tmp_path_factory, "kang_ifnb_donors.h5ad", cell_type_key="cluster_id",
                                condition_key="group_id", donor_key="sample_id", reference_condition="ctrl")


@pytest.fixture(scope="session")
def small_bundle(tmp_path_factory) -> Path:
    """A bundle of a generated atlas of 3,000 cells (three conditions, donors, batches), built once."""
    from engine.build.pipeline import build_atlas
    from engine.build.prepare import BuildOptions
    from engine.data.synth.generate import generate_atlas

    root = tmp_path_factory.mktemp("small_bundle")
    source = generate_atlas(root / "generated-3000", 3000, seed=0)
    return build_atlas(source, root / "generated-3000.vcell", BuildOptions(n_landmarks=1000))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A PCA bundle of 600 generated count cells x 200 genes (:func:`vcell_testing.build_tiny_bundle`), built once."""
    return build_tiny_bundle(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_mae_bundle(tiny_bundle, tmp_path_factory) -> Path:
    """The tiny bundle with an untrained toy masked autoencoder as its default embedding, made once."""
    return with_toy_mae(tiny_bundle, tmp_path_factory.mktemp("tiny_mae") / "tiny_mae.vcell")


@pytest.fixture(scope="session")
def mae_bundle(tmp_path_factory) -> Path:
    """Kang interferon-beta PBMC built with a learned embedding (`vcell build --model mae --epochs 2`)."""
    from engine.cli import main

    out = tmp_path_factory.mktemp("mae") / "kang_mae.vcell"
    assert main(["build", str(shared_file("kang_ifnb_1k.h5ad")), "--out", str(out), "--model", "mae",
                 "--epochs", "2"]) == 0
    return out


@pytest.fixture(scope="session")
def covid_annotated_bundle(covid_bundle, tmp_path_factory) -> Path:
    """The COVID bundle annotated by label transfer from kang_ifnb_1k.h5ad (`vcell annotate --out`), built once.

    ``cell_type`` holds the transferred labels (``"unknown"`` below the default threshold),
    ``cell_type_confidence`` the vote share and ``cluster`` the previous Leiden clusters.
    """
    from engine.annotate.apply import annotate_bundle

    out = tmp_path_factory.mktemp("annotated") / "covid_annotated.vcell"
    annotate_bundle(covid_bundle, shared_file("kang_ifnb_1k.h5ad"), out=out)
    return out
