"""Applying a model to store rows: aligned input with missing genes, embeddings streamed in row order."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from engine.data.store import InMemoryStore
from engine.errors import InputError
from engine.models.inference import embed_store, model_input, present_columns
from engine.models.ssl import build_model

SMALL = {"hidden": [16], "latent": 4}


@pytest.fixture
def store() -> InMemoryStore:
    rng = np.random.default_rng(0)
    return InMemoryStore(sp.random(250, 30, density=0.3, random_state=rng, format="csr", dtype=np.float32))


def test_present_columns():
    np.testing.assert_array_equal(present_columns(np.array([True, False, True, True, False])), [0, -1, 1, 2, -1])


def test_embed_store_matches_the_model_and_masks_missing_genes(store):
    torch.manual_seed(0)
    model = build_model("mae", 6, **SMALL).train()
    present = np.array([True, True, False, True, True, False])
    read = np.array([3, 7, 11, 29])  # the model genes the store has, in model order
    z = embed_store(model, store, read, present_columns(present), 40, 237, batch_size=64)
    assert model.training  # restored after the call
    x = np.zeros((197, 6), dtype=np.float32)
    x[:, present] = store.rows(np.arange(40, 237), read).toarray()
    expected = model.embed(torch.from_numpy(x), torch.from_numpy(~present)).numpy()
    np.testing.assert_allclose(z, expected, rtol=1e-4, atol=1e-5)
    assert z.dtype == np.float32
    assert embed_store(model, store, read, present_columns(present), 5, 5).shape == (0, 4)


def test_model_input_refuses_non_finite_values():
    store = InMemoryStore(sp.csr_matrix(np.array([[1.0, np.nan], [0.0, 2.0]], dtype=np.float32)))
    with pytest.raises(InputError, match="NaN or infinite"):
        model_input(store, np.array([0, 1]), np.array([0, 1]), np.array([0, 1]))
