"""Self-supervised and supervised encoders: masked autoencoders, BYOL, Barlow Twins, a classifier.

Every model is a plain ``nn.Module`` with the same surface, which the trainer and the
evaluation code rely on:

- ``.encoder``: the :class:`~engine.models.encoder.MLPEncoder` whose output is the embedding;
- ``.config``: a JSON-serialisable dict that :func:`build_model` turns back into the model;
- ``.training_loss(batch) -> {"loss": ..., <components>}``, where ``batch`` holds ``"x"``
  (log-normalised float32 ``(B, G)``) and, as needed, ``"counts"`` (raw ``(B, G)``),
  ``"library"`` (``(B,)`` total counts) and ``"label"`` (int64 ``(B,)``);
- ``.embed(x, mask=None) -> z``: the encoder in eval mode, without masking or augmentation.
  ``mask`` marks genes to treat as unobserved (set to 0), e.g. genes a new atlas lacks: a
  masked autoencoder is trained on exactly such inputs (hidden genes read 0), so for it this is
  the principled fill; for the other methods 0 is simply "not expressed".

Methods (:data:`METHODS`): ``mae`` (random masking), ``gp-mae`` (gene-programme masking),
``byol``, ``barlow`` and ``supervised`` (the same encoder trained on labels from scratch).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import InputError
from engine.models.augment import default_augmentations
from engine.models.decoders import MSEDecoder, NBDecoder, nb_loss
from engine.models.encoder import MLPEncoder
from engine.models.masking import GeneProgrammeMask, RandomMask

METHODS = ("mae", "gp-mae", "byol", "barlow", "supervised")
DECODERS = ("mse", "nb")


class _EncoderModel(nn.Module):
    """Shared parts: the encoder, its config and :meth:`embed`."""

    encoder: MLPEncoder
    config: dict[str, Any]

    def _make_encoder(self, n_genes: int, hidden: Sequence[int], latent: int, dropout: float,
                      norm: str) -> dict[str, Any]:
        self.encoder = MLPEncoder(n_genes, hidden, latent, dropout, norm)
        return {"n_genes": int(n_genes), "hidden": [int(h) for h in hidden], "latent": int(latent),
                "dropout": float(dropout), "norm": norm}

    @property
    def n_genes(self) -> int:
        """Input width."""
        return self.encoder.n_genes

    def _input(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.n_genes:
            raise InputError(f"The model expects (cells, {self.n_genes}) input, got {tuple(x.shape)}.")
        x = x.to(torch.float32)
        if not torch.isfinite(x).all():
            raise InputError("The input contains NaN or infinite values: clean or re-normalise the data first.")
        if mask is not None:
            mask = torch.as_tensor(mask, dtype=torch.bool, device=x.device)
            x = x.masked_fill(mask if mask.ndim == 2 else mask.reshape(1, -1), 0.0)
        return x

    @torch.no_grad()
    def embed(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings of ``x`` (eval mode, no masking or augmentation).

        Parameters
        ----------
        x
            ``(B, n_genes)`` log-normalised expression.
        mask
            Optional boolean ``(B, n_genes)`` or ``(n_genes,)``: genes to treat as unobserved
            (set to 0 before encoding), e.g. genes missing from the atlas.

        Returns
        -------
        torch.Tensor
            ``(B, latent)``.
        """
        was_training = self.training
        self.eval()
        try:
            return self.encoder(self._input(x, mask))
        finally:
            self.train(was_training)


