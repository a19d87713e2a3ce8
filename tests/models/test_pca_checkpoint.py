"""PCA model: fits real structure, round-trips through the checkpoint format, refuses corrupt files."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

from engine.errors import BundleError
from engine.models.checkpoint import load_checkpoint, save_checkpoint
from engine.models.pca import PCAModel, fit_pca


def test_pca_separates_groups_and_roundtrips(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (400, 30)).astype(np.float32)
    x[:200, :5] += 4.0
    model = fit_pca(sp.csr_matrix(np.abs(x)), [f"g{i}" for i in range(30)], n_components=10)
    emb = model.transform(np.abs(x))
    assert emb.shape == (400, 10)
    assert abs(emb[:200, 0].mean() - emb[200:, 0].mean()) > 3 * emb[:, 0].std() / 2
    save_checkpoint(tmp_path / "m", model.to_checkpoint())
    again = PCAModel.from_checkpoint(load_checkpoint(tmp_path / "m"))
    np.testing.assert_array_equal(again.transform(np.abs(x)), emb)
    assert again.genes == model.genes


def test_corrupt_or_foreign_checkpoints_are_refused(tmp_path):
    with pytest.raises(BundleError, match="lacks"):
        load_checkpoint(tmp_path)
    model = fit_pca(np.random.default_rng(1).random((50, 6)), list("abcdef"), n_components=3)
    path = save_checkpoint(tmp_path / "m", model.to_checkpoint())
    (path / "weights.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(BundleError, match="corrupt"):
        load_checkpoint(path)
    save_checkpoint(path, model.to_checkpoint())
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "format": "something-else"}))
    with pytest.raises(BundleError, match="not a vcell model"):
        load_checkpoint(path)
