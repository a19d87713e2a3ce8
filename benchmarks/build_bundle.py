"""Benchmark: `vcell build` against the plain scanpy pipeline on the same input.

Each run is a separate process, so peak RSS (ru_maxrss of the child) is the run's own.
The scanpy baseline does what a user would do by hand for a map: normalize_total, log1p,
highly_variable_genes (seurat, 2,000), scale, PCA (50), neighbors (15, exact sklearn kNN: scanpy
1.11.5's default pynndescent path fails on scipy 1.17 csr_array above ~5k cells), UMAP. `vcell build`
does that and more (SOMA store + gene-major copy, FAISS index, summaries, manifest).

Usage::

    python benchmarks/build_bundle.py ../shared/data/covid_pbmc_combat_subset.h5ad [more inputs...]
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

SCANPY = """
import sys, scanpy as sc, scipy.sparse as sp
a = sc.read_h5ad(sys.argv[1])
sc.pp.normalize_total(a, target_sum=1e4); sc.pp.log1p(a)
sc.pp.highly_variable_genes(a, n_top_genes=2000, flavor="seurat"); a = a[:, a.var.highly_variable].copy()
a.X = sp.csr_matrix(a.X)  # scanpy 1.11's scale fails on scipy csr_array input
sc.pp.scale(a, max_value=10); sc.tl.pca(a, n_comps=50)
sc.pp.neighbors(a, n_neighbors=15, transformer="sklearn")  # default pynndescent path fails with scipy 1.17
sc.tl.umap(a)
"""


def run(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of one child process (os.wait4: this child's own usage).

    A failed run gives ``(nan, nan)`` and prints the end of its error output.
    """
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        print(f"# failed: {cmd[0]} ...: {err.strip().splitlines()[-1] if err.strip() else status}")
        return float("nan"), float("nan")
    return seconds, usage.ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+")
    args = parser.parse_args()
    vcell = str(Path(sys.executable).with_name("vcell"))
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, python {platform.python_version()}, {date.today()}")
    print(f"{'input':40s} {'run':14s} {'seconds':>8s} {'peak GiB':>9s} {'ratio':>6s}")
    for source in args.inputs:
        with tempfile.TemporaryDirectory() as tmp:
            base_s, base_rss = run([sys.executable, "-c", SCANPY, source])
            ours_s, ours_rss = run([vcell, "build", source, "--out", f"{tmp}/b.vcell"])
        name = Path(source).name[:40]
        print(f"{name:40s} {'scanpy (map)':14s} {base_s:8.1f} {base_rss:9.2f} {1.0:6.2f}")
        print(f"{name:40s} {'vcell build':14s} {ours_s:8.1f} {ours_rss:9.2f} {ours_s / base_s:6.2f}")


if __name__ == "__main__":
    main()
