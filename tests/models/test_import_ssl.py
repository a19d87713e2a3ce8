"""Import of theislab/ssl_in_scg MLPAutoEncoder checkpoints, checked against a hand-written forward pass.

The state dicts use exactly their key names: ``encoder`` is their ``MLP`` (``Linear, SELU,
Dropout`` repeated, final ``Linear``: keys ``encoder.0``, ``encoder.3``, ...) and ``decoder`` is
``Sequential(MLP(...), Sigmoid())`` (keys ``decoder.0.0``, ``decoder.0.3``, ...). Their
``gene_dim`` and ``units_*`` are constructor arguments, so small widths are a faithful stand-in.
"""

import functools

import pytest
import torch
import torch.nn.functional as F

from engine.errors import BundleError, InputError
from engine.models.import_ssl import SCTAB_N_GENES, import_ssl_checkpoint
from engine.models.serialize import load_model, save_model

GENE_DIM = 50


def _their_state_dict(units_encoder, units_decoder, seed=0, gene_dim=GENE_DIM):
    g = torch.Generator().manual_seed(seed)
    state = {}
    dims = [gene_dim] + units_encoder
    for i, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
        state[f"encoder.{3 * i}.weight"] = torch.randn(n_out, n_in, generator=g) / n_in ** 0.5
        state[f"encoder.{3 * i}.bias"] = 0.1 * torch.randn(n_out, generator=g)
    dims = [units_encoder[-1]] + units_decoder + [gene_dim]
    for i, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
        state[f"decoder.0.{3 * i}.weight"] = torch.randn(n_out, n_in, generator=g) / n_in ** 0.5
        state[f"decoder.0.{3 * i}.bias"] = 0.1 * torch.randn(n_out, generator=g)
    return state


def _reference(state, x):
    """Their forward pass in eval mode (dropout off), from the raw tensors."""
    n_enc = len([k for k in state if k.startswith("encoder.") and k.endswith(".weight")])
    h = x
    for i in range(n_enc):
        h = h @ state[f"encoder.{3 * i}.weight"].T + state[f"encoder.{3 * i}.bias"]
        if i < n_enc - 1:
            h = F.selu(h)
    z = h
    n_dec = len([k for k in state if k.startswith("decoder.") and k.endswith(".weight")])
    for i in range(n_dec):
        h = h @ state[f"decoder.0.{3 * i}.weight"].T + state[f"decoder.0.{3 * i}.bias"]
        if i < n_dec - 1:
            h = F.selu(h)
    return z, torch.sigmoid(h)


def _lightning_file(tmp_path, state, name="model.ckpt", **hparams):
    ckpt = {"epoch": 3, "global_step": 1200, "pytorch-lightning_version": "2.0.9", "state_dict": state,
            "hyper_parameters": {"gene_dim": GENE_DIM, "dropout": 0.1, "masking_rate": 0.5,
                                 "masking_strategy": "random", **hparams},
            "optimizer_states": [], "lr_schedulers": [{"step_size": 2, "gamma": 0.9, "last_epoch": 3}]}
    path = tmp_path / name
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("units_decoder", [[16, 16, 32, 32], []], ids=["with-decoder", "linear-decoder"])
def test_import_reproduces_their_forward_pass(tmp_path, units_decoder):
    units_encoder = [32, 32, 16, 16, 8]  # the paper's [512, 512, 256, 256, 64], scaled down
    state = _their_state_dict(units_encoder, units_decoder)
    path = _lightning_file(tmp_path, state, masking_rate=0.3)
    genes = [f"ENSG{i:011d}" for i in range(GENE_DIM)]
    model = import_ssl_checkpoint(path, genes)
    assert model.config["hidden"] == [32, 32, 16, 16] and model.config["latent"] == 8
    assert model.config["decoder_hidden"] == units_decoder and model.config["output"] == "sigmoid"
    assert model.config["norm"] == "none" and model.config["mask_rate"] == 0.3
    x = torch.log1p(torch.poisson(torch.rand(20, GENE_DIM) * 4) * 50)
    z_ref, x_ref = _reference(state, x)
    torch.testing.assert_close(model.embed(x), z_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.reconstruct(x), x_ref, rtol=1e-5, atol=1e-6)
    # and it survives our own checkpoint format unchanged
    save_model(tmp_path / "ours", model, genes, extra={"source": "theislab/ssl_in_scg"})
    again, genes_again = load_model(tmp_path / "ours")
    assert genes_again == genes and torch.equal(again.embed(x), model.embed(x))
    assert torch.equal(again.reconstruct(x), model.reconstruct(x))


def test_import_at_the_papers_real_shapes(tmp_path):
    """scTab's 19,331 genes, encoder [512, 512, 256, 256, 64], decoder [256, 256, 512, 512]."""
    state = _their_state_dict([512, 512, 256, 256, 64], [256, 256, 512, 512], gene_dim=SCTAB_N_GENES)
    assert state["encoder.0.weight"].shape == (512, SCTAB_N_GENES) and "encoder.12.bias" in state
    assert state["decoder.0.12.weight"].shape == (SCTAB_N_GENES, 512)
    path = tmp_path / "real.ckpt"
    torch.save({"state_dict": state}, path)
    model = import_ssl_checkpoint(path)
    x = torch.log1p(torch.poisson(torch.rand(4, SCTAB_N_GENES)) * 10)
    z_ref, x_ref = _reference(state, x)
    torch.testing.assert_close(model.embed(x), z_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.reconstruct(x), x_ref, rtol=1e-5, atol=1e-5)


def test_import_refuses_pickled_objects(tmp_path):
    state = _their_state_dict([8, 4], [])
    path = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"optimizer": functools.partial(torch.optim.AdamW)}}, path)
    with pytest.raises(BundleError, match="contains pickled Python objects, not only weights"):
        import_ssl_checkpoint(path)


def test_import_refuses_foreign_or_broken_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        import_ssl_checkpoint(tmp_path / "absent.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(BundleError, match="not a readable PyTorch checkpoint"):
        import_ssl_checkpoint(junk)
    other = _lightning_file(tmp_path, {"classifier.0.weight": torch.zeros(3, GENE_DIM)}, name="clf.ckpt")
    with pytest.raises(BundleError, match="no 'encoder' weights"):
        import_ssl_checkpoint(other)
    normed = _their_state_dict([8, 4], [])
    normed["encoder.1.weight"] = torch.ones(8)  # a norm layer at position 1: not their MLPAutoEncoder
    normed["encoder.1.bias"] = torch.zeros(8)
    with pytest.raises(BundleError, match="Linear-SELU-Dropout"):
        import_ssl_checkpoint(_lightning_file(tmp_path, normed, name="normed.ckpt"))
    good = _lightning_file(tmp_path, _their_state_dict([8, 4], []), name="good.ckpt")
    with pytest.raises(InputError, match="50 input genes but 3 gene names"):
        import_ssl_checkpoint(good, ["a", "b", "c"])
