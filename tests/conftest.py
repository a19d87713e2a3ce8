"""Shared fixtures: tiny synthetic atlases and the real data sets in ``../shared/data``.

Tests that need ``../shared/data`` skip with a message when it is absent, and fail when
``CI=true`` (CI always has it, so a skip there would hide a missing test).
"""

from __future__ import annotations

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


@pytest.fixture
def shared_data():
    """The :func:`shared_file` helper as a fixture: ``shared_data("kang_ifnb_1k.h5ad")``."""
    return shared_file


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


@pytest.fixture
def counts_adata() -> ad.AnnData:
    """A fresh small raw-count AnnData (see :func:`make_counts_adata`)."""
    return make_counts_adata()


def _build_shared_bundle(tmp_path_factory, file_name: str, **options):
    """Build a bundle from a file in ../shared/data once per test session."""
    from engine.build import BuildOptions, build_atlas

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
def small_bundle(tmp_path_factory) -> Path:
    """A bundle of a generated atlas of 3,000 cells (three conditions, donors, batches), built once."""
    from engine.build import BuildOptions, build_atlas
    from engine.data.generate import generate_atlas

    root = tmp_path_factory.mktemp("small_bundle")
    source = generate_atlas(root / "generated-3000", 3000, seed=0)
    return build_atlas(source, root / "generated-3000.vcell", BuildOptions(n_landmarks=1000))
