"""Where perturbed cells land: their embedding, nearest real cells and the neighbours' composition.

Control and perturbed cells are embedded with the model's encoder (no random masks; genes the
atlas lacks unobserved). When the bundle's FAISS index holds that embedding, each cell's ``k``
nearest real cells are looked up before and after the perturbation, and the shift in the
neighbours' cell-type and condition composition is reported, with map positions (the mean
layout position of the neighbours) for arrows from control to perturbed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn

from engine.build.embed import embedding_name
from engine.perturb.spec import PerturbationSpec, clamp_targets
from engine.space.index import search

if TYPE_CHECKING:  # pragma: no cover
    from engine.bundle.atlas import Atlas

MAX_LANDING_CELLS = 2000


@dataclass
class Landing:
    """Where a population's cells go under a perturbation.

    Attributes
    ----------
    composition
        One row per (``role``, ``category``): fraction of the control cells' neighbours
        (``control``), of the perturbed cells' neighbours (``perturbed``) and ``shift``.
    cells
        Atlas rows of the cells followed (a seeded subsample of at most :data:`MAX_LANDING_CELLS`).
    layout_control, layout_perturbed
        ``(cells, 2)`` map positions: the mean layout position of each cell's neighbours.
    latent_shift
        Mean Euclidean length of the embedding shift, and ``neighbour_distance`` the mean
        distance of control cells to their neighbours (the scale to read it against).
    changed_fraction
        Fraction of cells whose neighbours' majority cell type changes.
    """

    composition: pd.DataFrame
    cells: np.ndarray
    layout_control: np.ndarray
    layout_perturbed: np.ndarray
    latent_shift: float
    neighbour_distance: float
    changed_fraction: float | None


@torch.no_grad()
def embed_pair(model: nn.Module, x: torch.Tensor, missing: torch.Tensor, targets: Sequence[int],
               delta: np.ndarray, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Control and perturbed embeddings, exactly ``model.embed`` of each, sharing the first layer.

    The perturbed input differs from the control only in the (never masked) target columns,
    so its first-layer pre-activation is the control's plus ``W1[:, targets] @ delta``.
    """
    net = model.encoder.net
    was_training = model.training
    model.to(device).eval()
    try:
        pre = net[0](x.to(device).masked_fill(missing.to(device).reshape(1, -1), 0.0))
        w = net[0].weight[:, torch.as_tensor(np.asarray(targets), device=device)]
        step = torch.as_tensor(delta, dtype=torch.float32, device=device) @ w.T
        z = net[1:](torch.cat([pre, pre + step]))
    finally:
        model.train(was_training)
    z = z.cpu().numpy()
    return z[:x.shape[0]], z[x.shape[0]:]


def _fractions(values: np.ndarray) -> pd.Series:
    return pd.Series(values.ravel()).value_counts(normalize=True)


def _majority(values: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Most common category among each row's neighbours (ties: the first in factorised order)."""
    codes, uniques = pd.factorize(values)
    counts = np.zeros((neighbours.shape[0], uniques.size), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(neighbours.shape[0]), neighbours.shape[1]), codes[neighbours].ravel()), 1)
    return counts.argmax(axis=1)


def where_cells_go(atlas: Atlas, model: nn.Module, x: torch.Tensor, missing: torch.Tensor, targets: Sequence[int],
                   spec: PerturbationSpec, *, cells: np.ndarray, cap: np.ndarray | None = None,
                   level: np.ndarray | None = None, k: int = 15, seed: int = 0,
                   device: str | torch.device | None = None) -> tuple[Landing | None, str | None]:
    """Follow a population's cells into the atlas's embedding under a perturbation.

    Parameters
    ----------
    atlas
        The bundle (its index, layout and cell metadata).
    model, x, missing, targets
        The masked autoencoder, its aligned input of the population, missing genes and target columns.
    spec, cap, level
        The perturbation and its clamp settings.
    cells
        Atlas rows of ``x``.
    k
        Neighbours per cell.
    seed
        Seeds the subsample of followed cells.
    device
        ``None``: CUDA when available, else CPU.

    Returns
    -------
    landing, note
        ``(Landing, None)``, or ``(None, reason)`` when the bundle's index is not the model's embedding.
    """

    name = embedding_name(model.config.get("method", "mae"))
    indexed = atlas.manifest.index.embedding
    if indexed != name:
        return None, (f"The bundle's neighbour index is built on {indexed}, not on this model's embedding ({name}): "
                      "where the perturbed cells land is not shown. Build with `vcell build INPUT --model mae`.")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rng = np.random.default_rng([seed, 13])
    follow = np.sort(rng.choice(len(cells), MAX_LANDING_CELLS, replace=False)) if len(cells) > MAX_LANDING_CELLS \
        else np.arange(len(cells))
    x = x[torch.as_tensor(follow)]
    x_t = x[:, list(targets)].numpy().astype(np.float64)
    delta = clamp_targets(x_t, spec, cap=cap, level=level) - x_t
    z_control, z_perturbed = embed_pair(model, x, missing, targets, delta, device)
    dist, near_c = search(atlas.index, z_control, k)
    _, near_p = search(atlas.index, z_perturbed, k)
    rows = []
    changed = None
    for role in ("cell_type", "condition"):
        column = atlas.roles.get(role)
        if column is None or column not in atlas.obs.columns:
            continue
        values = atlas.obs[column].astype(str).to_numpy()
        before, after = _fractions(values[near_c]), _fractions(values[near_p])
        for category in sorted(set(before.index) | set(after.index)):
            b, a = float(before.get(category, 0.0)), float(after.get(category, 0.0))
            rows.append((role, category, b, a, a - b))
        if role == "cell_type":
            changed = float(np.mean(_majority(values, near_c) != _majority(values, near_p)))
    composition = pd.DataFrame(rows, columns=["role", "category", "control", "perturbed", "shift"])
    layout = atlas.layout
    return Landing(composition=composition, cells=np.asarray(cells)[follow],
                   layout_control=layout[near_c].mean(axis=1), layout_perturbed=layout[near_p].mean(axis=1),
                   latent_shift=float(np.linalg.norm(z_perturbed - z_control, axis=1).mean()),
                   neighbour_distance=float(np.sqrt(np.maximum(dist, 0.0)).mean()),
                   changed_fraction=changed), None