class MaskedAutoencoder(_EncoderModel):
    """Masked autoencoder: hide genes, encode the rest, predict the hidden ones.

    Parameters
    ----------
    n_genes
        Input width.
    masking
        ``"random"`` or ``"programme"`` (whole gene programmes, see
        :class:`~engine.models.masking.GeneProgrammeMask`).
    programmes
        Gene column indices per programme; required for ``"programme"``.
    decoder
        ``"mse"`` (log-normalised target, unbounded output) or ``"nb"`` (negative binomial on raw
        counts; batches must carry ``"counts"``).
    mask_rate
        Fraction of genes hidden per cell.
    hidden, latent, dropout, norm
        Encoder architecture (:class:`~engine.models.encoder.MLPEncoder`).
    decoder_hidden
        Decoder hidden widths; the encoder's mirrored by default.
    output
        MSE decoder output, ``"linear"`` (default) or ``"sigmoid"`` (the paper's; for imports).
    """

    def __init__(self, n_genes: int, masking: str = "random", programmes: Sequence[Sequence[int]] | None = None,
                 decoder: str = "mse", mask_rate: float = 0.5, hidden: Sequence[int] = (512, 512, 256, 256),
                 latent: int = 64, dropout: float = 0.1, norm: str = "none",
                 decoder_hidden: Sequence[int] | None = None, output: str = "linear"):
        super().__init__()
        if masking not in ("random", "programme"):
            raise InputError(f"Unknown masking '{masking}': use random or programme.")
        if decoder not in DECODERS:
            raise InputError(f"Unknown decoder '{decoder}': use one of {', '.join(DECODERS)}.")
        enc = self._make_encoder(n_genes, hidden, latent, dropout, norm)
        decoder_hidden = tuple(reversed(tuple(hidden))) if decoder_hidden is None else tuple(decoder_hidden)
        if masking == "programme":
            if not programmes:
                raise InputError("Gene-programme masking needs programmes: give a gene-set file or learn them "
                                 "from co-expression.")
            programmes = [sorted(int(g) for g in np.asarray(p).ravel()) for p in programmes]
            self.masker: RandomMask | GeneProgrammeMask = GeneProgrammeMask(
                [np.asarray(p, dtype=np.int64) for p in programmes], mask_rate)
            self.masker.membership(int(n_genes))  # validates indices now, not at the first batch
        else:
            programmes = None
            self.masker = RandomMask(mask_rate)
        if decoder == "nb":
            if output != "linear":
                raise InputError("The negative-binomial decoder has no output activation: leave output='linear'.")
            self.decoder: MSEDecoder | NBDecoder = NBDecoder(latent, n_genes, decoder_hidden, dropout, norm)
        else:
            self.decoder = MSEDecoder(latent, n_genes, decoder_hidden, dropout, norm, output)
        self.config = {"method": "gp-mae" if masking == "programme" else "mae", **enc, "masking": masking,
                       "mask_rate": float(mask_rate), "decoder": decoder,
                       "decoder_hidden": [int(h) for h in decoder_hidden], "output": output,
                       "programmes": programmes}

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Log-normalised expression predicted from embeddings ``z`` (``(B, n_genes)``).

        For the NB decoder this is ``log1p(expected proportion * 1e4)``.
        """
        if isinstance(self.decoder, NBDecoder):
            return self.decoder.log_normalised(z)
        return self.decoder(z)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Eval-mode reconstruction ``decode(encode(x with masked genes set to 0))``, log-normalised."""
        was_training = self.training
        self.eval()
        try:
            return self.decode(self.encoder(self._input(x, mask)))
        finally:
            self.train(was_training)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Masked reconstruction loss on the hidden genes only.

        Returns ``loss`` (MSE on log-normalised values, or NB negative log-likelihood of the
        counts), ``mse_masked`` (log-scale MSE on the hidden genes, for logging either way) and
        ``mask_fraction``.
        """
        x = self._input(batch["x"])
        mask = self.masker(x.shape[0], x.shape[1], device=x.device)
        z = self.encoder(x.masked_fill(mask, 0.0))
        if isinstance(self.decoder, NBDecoder):
            if "counts" not in batch:
                raise InputError("The negative-binomial decoder needs raw counts in every batch ('counts').")
            counts = batch["counts"].to(x.device, torch.float32)
            library = batch["library"].to(x.device) if "library" in batch else counts.sum(dim=1)
            mu, theta = self.decoder(z, library)
            loss = nb_loss(counts, mu, theta, mask)
            with torch.no_grad():
                mse = ((self.decoder.log_normalised(z) - x)[mask] ** 2).mean()
        else:
            x_hat = self.decoder(z)
            loss = ((x_hat - x)[mask] ** 2).mean()
            mse = loss.detach()
        return {"loss": loss, "mse_masked": mse, "mask_fraction": mask.float().mean()}


def _projector(latent: int, hidden: int, out: int) -> nn.Sequential:
    """``Linear → BatchNorm → ReLU → Linear``, the usual BYOL/Barlow projection head."""
    return nn.Sequential(nn.Linear(latent, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out))


class _Contrastive(_EncoderModel):
    """Two augmented views of each cell, from :func:`~engine.models.augment.default_augmentations`."""

    def _setup_augment(self, mask_rate: float, noise_sigma: float, nb_theta: float) -> dict[str, Any]:
        self.augment_counts = default_augmentations(mask_rate, noise_sigma, nb_theta, counts=True)
        self.augment_plain = default_augmentations(mask_rate, noise_sigma, nb_theta, counts=False)
        return {"mask_rate": float(mask_rate), "noise_sigma": float(noise_sigma), "nb_theta": float(nb_theta)}

    def views(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Two independently augmented copies of ``batch["x"]``."""
        view = {"x": self._input(batch["x"])}
        augment = self.augment_plain
        if "counts" in batch:
            view["counts"] = batch["counts"].to(view["x"].device)
            augment = self.augment_counts
        return augment(view, generator)["x"], augment(view, generator)["x"]


