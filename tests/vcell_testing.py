"""Helpers shared by the tests: the real data sets in ``../shared/data`` and tiny atlases.

Imported as ``from vcell_testing import ...`` (a unique module name: the test tree has
more than one ``conftest.py``, so ``from conftest import`` is ambiguous).
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
