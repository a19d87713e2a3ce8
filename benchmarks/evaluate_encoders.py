"""Benchmark: self-supervised encoders against PCA / HVG baselines on held-out donors.

Builds a bundle from a real labelled atlas, pretrains every method on it, adds each embedding,
and evaluates all of them with `vcell evaluate` (zero-shot kNN and linear probe; each seed holds
out different whole donors). The encoders and the bundle's PCA see all cells unlabelled
(transductive, as pretraining on an atlas does); `pca_reference` is fitted on reference donors only.

Usage::

    python benchmarks/evaluate_encoders.py ../shared/data/kang_ctrl_reference.h5ad --epochs 20
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

METHODS = ("mae", "gp-mae", "byol", "barlow")


def vcell(*args: str) -> float:
    """Run one vcell command quietly; return its wall seconds."""
    start = time.perf_counter()
    subprocess.run([str(Path(sys.executable).with_name("vcell")), *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--metric", default="cosine")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    print(f"# {Path(args.input).name}, {args.epochs} epochs, {args.seeds} donor splits, {args.metric} kNN; "
          f"{platform.machine()} {os.cpu_count()} cores, {date.today()}")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = f"{tmp}/b.vcell"
        print(f"build: {vcell('build', args.input, '--out', bundle):.1f} s")
        for method in args.methods.split(","):
            seconds = vcell("pretrain", bundle, "--method", method, "--epochs", str(args.epochs),
                            "--out", f"{tmp}/{method}")
            vcell("embed", bundle, "--model", f"{tmp}/{method}/model")
            print(f"pretrain {method}: {seconds:.1f} s")
        out = subprocess.run([str(Path(sys.executable).with_name("vcell")), "evaluate", bundle, "--seeds",
                              str(args.seeds), "--metric", args.metric], check=True, capture_output=True, text=True)
        print(out.stdout)


if __name__ == "__main__":
    main()
