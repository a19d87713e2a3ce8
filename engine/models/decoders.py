"""Decoders from the latent space back to genes, and the negative-binomial likelihood.

:class:`MSEDecoder` predicts log-normalised expression with an unbounded output by default:
the paper ends its decoder in a sigmoid, which cannot exceed 1 although log1p-normalised
values routinely do (``log1p(10_000 * 5 / 2_000) ≈ 3.2``). The sigmoid stays available
(``output="sigmoid"``) so imported checkpoints reproduce the paper's outputs.

:class:`NBDecoder` is count-aware: it predicts each cell's expression proportions (softmax),
scales them by the cell's library size to a negative-binomial mean, and learns one inverse
dispersion per gene; :func:`nb_loss` is the matching negative log-likelihood.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from engine.errors import InputError
from engine.models.encoder import mlp_layers

OUTPUTS = ("linear", "sigmoid")
TARGET_SUM = 1e4  # the log-normalisation every atlas uses: log1p(counts / total * 1e4)


class MSEDecoder(nn.Module):
    """MLP decoder predicting log-normalised expression.

    Parameters
    ----------
    latent
        Embedding width.
    n_genes
        Output width.
    hidden
        Hidden widths (the encoder's, mirrored, by default); may be empty.
    dropout
        Dropout after each hidden block.
    norm
        ``"none"``, ``"layer"`` or ``"batch"`` (see :func:`~engine.models.encoder.mlp_layers`).
    output
        ``"linear"`` (unbounded; default) or ``"sigmoid"`` (the paper's, for imports).
    """

    def __init__(self, latent: int, n_genes: int, hidden: Sequence[int] = (256, 256, 512, 512),
                 dropout: float = 0.1, norm: str = "none", output: str = "linear"):
        super().__init__()
        if output not in OUTPUTS:
            raise InputError(f"Unknown decoder output '{output}': use one of {', '.join(OUTPUTS)}.")
        self.output = output
        self.net = nn.Sequential(*mlp_layers(latent, tuple(hidden), n_genes, dropout, norm))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, latent)`` → ``(B, n_genes)`` log-normalised expression."""
        out = self.net(z)
        return torch.sigmoid(out) if self.output == "sigmoid" else out

    def linear_layers(self) -> list[nn.Linear]:
        """The ``Linear`` layers in order (used by checkpoint import)."""
        return [m for m in self.net if isinstance(m, nn.Linear)]


class NBDecoder(nn.Module):
    """Negative-binomial decoder: per-cell proportions × library size, per-gene dispersion.

    Parameters
    ----------
    latent, n_genes, hidden, dropout, norm
        As for :class:`MSEDecoder`.
    """

    def __init__(self, latent: int, n_genes: int, hidden: Sequence[int] = (256, 256, 512, 512),
                 dropout: float = 0.1, norm: str = "none"):
        super().__init__()
        self.net = nn.Sequential(*mlp_layers(latent, tuple(hidden), n_genes, dropout, norm))
        self.log_theta = nn.Parameter(torch.zeros(int(n_genes)))

    def proportions(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, n_genes)`` expected fraction of each cell's counts per gene (rows sum to 1)."""
        return torch.softmax(self.net(z), dim=-1)

    def forward(self, z: torch.Tensor, library: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Negative-binomial parameters.

        Parameters
        ----------
        z
            ``(B, latent)`` embeddings.
        library
            ``(B,)`` total counts per cell.

        Returns
        -------
        mu, theta
            ``(B, n_genes)`` means and ``(n_genes,)`` inverse dispersions (both positive).
        """
        mu = self.proportions(z) * library.reshape(-1, 1).to(z.dtype)
        return mu, torch.exp(self.log_theta)

    def log_normalised(self, z: torch.Tensor) -> torch.Tensor:
        """Expected expression on the log-normalised scale, ``log1p(proportion * 1e4)``."""
        return torch.log1p(self.proportions(z) * TARGET_SUM)


def nb_loss(counts: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, mask: torch.Tensor | None = None,
            eps: float = 1e-8) -> torch.Tensor:
    """Mean negative-binomial negative log-likelihood.

    ``-log NB(x; mu, theta) = -[lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)
    + theta log(theta / (theta + mu)) + x log(mu / (theta + mu))]``.

    Parameters
    ----------
    counts
        ``(B, G)`` observed raw counts.
    mu
        ``(B, G)`` means.
    theta
        Inverse dispersions, ``(G,)`` or broadcastable to ``(B, G)``.
    mask
        Optional boolean ``(B, G)``: average over the ``True`` entries only (the masked genes).
    eps
        Guard inside the logarithms.

    Returns
    -------
    torch.Tensor
        Scalar loss.
    """
    counts = counts.to(mu.dtype)
    theta = theta.to(mu.dtype).expand_as(mu)
    log_theta_mu = torch.log(theta + mu + eps)
    # theta * log(theta / (theta + mu)) written as -theta * log1p(mu / theta): exact for large theta too
    log_lik = (torch.lgamma(counts + theta) - torch.lgamma(theta) - torch.lgamma(counts + 1)
               - theta * torch.log1p(mu / (theta + eps)) + counts * (torch.log(mu + eps) - log_theta_mu))
    if mask is None:
        return -log_lik.mean()
    if not mask.any():
        return log_lik.sum() * 0.0
    return -log_lik[mask].mean()
