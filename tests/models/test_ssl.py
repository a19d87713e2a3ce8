"""Self-supervised models: contract surface, losses fall on a tiny data set, BYOL EMA, Barlow sanity."""

import numpy as np
import pytest
import torch

from engine.errors import InputError
from engine.models.encoder import MLPEncoder
from engine.models.ssl import (BYOL, METHODS, BarlowTwins, ClassifierHead, MaskedAutoencoder,
                               SupervisedClassifier, barlow_loss, build_model)

N_GENES = 40
SMALL = {"hidden": (32, 32), "latent": 8, "dropout": 0.0}


def _data(n=256, seed=0):
    """Counts from 4 cell types, each with its own block of 10 high genes."""
    g = torch.Generator().manual_seed(seed)
    label = torch.arange(n) % 4
    rate = torch.full((n, N_GENES), 0.5)
    for k in range(4):
        rate[label == k, 10 * k:10 * (k + 1)] = 8.0
    rate = rate * torch.exp(0.3 * torch.randn(n, 1, generator=g))
    counts = torch.poisson(rate, generator=g)
    library = counts.sum(1)
    x = torch.log1p(counts / library[:, None].clamp_min(1) * 1e4)
    return {"x": x, "counts": counts, "library": library, "label": label}


PROGRAMMES = [list(range(i, i + 5)) for i in range(0, N_GENES, 5)]
CASES = {
    "mae": {},
    "gp-mae": {"programmes": PROGRAMMES},
    "byol": {},
    "barlow": {"projection_hidden": 32, "projection": 32},
    "supervised": {"n_classes": 4},
}


def _train(model, data, steps=50, lr=3e-3, batch=64):
    torch.manual_seed(0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    model.train()
    n = data["x"].shape[0]
    for step in range(steps):
        idx = torch.arange(step * batch, (step + 1) * batch) % n
        out = model.training_loss({k: v[idx] for k, v in data.items()})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    return losses


@pytest.mark.parametrize("method", METHODS)
def test_every_method_meets_the_contract_and_learns(method):
    torch.manual_seed(0)
    model = build_model(method, N_GENES, **SMALL, **CASES[method])
    assert isinstance(model, torch.nn.Module) and isinstance(model.encoder, MLPEncoder)
    assert model.config["method"] == method and model.config["n_genes"] == N_GENES
    rebuilt = build_model(**model.config)
    assert type(rebuilt) is type(model) and rebuilt.config == model.config
    assert set(model.state_dict()) == set(rebuilt.state_dict())
    data = _data()
    losses = _train(model, data)
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    z = model.embed(data["x"][:10])
    assert z.shape == (10, 8) and not z.requires_grad
    assert model.training  # embed restores the mode it found
    torch.testing.assert_close(model.embed(data["x"][:10]), z)  # no masking or noise at embed time


def test_mae_reconstructs_and_decodes_separately():
    torch.manual_seed(0)
    model = MaskedAutoencoder(N_GENES, mask_rate=0.25, **SMALL)
    out = model.training_loss(_data(32))
    assert out["mask_fraction"].item() == pytest.approx(0.25, abs=0.01)
    x = _data(16)["x"]
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.reconstruct(x), model.decode(model.encoder(x)))
        missing = torch.zeros(N_GENES, dtype=torch.bool)
        missing[:5] = True
        filled = x.clone()
        filled[:, :5] = 0
        torch.testing.assert_close(model.embed(x, missing), model.encoder(filled))
    _train(model, _data())
    assert model.reconstruct(x).max() > 3.0  # unbounded output: a sigmoid could never reach log1p values > 1


def test_nb_mae_learns_counts_and_needs_them():
    torch.manual_seed(0)
    model = MaskedAutoencoder(N_GENES, decoder="nb", **SMALL)
    data = _data()
    losses = _train(model, data)
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
    assert model.reconstruct(data["x"][:4]).shape == (4, N_GENES)
    with pytest.raises(InputError, match="raw counts"):
        model.training_loss({"x": data["x"][:4]})


def test_contrastive_models_work_without_counts():
    torch.manual_seed(0)
    data = _data(64)
    for model in (BYOL(N_GENES, **SMALL), BarlowTwins(N_GENES, projection_hidden=16, projection=16, **SMALL)):
        assert torch.isfinite(model.training_loss({"x": data["x"]})["loss"])


def test_byol_target_is_an_exponential_moving_average():
    torch.manual_seed(0)
    model = BYOL(N_GENES, tau=0.9, **SMALL)
    online = model.encoder.net[0].weight
    target = model.target_encoder.net[0].weight
    assert torch.equal(online, target) and not target.requires_grad
    _train(model, _data(), steps=5)
    assert not torch.equal(online, target)  # the target lags behind
    before_target, before_online = target.detach().clone(), online.detach().clone()
    model.update_target()
    torch.testing.assert_close(target, 0.9 * before_target + 0.1 * before_online)
    frozen = target.detach().clone()
    model.eval()
    model.training_loss(_data(64))  # no EMA step outside training
    assert torch.equal(target, frozen)


def test_barlow_loss_sanity_values():
    # Orthogonal +-1 columns (Hadamard): standardised, perfectly decorrelated, identical views -> 0.
    h = torch.tensor([[1.0]])
    for _ in range(3):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    z = h[:, 1:]  # drop the constant column: 8 cells x 7 zero-mean, unit-variance, uncorrelated features
    loss, on, off = barlow_loss(z, z.clone())
    assert loss.item() == pytest.approx(0.0, abs=1e-5)
    # Independent views: diagonal far from 1.
    loss_rand, on_rand, _ = barlow_loss(torch.randn(64, 7), torch.randn(64, 7))
    assert on_rand.item() > 3.0 and loss_rand.item() > loss.item()
    # Identical but fully redundant features: diagonal perfect, off-diagonal penalised (7*6 pairs of 1).
    col = torch.randn(32, 1)
    loss_red, on_red, off_red = barlow_loss(col.repeat(1, 7), col.repeat(1, 7), lambda_offdiag=0.5)
    assert on_red.item() == pytest.approx(0.0, abs=1e-4)
    assert off_red.item() == pytest.approx(42.0, rel=1e-3) and loss_red.item() == pytest.approx(21.0, rel=1e-3)


def test_classifier_head_and_supervised_forward():
    head = ClassifierHead(8, 5)
    assert head(torch.randn(3, 8)).shape == (3, 5)
    model = SupervisedClassifier(N_GENES, 4, **SMALL)
    assert model(_data(6)["x"]).shape == (6, 4)
    with pytest.raises(InputError, match="labels"):
        model.training_loss({"x": _data(6)["x"]})


def test_bad_input_is_refused_clearly():
    with pytest.raises(InputError, match="Unknown method 'xyz': use one of mae, gp-mae, byol, barlow, supervised."):
        build_model("xyz", 10)
    with pytest.raises(InputError, match="needs programmes"):
        build_model("gp-mae", 10)
    with pytest.raises(InputError, match="needs n_classes"):
        build_model("supervised", 10)
    with pytest.raises(InputError, match="no setting 'widths'"):
        build_model("mae", 10, widths=3)
    model = build_model("mae", N_GENES, **SMALL)
    x = _data(4)["x"]
    x[0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        model.training_loss({"x": x})
    with pytest.raises(InputError, match="NaN"):
        model.embed(x)
