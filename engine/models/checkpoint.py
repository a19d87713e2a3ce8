"""Model checkpoints: ``config.json`` + ``weights.safetensors`` + ``genes.txt``.

One format for every model in a bundle's ``model/`` directory (PCA now, the masked and
contrastive encoders later). Loading never unpickles anything: weights are safetensors,
the config is JSON, genes are plain text.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import BundleError
from engine.fileio import atomic_path, write_json

FORMAT = "vcell-model"
VERSION = 1


@dataclass
class Checkpoint:
    """A model's configuration, named weight arrays and ordered gene list."""

    config: dict[str, Any]
    weights: dict[str, np.ndarray]
    genes: list[str] = field(default_factory=list)


def save_checkpoint(path: str | os.PathLike, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` into directory ``path`` (created; each file written atomically)."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {"format": FORMAT, "version": VERSION, **checkpoint.config}
    with atomic_path(path / "weights.safetensors") as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in checkpoint.weights.items()}, str(tmp))
    with atomic_path(path / "genes.txt") as tmp:
        tmp.write_text("\n".join(checkpoint.genes) + "\n")
    write_json(path / "config.json", config)
    return path


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint directory written by :func:`save_checkpoint`."""
    from safetensors.numpy import load_file

    path = Path(path)
    missing = [n for n in ("config.json", "weights.safetensors", "genes.txt") if not (path / n).exists()]
    if missing:
        raise BundleError(f"The model checkpoint at {path} lacks {', '.join(missing)}: rebuild or re-export it.")
    try:
        config = json.loads((path / "config.json").read_text())
        weights = load_file(str(path / "weights.safetensors"))
    except Exception as exc:  # corrupt JSON or safetensors header
        raise BundleError(f"The model checkpoint at {path} is corrupt ({exc}): rebuild it.") from exc
    if config.get("format") != FORMAT:
        raise BundleError(f"{path} is not a vcell model checkpoint (format {config.get('format')!r}).")
    if config.get("version", 0) > VERSION:
        raise BundleError(f"The checkpoint at {path} has version {config['version']}, newer than this engine "
                          f"reads ({VERSION}): upgrade virtual-cell-explorer.")
    genes = [g for g in (path / "genes.txt").read_text().splitlines() if g]
    return Checkpoint(config=config, weights=weights, genes=genes)
