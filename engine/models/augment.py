"""Count-aware augmentations for contrastive learning (BYOL, Barlow Twins).

An augmentation takes a *view*, a dict with ``"x"`` (log-normalised ``(B, G)``) and optionally
``"counts"`` (raw ``(B, G)``), and returns a new view; the input is never modified. Each one
applies to a random subset of cells (probability ``p`` per cell). All randomness comes from the
``torch.Generator`` passed in, so the same seed gives the same views.

- :class:`MaskGenes`: dropout of random genes (set to 0 in both ``x`` and ``counts``), the
  augmentation that mimics technical dropout.
- :class:`GaussianNoise`: additive noise on the log scale, clipped at 0.
- :class:`NegBinomialResample`: draws new counts from a negative binomial centred on the
  observed counts (a gamma-Poisson mixture) and re-log-normalises them, i.e. resampling noise of
  the kind sequencing itself adds. Needs raw counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.errors import InputError
from engine.models.decoders import TARGET_SUM

View = dict[str, torch.Tensor]


def _rows(view: View, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Boolean ``(B, 1)``: which cells this augmentation touches."""
    x = view["x"]
    draw = torch.rand(x.shape[0], 1, generator=generator, device=generator.device if generator else None)
    return (draw < p).to(x.device)


def _rand(shape: torch.Size, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=generator.device if generator else None).to(like.device)


def _check_p(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise InputError(f"An augmentation probability must be in [0, 1], not {p}.")
    return float(p)


class MaskGenes:
    """Set a random fraction ``rate`` of genes to 0 (per cell, in ``x`` and ``counts``).

    Parameters
    ----------
    rate
        Probability that each gene is dropped.
    p
        Probability that a cell is augmented at all.
    """

    def __init__(self, rate: float = 0.5, p: float = 1.0):
        if not 0.0 <= rate < 1.0:
            raise InputError(f"The gene dropout rate must be in [0, 1), not {rate}.")
        self.rate, self.p = float(rate), _check_p(p)

    def __call__(self, view: View, generator: torch.Generator | None = None) -> View:
        x = view["x"]
        drop = (_rand(x.shape, x, generator) < self.rate) & _rows(view, self.p, generator)
        out = dict(view, x=x.masked_fill(drop, 0.0))
        if "counts" in view:
            out["counts"] = view["counts"].masked_fill(drop, 0)
        return out


class GaussianNoise:
    """Add ``N(0, sigma²)`` noise to ``x`` (log scale), clipped at 0; counts are left as they are.

    Parameters
    ----------
    sigma
        Noise standard deviation on the log1p scale.
    p
        Probability that a cell is augmented.
    """

    def __init__(self, sigma: float = 0.2, p: float = 0.5):
        if sigma < 0:
            raise InputError(f"The noise level must be 0 or more, not {sigma}.")
        self.sigma, self.p = float(sigma), _check_p(p)

    def __call__(self, view: View, generator: torch.Generator | None = None) -> View:
        x = view["x"]
        noise = torch.randn(x.shape, generator=generator,
                            device=generator.device if generator else None).to(x.device, x.dtype)
        noisy = (x + self.sigma * noise).clamp_min(0.0)
        return dict(view, x=torch.where(_rows(view, self.p, generator), noisy, x))


class NegBinomialResample:
    """Resample counts from ``NB(mean=counts, inverse dispersion=theta)`` and re-normalise ``x``.

    ``x`` becomes ``log1p(new / new.sum() * 1e4)`` for augmented cells; cells whose resampled
    library is 0 keep their original values.

    Parameters
    ----------
    theta
        Inverse dispersion: large values give Poisson-like, small values noisier resamples.
    p
        Probability that a cell is augmented.
    """

    def __init__(self, theta: float = 10.0, p: float = 0.5):
        if theta <= 0:
            raise InputError(f"The negative-binomial theta must be positive, not {theta}.")
        self.theta, self.p = float(theta), _check_p(p)

    def __call__(self, view: View, generator: torch.Generator | None = None) -> View:
        if "counts" not in view:
            raise InputError("Negative-binomial resampling needs raw counts in the batch ('counts').")
        counts = view["counts"].to(torch.float32)
        where = generator.device if generator else None
        mean = counts.to(where) if where is not None else counts
        # Gamma(theta, scale=mean/theta) then Poisson: a negative binomial with the given mean.
        rate = torch._standard_gamma(torch.full_like(mean, self.theta), generator=generator) * (mean / self.theta)
        new = torch.poisson(rate, generator=generator).to(counts.device)
        library = new.sum(dim=1, keepdim=True)
        x_new = torch.log1p(new / library.clamp_min(1.0) * TARGET_SUM).to(view["x"].dtype)
        use = _rows(view, self.p, generator) & (library > 0)
        return dict(view, x=torch.where(use, x_new, view["x"]),
                    counts=torch.where(use, new, counts).to(view["counts"].dtype))


class Compose:
    """Apply augmentations in order.

    Parameters
    ----------
    augmentations
        Callables ``(view, generator) -> view``.
    """

    def __init__(self, augmentations: Sequence):
        self.augmentations = list(augmentations)

    def __call__(self, view: View, generator: torch.Generator | None = None) -> View:
        for aug in self.augmentations:
            view = aug(view, generator)
        return view


def default_augmentations(mask_rate: float = 0.5, noise_sigma: float = 0.2, nb_theta: float = 10.0,
                          counts: bool = True) -> Compose:
    """The contrastive default: NB resampling (when counts exist), gene dropout, Gaussian noise.

    Parameters
    ----------
    mask_rate
        Gene dropout rate (applied to every cell).
    noise_sigma
        Gaussian noise level (half of the cells).
    nb_theta
        Negative-binomial inverse dispersion (half of the cells); 0 or ``counts=False`` skips it.
    counts
        Whether batches carry raw counts.
    """
    augs: list = []
    if counts and nb_theta > 0:
        augs.append(NegBinomialResample(nb_theta, p=0.5))
    if mask_rate > 0:
        augs.append(MaskGenes(mask_rate, p=1.0))
    if noise_sigma > 0:
        augs.append(GaussianNoise(noise_sigma, p=0.5))
    return Compose(augs)
