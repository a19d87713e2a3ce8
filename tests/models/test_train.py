"""Training on a store with Lightning, without a bundle: the Lightning task, labels, the checkpoint, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.data.loader import DonorSplit
from engine.data.store import ExpressionStore
from engine.errors import InputError
from engine.models.serialize import load_model
from engine.models.ssl import build_model
from engine.models.train import SSLTask, train_model

SMALL = {"hidden": [32], "latent": 8}


def _split(train: int, val: int) -> DonorSplit:
    return DonorSplit(np.arange(train), np.arange(train, train + val), [], f"random {val} cells")


def test_train_model_on_a_store_with_labels(small_bundle, tmp_path):
    store = ExpressionStore(small_bundle / "store")
    genes = np.arange(5, 45)
    names = [f"gene-{g}" for g in genes]
    labels = np.arange(store.n_cells) % 3
    path = train_model(small_bundle / "store", "supervised", genes, names, _split(300, 100), out=tmp_path / "run",
                       labels=labels, epochs=1, batch_size=64, record={"source": "a store"}, **SMALL)
    assert path == tmp_path / "run" / "model"
    model, model_genes = load_model(path)
    assert model_genes == names and model.n_genes == 40
    config = json.loads((path / "config.json").read_text())
    assert config["n_classes"] == 3
    training = config["training"]
    assert training["n_train_cells"] == 300 and training["n_val_cells"] == 100
    assert training["split"] == "random 100 cells" and training["source"] == "a store"
    assert json.loads((tmp_path / "run" / "history.json").read_text()) == training
    z = model.embed(torch.from_numpy(store.rows(np.arange(10), genes).toarray()))
    assert z.shape == (10, 8) and torch.isfinite(z).all()


def test_bad_input(small_bundle, tmp_path):
    store = small_bundle / "store"
    genes = np.arange(10)
    with pytest.raises(InputError, match="Unknown method"):
        train_model(store, "mea", genes, [str(g) for g in genes], _split(50, 10), out=tmp_path / "x")
    with pytest.raises(InputError, match="epochs must be at least 1"):
        train_model(store, "mae", genes, [str(g) for g in genes], _split(50, 10), out=tmp_path / "x", epochs=0)
    with pytest.raises(InputError, match="9 gene names were given for 10"):
        train_model(store, "mae", genes, [str(g) for g in genes[:9]], _split(50, 10), out=tmp_path / "x")
    with pytest.raises(InputError, match="needs a label"):
        train_model(store, "supervised", genes, [str(g) for g in genes], _split(50, 10), out=tmp_path / "x")
    assert not (tmp_path / "x").exists()
    task = SSLTask(build_model("mae", 10, **SMALL))
    x = torch.ones(4, 10)
    x[1, 3] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        task.training_step({"x": x}, 0)
