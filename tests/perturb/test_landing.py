"""Where perturbed cells land (engine.perturb.landing): the paired embedding and the neighbours before and after."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vcell_testing import toy_mae

from engine.bundle.atlas import read_atlas
from engine.models.serialize import load_model
from engine.perturb.landing import MAX_LANDING_CELLS, embed_pair, where_cells_go
from engine.perturb.spec import PerturbationSpec


@pytest.fixture(scope="module")
def mae_atlas(tiny_mae_bundle):
    """The tiny bundle embedded, indexed and mapped by a toy masked autoencoder, and that model."""
    atlas = read_atlas(tiny_mae_bundle)
    model, genes = load_model(tiny_mae_bundle / "model")
    assert genes == list(atlas.var.index)  # the model's inputs are the bundle's genes in order
    return atlas, model


def _inputs(atlas, cells: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(atlas.expression(cells).toarray()), torch.zeros(atlas.n_genes, dtype=torch.bool)


def test_paired_embeddings_are_the_model_embeddings_of_control_and_perturbed_input():
    model, x, _ = toy_mae()
    model.train()
    x = torch.from_numpy(x)
    missing = torch.zeros(x.shape[1], dtype=torch.bool)
    missing[[10, 11, 30]] = True
    targets = [0, 5]
    delta = np.random.default_rng(0).normal(0, 1, (x.shape[0], 2))
    control, perturbed = embed_pair(model, x, missing, targets, delta, torch.device("cpu"))
    moved = x.clone()
    moved[:, targets] += torch.as_tensor(delta, dtype=torch.float32)
    np.testing.assert_allclose(control, model.embed(x, missing).numpy(), atol=1e-5)
    np.testing.assert_allclose(perturbed, model.embed(moved, missing).numpy(), atol=1e-5)
    assert np.abs(perturbed - control).max() > 1e-3 and model.training  # it moved; the model's mode is restored
    same, again = embed_pair(model, x, missing, targets, np.zeros_like(delta), torch.device("cpu"))
    np.testing.assert_array_equal(same, again)


def test_a_bundle_indexed_on_another_embedding_says_so(tiny_bundle):
    atlas = read_atlas(tiny_bundle)
    model, _, _ = toy_mae(g=atlas.n_genes)
    x, missing = _inputs(atlas, np.arange(5))
    landing, note = where_cells_go(atlas, model, x, missing, [0], PerturbationSpec(["G0"], "ko"), cells=np.arange(5))
    assert landing is None
    assert note.startswith("The bundle's neighbour index is built on X_pca, not on this model's embedding (X_mae)")


def test_control_cells_land_on_themselves_and_the_perturbed_ones_move(mae_atlas):
    atlas, model = mae_atlas
    obs = atlas.obs
    cells = np.flatnonzero((obs["cell_type"] == "monocyte").to_numpy() & (obs["disease"] == "normal").to_numpy())
    x, missing = _inputs(atlas, cells)
    target = 90  # a monocyte marker
    landing, note = where_cells_go(atlas, model, x, missing, [target], PerturbationSpec([f"G{target}"], "ko"),
                                   cells=cells, k=1, device="cpu")
    assert note is None
    np.testing.assert_array_equal(landing.cells, cells)
    # with k = 1 each control cell's neighbour is the cell itself: its own type, condition and map position
    np.testing.assert_array_equal(landing.layout_control, atlas.layout[cells])
    assert landing.neighbour_distance < 1e-2 and landing.layout_perturbed.shape == (len(cells), 2)
    composition = landing.composition.set_index(["role", "category"])
    assert composition.loc[("cell_type", "monocyte"), "control"] == 1.0
    assert composition.loc[("condition", "normal"), "control"] == 1.0
    assert set(composition.index.get_level_values("role")) == {"cell_type", "condition"}  # donors are not reported
    for _, part in landing.composition.groupby("role"):
        assert part["control"].sum() == pytest.approx(1.0) and part["perturbed"].sum() == pytest.approx(1.0)
        np.testing.assert_allclose(part["shift"], part["perturbed"] - part["control"])
    assert landing.latent_shift > 0 and 0.0 <= landing.changed_fraction <= 1.0


def test_a_perturbation_that_changes_nothing_moves_nothing(mae_atlas):
    atlas, model = mae_atlas
    target = 50
    cells = np.flatnonzero(atlas.gene_values(target) == 0)[:40]  # the knock-out of a gene they do not express
    assert len(cells) >= 10
    x, missing = _inputs(atlas, cells)
    landing, _ = where_cells_go(atlas, model, x, missing, [target], PerturbationSpec([target], "ko"), cells=cells,
                                device="cpu")
    assert landing.latent_shift == 0.0 and landing.changed_fraction == 0.0
    assert (landing.composition["shift"] == 0).all()
    np.testing.assert_array_equal(landing.layout_perturbed, landing.layout_control)


def test_large_populations_are_followed_through_a_seeded_subsample(mae_atlas):
    atlas, model = mae_atlas
    cells = np.resize(np.arange(atlas.n_cells), MAX_LANDING_CELLS + 500)  # more cells than are followed
    x, missing = _inputs(atlas, cells)
    spec = PerturbationSpec(["G10"], "oe")

    def follow(seed: int):
        return where_cells_go(atlas, model, x, missing, [10], spec, cells=cells, k=1, seed=seed, device="cpu")[0]

    first, again, other = follow(0), follow(0), follow(1)
    assert len(first.cells) == MAX_LANDING_CELLS
    np.testing.assert_array_equal(first.cells, again.cells)
    assert not np.array_equal(first.cells, other.cells)
    np.testing.assert_array_equal(first.layout_control, atlas.layout[first.cells])  # rows of x and cells stay paired
