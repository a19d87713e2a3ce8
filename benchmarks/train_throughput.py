"""Training and embedding throughput (cells/s) per method, beside the data loader alone.

For each gene count a generated atlas is built once (cached under ``--cache``), then:

- ``loader``: :class:`~engine.data.loader.CellBatches` alone (block-shuffled; lognorm only, and with counts);
- ``train``: optimizer steps of the model on batches already in memory (model cost only);
- ``embed``: :func:`engine.build.embed.embed_atlas` over the whole atlas (store reads included).

The loader is not the bottleneck when its cells/s exceeds the model's.

    .venv/bin/python benchmarks/train_throughput.py --cells 20000 --genes 2000 19331
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

METHODS = ("mae", "gp-mae", "byol", "barlow")


def bundle_for(cache: Path, n_cells: int, n_genes: int) -> Path:
    from engine.build.pipeline import build_atlas
    from engine.build.prepare import BuildOptions
    from engine.data.synth.generate import generate_atlas

    out = cache / f"generated-{n_cells}x{n_genes}.vcell"
    if not out.exists():
        source = generate_atlas(cache / f"generated-{n_cells}x{n_genes}", n_cells, n_genes=n_genes, seed=0,
                                overwrite=True)
        build_atlas(source, out, BuildOptions(n_landmarks=min(2000, n_cells)))
    return out


def loader_rate(atlas, batch_size: int, max_cells: int, counts: bool) -> float:
    from engine.data.loader import CellBatches

    cells = np.arange(min(max_cells, atlas.n_cells))
    data = CellBatches(atlas.store, cells, None, batch_size=batch_size, seed=0, counts=counts)
    start, n = time.perf_counter(), 0
    for batch in data:
        n += len(batch["x"])
    return n / (time.perf_counter() - start)


def train_rate(atlas, method: str, batch_size: int, steps: int, device: torch.device) -> float:
    from engine.data.loader import CellBatches
    from engine.models.ssl import build_model
    from engine.models.train import method_config

    genes = np.arange(atlas.n_genes)
    cells = np.arange(min(atlas.n_cells, 8 * batch_size))
    config = method_config(method, atlas.store, genes, cells)
    model = build_model(method, atlas.n_genes, **config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = [{k: v.to(device) for k, v in b.items()}
               for b in CellBatches(atlas.store, cells, None, batch_size=batch_size, drop_last=True)]
    hook = getattr(model, "on_after_optimizer_step", None) or getattr(model, "update_target", None)

    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        model.training_loss(batch)["loss"].backward()
        optimizer.step()
        if callable(hook):
            hook()

    for b in batches[:2]:  # warm-up
        step(b)
    _sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def embed_rate(atlas, method: str, device: torch.device, batch_size: int = 4096) -> float:
    from engine.build.embed import embed_atlas
    from engine.models.ssl import build_model

    model = build_model(method, atlas.n_genes, **({"programmes": [[0, 1]]} if method == "gp-mae" else {}))
    start = time.perf_counter()
    embed_atlas(atlas, model, np.arange(atlas.n_genes), batch_size=batch_size, device=device)
    return atlas.n_cells / (time.perf_counter() - start)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    from engine.bundle.atlas import read_atlas

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--genes", type=int, nargs="+", default=[2000, 19331])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--loader-cells", type=int, default=10_000)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "vcell-bench",
                        help="where generated bundles are cached")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.processor() or 'CPU'} x{os.cpu_count()}"
    print(f"# train_throughput  {datetime.datetime.now():%Y-%m-%d %H:%M}  {platform.node()}  {name}  "
          f"torch {torch.__version__}  torch threads {torch.get_num_threads()}  batch {args.batch_size}")
    print(f"{'genes':>6} {'method':>7} {'loader x c/s':>13} {'loader x+counts c/s':>20} {'train c/s':>10} "
          f"{'embed c/s':>10}")
    args.cache.mkdir(parents=True, exist_ok=True)
    for n_genes in args.genes:
        atlas = read_atlas(bundle_for(args.cache, args.cells, n_genes))
        loader_x = loader_rate(atlas, args.batch_size, args.loader_cells, counts=False)
        loader = loader_rate(atlas, args.batch_size, args.loader_cells, counts=True)
        for method in args.methods:
            train = train_rate(atlas, method, args.batch_size, args.steps, device)
            embed = embed_rate(atlas, method, device)
            print(f"{n_genes:>6} {method:>7} {loader_x:>13,.0f} {loader:>20,.0f} {train:>10,.0f} {embed:>10,.0f}",
                  flush=True)


if __name__ == "__main__":
    main()
