"""``vcell embed-shards`` and ``merge-shards``: embedding a bundle across processes or machines."""

from __future__ import annotations

import argparse

from engine.progress import TqdmProgress
from engine.scale.merge import merge_shards
from engine.scale.shards import embed_shards


def add_embed_shards(p: argparse.ArgumentParser) -> None:
    """Options of ``vcell embed-shards``."""
    p.add_argument("bundle")
    p.add_argument("--checkpoint", required=True, help="model checkpoint directory (e.g. RUN/model)")
    p.add_argument("--out", required=True, help="directory for the shards, shared by every process")
    p.add_argument("--devices", default="auto",
                   help="processes on this node (default: 1, or what torchrun / SLURM started)")
    p.add_argument("--num-nodes", type=int, default=None, help="nodes (default: 1, or from torchrun / SLURM)")
    p.add_argument("--accelerator", default="auto", help="auto (GPUs when present), cpu or gpu")
    p.add_argument("--batch-size", type=int, default=4096, help="cells per forward pass")
    p.add_argument("--num-workers", type=int, default=None,
                   help="store-reading processes per rank (default: 0 on CPU, up to 4 with a GPU)")
    p.add_argument("--factory", help="also build per-shard FAISS indexes from one shared trained index "
                                     "(Flat or IVF..., e.g. IVF4096,Flat); default: merge-shards builds them")
    p.add_argument("--seed", type=int, default=0, help="seed of the index's training sample")
    p.set_defaults(handler=run_embed_shards)


def run_embed_shards(args: argparse.Namespace) -> int:
    """Embed this process's shard; every process of the run executes this, rank 0 reports."""
    devices = int(args.devices) if str(args.devices).isdigit() else args.devices
    shard = embed_shards(args.bundle, args.checkpoint, args.out, devices=devices, num_nodes=args.num_nodes,
                         accelerator=args.accelerator, batch_size=args.batch_size, factory=args.factory,
                         seed=args.seed, num_workers=args.num_workers, progress_bar=True)
    if shard.rank == 0:
        print(f"{shard.world_size} shard(s) of {shard.n_cells:,} cells written to {args.out}; merge them with: "
              f"vcell merge-shards {args.out} --bundle {args.bundle}")
    return 0


def add_merge_shards(p: argparse.ArgumentParser) -> None:
    """Options of ``vcell merge-shards``."""
    p.add_argument("dir", help="the --out directory of embed-shards")
    p.add_argument("--bundle", help="also add the merged embedding and index to this bundle (the one embedded)")
    p.add_argument("--factory", help="FAISS factory (default: that of the shard indexes, else chosen by size)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=run_merge_shards)


def run_merge_shards(args: argparse.Namespace) -> int:
    """Merge the shards into one embedding and index (and into the bundle with ``--bundle``)."""
    with TqdmProgress("merge") as progress:
        result = merge_shards(args.dir, bundle=args.bundle, factory=args.factory, seed=args.seed, progress=progress)
    where = f"; {result.name} added to {result.bundle}" if result.bundle else ""
    print(f"merged {result.info['n']:,} cells into {result.embedding} and {result.index} "
          f"({result.info['factory']}){where}")
    return 0


COMMANDS = {"embed-shards": add_embed_shards, "merge-shards": add_merge_shards}