class BYOL(_Contrastive):
    """Bootstrap Your Own Latent: an online network predicts a slowly moving target's projection.

    The target encoder and projector are exponential moving averages of the online ones
    (``target ← tau * target + (1 - tau) * online``). :meth:`training_loss` first updates the
    target from the current online weights (which carry the previous optimiser step), so a plain
    ``loss.backward(); optimiser.step()`` loop needs no extra call; :meth:`update_target` is
    public for loops that prefer to call it after each step.

    Parameters
    ----------
    n_genes, hidden, latent, dropout, norm
        Encoder architecture.
    projection_hidden, projection
        Projector (and predictor) widths.
    tau
        EMA momentum of the target network.
    mask_rate, noise_sigma, nb_theta
        Augmentations (see :func:`~engine.models.augment.default_augmentations`).
    """

    def __init__(self, n_genes: int, hidden: Sequence[int] = (512, 512, 256, 256), latent: int = 64,
                 dropout: float = 0.1, norm: str = "none", projection_hidden: int = 256, projection: int = 64,
                 tau: float = 0.99, mask_rate: float = 0.5, noise_sigma: float = 0.2, nb_theta: float = 10.0):
        super().__init__()
        if not 0.0 <= tau < 1.0:
            raise InputError(f"The BYOL momentum tau must be in [0, 1), not {tau}.")
        enc = self._make_encoder(n_genes, hidden, latent, dropout, norm)
        self.projector = _projector(latent, projection_hidden, projection)
        self.predictor = _projector(projection, projection_hidden, projection)
        self.target_encoder = copy.deepcopy(self.encoder)
        self.target_projector = copy.deepcopy(self.projector)
        for p in [*self.target_encoder.parameters(), *self.target_projector.parameters()]:
            p.requires_grad_(False)
        self.tau = float(tau)
        aug = self._setup_augment(mask_rate, noise_sigma, nb_theta)
        self.config = {"method": "byol", **enc, "projection_hidden": int(projection_hidden),
                       "projection": int(projection), "tau": self.tau, **aug}

    @torch.no_grad()
    def update_target(self) -> None:
        """One EMA step of the target encoder and projector towards the online ones."""
        for online, target in ((self.encoder, self.target_encoder), (self.projector, self.target_projector)):
            for po, pt in zip(online.parameters(), target.parameters()):
                pt.mul_(self.tau).add_(po.detach(), alpha=1.0 - self.tau)
            for bo, bt in zip(online.buffers(), target.buffers()):
                bt.copy_(bo)

    def training_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Symmetric BYOL loss ``2 - 2 cos(prediction, target projection)``, averaged over both views."""
        if self.training:
            self.update_target()
        v1, v2 = self.views(batch)
        p1 = self.predictor(self.projector(self.encoder(v1)))
        p2 = self.predictor(self.projector(self.encoder(v2)))
        with torch.no_grad():
            t1 = self.target_projector(self.target_encoder(v1))
            t2 = self.target_projector(self.target_encoder(v2))
        loss = ((2 - 2 * F.cosine_similarity(p1, t2, dim=-1)).mean()
                + (2 - 2 * F.cosine_similarity(p2, t1, dim=-1)).mean()) / 2
        return {"loss": loss}


def barlow_loss(z1: torch.Tensor, z2: torch.Tensor, lambda_offdiag: float = 5e-3) -> tuple[torch.Tensor, ...]:
    """Barlow Twins loss between two batches of projections.

    Each feature is standardised over the batch; ``C = z1ᵀ z2 / B`` is the cross-correlation
    matrix. Loss = ``Σ_i (1 - C_ii)² + lambda_offdiag Σ_{i≠j} C_ij²``.

    Returns
    -------
    loss, on_diagonal, off_diagonal
        Scalars.
    """
    n = z1.shape[0]
    if n < 2:
        raise InputError("Barlow Twins needs at least 2 cells per batch.")
    z1 = (z1 - z1.mean(0)) / (z1.std(0, unbiased=False) + 1e-6)
    z2 = (z2 - z2.mean(0)) / (z2.std(0, unbiased=False) + 1e-6)
    c = z1.T @ z2 / n
    on = ((1 - torch.diagonal(c)) ** 2).sum()
    off = (c ** 2).sum() - (torch.diagonal(c) ** 2).sum()
    return on + lambda_offdiag * off, on, off


class BarlowTwins(_Contrastive):
    """Barlow Twins: make the two views' projections correlate feature by feature and decorrelate across.

    Parameters
    ----------
    n_genes, hidden, latent, dropout, norm
        Encoder architecture.
    projection_hidden, projection
        Projector widths.
    lambda_offdiag
        Weight of the off-diagonal (redundancy) term.
    mask_rate, noise_sigma, nb_theta
        Augmentations (see :func:`~engine.models.augment.default_augmentations`).
    """

    def __init__(self, n_genes: int, hidden: Sequence[int] = (512, 512, 256, 256), latent: int = 64,
                 dropout: float = 0.1, norm: str = "none", projection_hidden: int = 512, projection: int = 512,
                 lambda_offdiag: float = 5e-3, mask_rate: float = 0.5, noise_sigma: float = 0.2,
                 nb_theta: float = 10.0):
        super().__init__()
        enc = self._make_encoder(n_genes, hidden, latent, dropout, norm)
        self.projector = _projector(latent, projection_hidden, projection)
        self.lambda_offdiag = float(lambda_offdiag)
        aug = self._setup_augment(mask_rate, noise_sigma, nb_theta)
        self.config = {"method": "barlow", **enc, "projection_hidden": int(projection_hidden),
                       "projection": int(projection), "lambda_offdiag": self.lambda_offdiag, **aug}

    def training_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Barlow Twins loss of two augmented views (see :func:`barlow_loss`)."""
        v1, v2 = self.views(batch)
        loss, on, off = barlow_loss(self.projector(self.encoder(v1)), self.projector(self.encoder(v2)),
                                    self.lambda_offdiag)
        return {"loss": loss, "on_diagonal": on.detach(), "off_diagonal": off.detach()}


