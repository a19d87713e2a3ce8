"""The MLP encoder shared by every learned embedding: genes → hidden layers → latent.

Richter et al. 2024 (theislab/ssl_in_scg) use ``genes→512→512→256→256→64`` blocks of
``Linear → SELU → Dropout`` with no normalisation layer (their ``MLP`` is built without a
``norm_layer``) and a plain final ``Linear`` to the latent space. That is our default, so
their checkpoints import unchanged; a LayerNorm or BatchNorm after each hidden ``Linear``
is available for our own training runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from engine.errors import InputError

NORMS = ("none", "layer", "batch")


def mlp_layers(n_in: int, hidden: Sequence[int], n_out: int, dropout: float = 0.1,
               norm: str = "none") -> list[nn.Module]:
    """Layers of an MLP: ``Linear → [norm] → SELU → Dropout`` per hidden width, then ``Linear``.

    Parameters
    ----------
    n_in, n_out
        Input and output widths.
    hidden
        Hidden widths, in order (may be empty: a single ``Linear``).
    dropout
        Dropout probability after each hidden activation.
    norm
        ``"none"`` (the paper), ``"layer"`` or ``"batch"``.

    Returns
    -------
    list of torch.nn.Module
        For ``nn.Sequential``; with ``norm="none"`` the ``Linear`` layers sit at positions
        0, 3, 6, ... exactly as in the paper's ``MLP``.
    """
    if norm not in NORMS:
        raise InputError(f"Unknown normalisation '{norm}': use one of {', '.join(NORMS)}.")
    if not 0.0 <= dropout < 1.0:
        raise InputError(f"Dropout must be in [0, 1), not {dropout}.")
    layers: list[nn.Module] = []
    width = int(n_in)
    for h in hidden:
        layers.append(nn.Linear(width, int(h)))
        if norm == "layer":
            layers.append(nn.LayerNorm(int(h)))
        elif norm == "batch":
            layers.append(nn.BatchNorm1d(int(h)))
        layers += [nn.SELU(), nn.Dropout(dropout)]
        width = int(h)
    layers.append(nn.Linear(width, int(n_out)))
    return layers


class MLPEncoder(nn.Module):
    """Map log-normalised expression ``(B, n_genes)`` to embeddings ``(B, latent)``.

    Parameters
    ----------
    n_genes
        Input width (genes, in the model's gene order).
    hidden
        Hidden widths; the paper's ``(512, 512, 256, 256)`` by default.
    latent
        Embedding width.
    dropout
        Dropout after each hidden block (inactive in eval mode).
    norm
        ``"none"`` (the paper's architecture), ``"layer"`` or ``"batch"``.
    """

    def __init__(self, n_genes: int, hidden: Sequence[int] = (512, 512, 256, 256), latent: int = 64,
                 dropout: float = 0.1, norm: str = "none"):
        super().__init__()
        if int(n_genes) < 1 or int(latent) < 1 or any(int(h) < 1 for h in hidden):
            raise InputError(f"Encoder widths must be positive (genes {n_genes}, hidden {list(hidden)}, "
                             f"latent {latent}).")
        self.n_genes = int(n_genes)
        self.hidden = tuple(int(h) for h in hidden)
        self.latent = int(latent)
        self.net = nn.Sequential(*mlp_layers(self.n_genes, self.hidden, self.latent, dropout, norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a batch.

        Parameters
        ----------
        x
            ``(B, n_genes)`` float tensor, log-normalised.

        Returns
        -------
        torch.Tensor
            ``(B, latent)`` embeddings.
        """
        if x.ndim != 2 or x.shape[1] != self.n_genes:
            raise InputError(f"The encoder expects (cells, {self.n_genes}) input, got {tuple(x.shape)}.")
        return self.net(x)

    def linear_layers(self) -> list[nn.Linear]:
        """The ``Linear`` layers in order (used by checkpoint import)."""
        return [m for m in self.net if isinstance(m, nn.Linear)]
