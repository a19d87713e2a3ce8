"""Import pretrained masked autoencoders from theislab/ssl_in_scg (Richter et al. 2024).

Their ``MLPAutoEncoder`` (``self_supervision/models/lightning_modules/cellnet_autoencoder.py``)
is a Lightning module with

- ``encoder``: their ``MLP`` (a ``torch.nn.Sequential`` of ``Linear, SELU, Dropout`` per hidden
  width and a final ``Linear``, no normalisation layer), so the state-dict keys are
  ``encoder.0.weight``, ``encoder.3.weight``, ..., ``encoder.12.weight`` for
  ``units_encoder = [512, 512, 256, 256, 64]``;
- ``decoder``: ``nn.Sequential(MLP(64, units_decoder + [gene_dim]), Sigmoid())``, keys
  ``decoder.0.0.weight``, ``decoder.0.3.weight``, ...; their training script sets
  ``units_decoder = [256, 256, 512, 512]`` with ``--decoder`` and ``[]`` (a single ``Linear``)
  without it.

Inputs are scTab's 19,331 genes, log1p of counts scaled to 10,000 per cell. The sigmoid output
is kept (``output="sigmoid"`` in the config) so reconstructions reproduce theirs; training our
own models uses an unbounded output instead. The checkpoint is read with
``torch.load(weights_only=True)``: files that need arbitrary unpickling are refused.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from engine.errors import BundleError, InputError
from engine.models.ssl import MaskedAutoencoder

SCTAB_N_GENES = 19331
_ENCODER = re.compile(r"^encoder\.(\d+)\.(weight|bias)$")
_DECODER = re.compile(r"^decoder\.0\.(\d+)\.(weight|bias)$")


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"The checkpoint file {path} does not exist.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" not in str(exc).lower():
            raise BundleError(f"{path} is not a readable PyTorch checkpoint ({exc}).".splitlines()[0]) from exc
        raise BundleError(f"{path} contains pickled Python objects, not only weights, so it is not loaded: "
                          "re-save just its state_dict with torch.save.") from exc
    except Exception as exc:  # truncated zip, not a torch file at all
        raise BundleError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}).") from exc
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BundleError(f"{path} holds no state_dict of tensors: it is not a Lightning checkpoint.")
    return {"state": state, "hparams": ckpt.get("hyper_parameters") or {}}


def _linears(state: dict[str, torch.Tensor], pattern: re.Pattern, path: Path, part: str,
             step: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(weight, bias)`` of the ``Linear`` layers of one of their ``MLP``s, in order."""
    found: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = pattern.match(key)
        if m:
            found.setdefault(int(m.group(1)), {})[m.group(2)] = value
    indices = sorted(found)
    if not indices:
        raise BundleError(f"{path} has no '{part}' weights: it is not an ssl_in_scg MLP autoencoder.")
    if indices != list(range(0, step * len(indices), step)) or any(len(v) != 2 for v in found.values()):
        raise BundleError(f"The {part} of {path} is not the Linear-SELU-Dropout MLP this import knows "
                          f"(layers at positions {indices}).")
    layers = [(found[i]["weight"], found[i]["bias"]) for i in indices]
    for (w0, _), (w1, _) in zip(layers, layers[1:]):
        if w1.shape[1] != w0.shape[0]:
            raise BundleError(f"The {part} layers of {path} do not chain ({tuple(w0.shape)} then {tuple(w1.shape)}).")
    return layers


def import_ssl_checkpoint(ckpt_path: str | os.PathLike, genes: list[str] | None = None) -> MaskedAutoencoder:
    """Turn an ssl_in_scg ``MLPAutoEncoder`` Lightning ``.ckpt`` into a :class:`MaskedAutoencoder`.

    Parameters
    ----------
    ckpt_path
        The ``.ckpt`` file (a dict with ``state_dict``; a bare state dict is accepted too).
    genes
        The model's gene order (scTab's 19,331 genes for their released models), checked against
        the input width; save it beside the model with
        :func:`engine.models.serialize.save_model`.

    Returns
    -------
    MaskedAutoencoder
        In eval mode, with the paper's architecture (no normalisation layers, sigmoid output)
        and their masking rate where the checkpoint records it (0.5 otherwise).

    Raises
    ------
    BundleError
        The file needs unpickling of Python objects, is unreadable, or is not their MLP
        autoencoder.
    InputError
        The file does not exist, or ``genes`` does not match the input width.
    """
    path = Path(ckpt_path)
    content = _read(path)
    state, hparams = content["state"], content["hparams"]
    encoder = _linears(state, _ENCODER, path, "encoder")
    decoder = _linears(state, _DECODER, path, "decoder")
    n_genes = int(encoder[0][0].shape[1])
    if decoder[0][0].shape[1] != encoder[-1][0].shape[0] or decoder[-1][0].shape[0] != n_genes:
        raise BundleError(f"The decoder of {path} does not map the {encoder[-1][0].shape[0]}-wide latent space "
                          f"back to {n_genes} genes.")
    if genes is not None and len(genes) != n_genes:
        raise InputError(f"The checkpoint has {n_genes:,} input genes but {len(genes):,} gene names were given.")
    rate = hparams.get("masking_rate") if isinstance(hparams, dict) else None
    rate = float(rate) if isinstance(rate, (int, float)) and 0 < rate < 1 else 0.5
    dropout = hparams.get("dropout", 0.1) if isinstance(hparams, dict) else 0.1
    model = MaskedAutoencoder(
        n_genes, masking="random", decoder="mse", mask_rate=rate,
        hidden=[int(w.shape[0]) for w, _ in encoder[:-1]], latent=int(encoder[-1][0].shape[0]),
        dropout=float(dropout) if isinstance(dropout, (int, float)) and 0 <= dropout < 1 else 0.1,
        norm="none", decoder_hidden=[int(w.shape[0]) for w, _ in decoder[:-1]], output="sigmoid")
    with torch.no_grad():
        for ours, (w, b) in zip(model.encoder.linear_layers() + model.decoder.linear_layers(), encoder + decoder):
            ours.weight.copy_(w.to(torch.float32))
            ours.bias.copy_(b.to(torch.float32))
    return model.eval()