class ClassifierHead(nn.Module):
    """Linear cell-type classifier on embeddings, for fine-tuning or probing.

    Parameters
    ----------
    latent
        Embedding width.
    n_classes
        Number of cell types.
    dropout
        Dropout on the embedding before the linear layer.
    """

    def __init__(self, latent: int, n_classes: int, dropout: float = 0.0):
        super().__init__()
        if int(n_classes) < 2:
            raise InputError(f"A classifier needs at least 2 classes, got {n_classes}.")
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(int(latent), int(n_classes))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, latent)`` → ``(B, n_classes)`` logits."""
        return self.linear(self.dropout(z))


class SupervisedClassifier(_EncoderModel):
    """The same encoder plus a :class:`ClassifierHead`, trained from scratch on cell-type labels.

    Parameters
    ----------
    n_genes, hidden, latent, dropout, norm
        Encoder architecture.
    n_classes
        Number of cell types; ``batch["label"]`` holds integers in ``[0, n_classes)``.
    """

    def __init__(self, n_genes: int, n_classes: int, hidden: Sequence[int] = (512, 512, 256, 256),
                 latent: int = 64, dropout: float = 0.1, norm: str = "none"):
        super().__init__()
        enc = self._make_encoder(n_genes, hidden, latent, dropout, norm)
        self.head = ClassifierHead(latent, n_classes)
        self.config = {"method": "supervised", **enc, "n_classes": int(n_classes)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_classes)``."""
        return self.head(self.encoder(self._input(x)))

    def training_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Cross-entropy on ``batch["label"]``, plus the batch accuracy."""
        if "label" not in batch:
            raise InputError("Supervised training needs cell-type labels in every batch ('label').")
        logits = self(batch["x"])
        label = batch["label"].to(logits.device, torch.int64)
        loss = F.cross_entropy(logits, label)
        return {"loss": loss, "accuracy": (logits.argmax(1) == label).float().mean()}


_CLASSES: dict[str, type[nn.Module]] = {"mae": MaskedAutoencoder, "gp-mae": MaskedAutoencoder, "byol": BYOL,
                                        "barlow": BarlowTwins, "supervised": SupervisedClassifier}


def config_keys(method: str) -> set[str]:
    """Constructor arguments :func:`build_model` accepts for ``method`` (besides ``n_genes``)."""
    if method not in _CLASSES:
        raise InputError(f"Unknown method '{method}': use one of {', '.join(METHODS)}.")
    return set(inspect.signature(_CLASSES[method]).parameters) - {"n_genes"}


def build_model(method: str, n_genes: int, **config: Any) -> nn.Module:
    """Build a model by method name.

    Parameters
    ----------
    method
        One of :data:`METHODS`.
    n_genes
        Input width.
    **config
        Constructor arguments of the class (``hidden``, ``latent``, ``mask_rate``, ...). A
        model's ``config`` rebuilds it as ``build_model(**model.config)``.

    Returns
    -------
    torch.nn.Module
        :class:`MaskedAutoencoder` (``mae``: random masking; ``gp-mae``: programme masking, needs
        ``programmes``), :class:`BYOL`, :class:`BarlowTwins` or :class:`SupervisedClassifier`
        (needs ``n_classes``).
    """
    keys = config_keys(method)
    config = dict(config)
    unknown = sorted(set(config) - keys)
    if unknown:
        raise InputError(f"Method '{method}' has no setting {', '.join(repr(k) for k in unknown)}: "
                         f"use {', '.join(sorted(keys))}.")
    if method in ("mae", "gp-mae"):
        masking = "programme" if method == "gp-mae" else "random"
        if config.setdefault("masking", masking) != masking:
            raise InputError(f"Method '{method}' uses {masking} masking, not {config['masking']}.")
    if method == "supervised" and "n_classes" not in config:
        raise InputError("The supervised classifier needs n_classes.")
    return _CLASSES[method](int(n_genes), **config)
