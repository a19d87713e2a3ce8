"""``vcell pretrain``, ``embed`` and ``evaluate``: learned embeddings of a bundle and their quality."""

from __future__ import annotations

import argparse

from engine.build.embed import add_embedding
from engine.build.pretrain import pretrain
from engine.bundle.atlas import read_atlas
from engine.errors import InputError
from engine.evaluate.metrics import summarise
from engine.evaluate.suite import evaluate_bundle, save_evaluation
from engine.progress import TqdmProgress


def add_pretrain(p: argparse.ArgumentParser) -> None:
    """Options of ``vcell pretrain``."""
    p.add_argument("bundle", help="a bundle (build one from .h5ad / SOMA with `vcell build` first)")
    p.add_argument("--method", required=True, help="mae, gp-mae, byol, barlow or supervised")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-cells", type=int, default=None, help="train on a seeded subset of cells")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUT has a last checkpoint")
    p.add_argument("--out", required=True, help="run directory; the model is written to OUT/model")
    p.set_defaults(handler=run_pretrain)


def run_pretrain(args: argparse.Namespace) -> int:
    """Pretrain an encoder into ``OUT/model``."""
    model = pretrain(args.bundle, args.method, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                     max_cells=args.max_cells, seed=args.seed, out=args.out, resume=not args.no_resume,
                     progress_bar=True)
    print(f"model written to {model}; use it with: vcell embed BUNDLE --model {model}")
    return 0


def add_embed(p: argparse.ArgumentParser) -> None:
    """Options of ``vcell embed``."""
    p.add_argument("bundle")
    p.add_argument("--model", required=True, help="model checkpoint directory (e.g. RUN/model from vcell pretrain)")
    p.set_defaults(handler=run_embed)


def run_embed(args: argparse.Namespace) -> int:
    """Add a saved model's embedding to a bundle."""
    with TqdmProgress("embed") as progress:
        name = add_embedding(args.bundle, args.model, progress=progress)
    print(f"{name} added to {args.bundle}; compare it with: vcell evaluate {args.bundle}")
    return 0


def add_evaluate(p: argparse.ArgumentParser) -> None:
    """Options of ``vcell evaluate``."""
    p.add_argument("bundle")
    p.add_argument("--embeddings", default=None, help="comma-separated embeddings (default: all in the bundle)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (donor splits)")
    p.add_argument("--metric", choices=["l2", "cosine"], default="cosine", help="kNN metric")
    p.add_argument("-k", type=int, default=15, help="neighbours for the zero-shot kNN vote")
    p.add_argument("--epochs", type=int, default=20, help="training epochs of the supervised baseline and fine-tuning")
    p.add_argument("--no-supervised", action="store_true", help="skip the supervised-from-scratch baseline")
    p.add_argument("--finetune", action="append", default=[], metavar="NAME=CHECKPOINT",
                   help="fine-tune this checkpoint's encoder as method NAME (repeatable)")
    p.add_argument("--reconstruct", action="append", default=[], metavar="NAME=CHECKPOINT",
                   help="score this masked autoencoder's reconstruction of hidden genes of held-out cells as method "
                        "NAME, frozen (repeatable; --finetune checkpoints that can reconstruct are scored too)")
    p.add_argument("--hidden-fraction", type=float, default=0.5, help="share of genes hidden per cell to reconstruct")
    p.add_argument("--label-fraction", type=float, default=1.0,
                   help="share of reference cells (per cell type) whose labels may be used: a low-label regime")
    p.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a bundle's embeddings and store the tables in BUNDLE/evaluation/."""
    atlas = read_atlas(args.bundle)
    names = args.embeddings.split(",") if args.embeddings else list(atlas.manifest.embedding.available)
    checkpoints = {option: _checkpoints(option, getattr(args, option)) for option in ("finetune", "reconstruct")}
    results = evaluate_bundle(atlas, embeddings=names, seeds=tuple(range(args.seeds)), k=args.k, metric=args.metric,
                              supervised=not args.no_supervised, epochs=args.epochs, **checkpoints,
                              hidden_fraction=args.hidden_fraction, label_fraction=args.label_fraction)
    save_evaluation(atlas.path / "evaluation", results)
    for note in results.notes:
        print(f"note: {note}")
    summary = summarise(results.table)
    print(summary[[c for c in summary.columns if not c.endswith(("_mean", "_sd"))]].to_string(index=False))
    print(f"written to {atlas.path / 'evaluation'}; the dashboard's Model page shows it")
    return 0


def _checkpoints(option: str, items: list[str]) -> dict[str, str] | None:
    """``--finetune`` / ``--reconstruct`` items ``NAME=CHECKPOINT`` as a dict (``None`` when none)."""
    if any("=" not in item for item in items):
        raise InputError(f"--{option} takes NAME=CHECKPOINT, e.g. --{option} X_mae=run/model.")
    return dict(item.split("=", 1) for item in items) or None


COMMANDS = {"pretrain": add_pretrain, "embed": add_embed, "evaluate": add_evaluate}
