"""Pretraining an encoder on a bundle's cells.

:func:`pretrain` picks the bundle's genes and cells, holds out whole donors for validation, takes
cell-type labels for the supervised baseline, and trains with :func:`engine.models.train.train_model`
(streamed from the bundle's store, best checkpoint kept, resumable) into ``out/model``. Several
processes (DDP) work under ``torchrun``::

    torchrun --standalone --nproc_per_node=2 -m engine.build.pretrain BUNDLE --method mae --epochs 2 --out RUN
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from engine.build.model_genes import resolve_genes
from engine.bundle.atlas import Atlas, read_atlas
from engine.data.loader import split_by_donor
from engine.errors import InputError
from engine.models.train import check_training, train_model
from engine.progress import Progress, report

__all__ = ["pretrain", "cell_type_labels"]


def cell_type_labels(atlas: Atlas) -> np.ndarray:
    """Integer cell-type code of every cell, for the supervised baseline.

    Parameters
    ----------
    atlas
        The bundle; its cell-type role names the column.

    Returns
    -------
    numpy.ndarray
        int64 codes, one per cell, in the column's category order.
    """
    key = atlas.roles.get("cell_type")
    if key is None:
        raise InputError("Supervised training needs cell-type labels, and this atlas has none.")
    codes = atlas.obs[key].astype("category").cat.codes.to_numpy()
    if (codes < 0).any():
        raise InputError(f"Some cells have no '{key}' label: supervised training needs every cell labelled.")
    return codes.astype(np.int64)


def pretrain(bundle_or_atlas: str | os.PathLike | Atlas, method: str, *, genes: str | Sequence = "hvg",
             epochs: int = 10, batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 1e-2, seed: int = 0,
             out: str | os.PathLike, resume: bool = True, devices: Any = "auto", strategy: Any = "auto",
             accelerator: str = "auto", val_fraction: float = 0.2, max_cells: int | None = None,
             cells: np.ndarray | None = None, num_workers: int | None = None, progress: Progress | None = None,
             progress_bar: bool = False, callbacks: Sequence[L.Callback] = (), **model_config) -> Path:
    """Pretrain an encoder on a bundle and write it to ``out/model``.

    Parameters
    ----------
    bundle_or_atlas
        A bundle path or an :class:`~engine.bundle.atlas.Atlas`.
    method
        ``mae``, ``gp-mae``, ``byol``, ``barlow`` or ``supervised`` (see :func:`engine.models.ssl.build_model`).
    genes
        ``"hvg"`` (default), ``"all"``, or a list of gene ids / symbols / positions.
    epochs, batch_size, lr, weight_decay, seed
        Training settings; a fixed seed reproduces the run (on the same device and process count).
    out
        Run directory: ``lightning/`` (Lightning's checkpoints, for resuming), ``model/`` (ours).
    resume
        Continue from ``out/lightning/last.ckpt`` when it exists; ``False`` starts afresh.
    devices, strategy, accelerator
        Passed to :class:`lightning.Trainer` (``"auto"`` picks a GPU when present). Under
        ``torchrun`` the process count comes from torchrun.
    val_fraction
        Fraction of cells held out for validation, as whole donors (:func:`~engine.data.loader.split_by_donor`).
    max_cells
        Train on a seeded random subset of this many cells.
    cells
        Train (and validate) only on these atlas rows, e.g. all but a held-out population;
        ``max_cells`` then subsamples them.
    num_workers
        DataLoader worker processes per rank; ``None``: 0 on CPU, up to 4 with a GPU.
    progress, progress_bar
        An engine progress callback; Lightning's tqdm bar (for the CLI).
    callbacks
        Further Lightning callbacks.
    **model_config
        Settings of the model (``hidden``, ``latent``, ``mask_rate``, ...).

    Returns
    -------
    pathlib.Path
        ``out/model``, the checkpoint directory (written by rank 0 only).
    """
    check_training(method, epochs, batch_size)  # before any work
    atlas = bundle_or_atlas if isinstance(bundle_or_atlas, Atlas) else read_atlas(bundle_or_atlas)
    report(progress, 0.0, "preparing data")
    gene_pos = resolve_genes(atlas, genes)
    if cells is not None:
        cells = np.unique(np.asarray(cells, dtype=np.int64))
        if cells.size < 2 or cells[0] < 0 or cells[-1] >= atlas.n_cells:
            raise InputError(f"cells must name at least two rows of the atlas's {atlas.n_cells:,} cells.")
    pool = np.arange(atlas.n_cells) if cells is None else cells
    if max_cells is not None and max_cells < pool.size:
        cells = np.sort(np.random.default_rng(seed).choice(pool, int(max_cells), replace=False))
    split = split_by_donor(atlas.obs, atlas.roles.get("donor"), val_fraction, seed=seed, cells=cells)
    labels = cell_type_labels(atlas) if method == "supervised" else None
    return train_model(atlas.store, method, gene_pos, [str(g) for g in atlas.var.index[gene_pos]], split, out=out,
                       labels=labels, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                       seed=seed, resume=resume, devices=devices, strategy=strategy, accelerator=accelerator,
                       num_workers=num_workers, progress=progress, progress_bar=progress_bar, callbacks=callbacks,
                       record={"source": str(atlas.path)}, **model_config)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m engine.build.pretrain BUNDLE --method mae --epochs 2 --out RUN`` (works under torchrun).

    Parameters
    ----------
    argv
        Command-line arguments; ``None``: ``sys.argv[1:]``.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--method", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--genes", default="hvg")
    parser.add_argument("--max-cells", type=int, default=None)
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("--config", default="{}", help="model settings as JSON, e.g. '{\"hidden\": [64]}'")
    args = parser.parse_args(argv)
    path = pretrain(args.bundle, args.method, genes=args.genes, epochs=args.epochs, batch_size=args.batch_size,
                    lr=args.lr, seed=args.seed, out=args.out, resume=not args.no_resume, max_cells=args.max_cells,
                    progress_bar=True, **json.loads(args.config))
    if int(os.environ.get("RANK", 0)) == 0:
        print(path)


if __name__ == "__main__":
    main()
