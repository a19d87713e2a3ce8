"""Scale benchmark: ``vcell build`` step by step, then the operations users wait for, at 1M-10M cells.

    python benchmarks/scale.py --cells 1000000,10000000 --work /tmp/scale [--median-umis 1500]

For each size: generates ``WORK/gen_N`` with :func:`engine.data.synth.generate.generate_atlas` (seed 0;
reused when there with the same parameters), builds ``WORK/gen_N.vcell`` with the streaming build
(seconds and peak RSS per step, sampled from ``/proc/self/status`` every 50 ms), then times on the
bundle: FAISS search against exact search, colouring by a gene against a column of the SOMA
store, the image of every cell against a pandas groupby, a lasso against matplotlib. Rows of
``WORK/gen_N.dashboard.json`` (``benchmarks/dashboard_scale.py --json``) join the table when
present. Results go to ``WORK/gen_N.scale.json``; ``--reuse`` keeps a recorded build and prints
the one table of every size: step, seconds, peak RSS, throughput, ratio to the baseline.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import threading
import time
from pathlib import Path

import numpy as np

from engine.fileio import write_json

GIB = 1024**3


class RssSampler:
    """Samples this process's resident memory in a background thread; tracks the peak per step."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.step_peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss() -> int:
        """Current VmRSS in bytes."""
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step_peak = max(self.step_peak, self.rss())
            time.sleep(self.interval)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def take_peak(self) -> int:
        """The peak since the last call (and restart counting from the current value)."""
        peak, self.step_peak = max(self.step_peak, self.rss()), self.rss()
        return peak

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class StepRecorder:
    """A progress callback that times each step (a message, counts in parentheses dropped)."""

    def __init__(self, sampler: RssSampler):
        self.sampler, self.rows, self._step, self._t0 = sampler, [], None, time.perf_counter()

    def __call__(self, fraction: float, message: str) -> None:
        step = re.sub(r"\s*\(.*\)$", "", re.sub(r"[\d,]+ ", "", message)).strip()
        if step != self._step:
            self.close()
            self._step, self._t0 = step, time.perf_counter()

    def close(self) -> None:
        if self._step is not None:
            self.rows.append((self._step, time.perf_counter() - self._t0, self.sampler.take_peak()))
            print(f"  {self.rows[-1][0]}: {self.rows[-1][1]:.1f} s, {self.rows[-1][2] / GIB:.2f} GiB", flush=True)
            self._step = None


def generated(n_cells: int, work: Path, median_umis: float, n_genes: int | None, jobs: int) -> Path:
    """``WORK/gen_N``, generated with seed 0 unless already there with the same parameters."""
    from engine.data.synth.generate import generate_atlas

    source = work / f"gen_{n_cells}"
    info = source / "generated.json"
    if info.exists():
        params = json.loads(info.read_text())["parameters"]
        if params["median_umis"] == median_umis and params["n_genes"] == n_genes:
            return source
    t0 = time.perf_counter()
    generate_atlas(source, n_cells, seed=0, median_umis=median_umis, n_genes=n_genes, n_jobs=jobs, overwrite=True)
    print(f"generated {n_cells:,} cells in {time.perf_counter() - t0:.0f} s", flush=True)
    return source


def build(n_cells: int, work: Path, median_umis: float = 4000.0, n_genes: int | None = None,
          jobs: int = 2) -> dict:
    """Generate (or reuse) and build one atlas; per-step seconds and peak RSS."""
    from engine.build.pipeline import build_atlas
    from engine.build.prepare import BuildOptions

    source = generated(n_cells, work, median_umis, n_genes, jobs)
    out = work / f"gen_{n_cells}.vcell"
    shutil.rmtree(out, ignore_errors=True)
    sampler = RssSampler().start()
    before = sampler.rss()
    sampler.take_peak()
    recorder = StepRecorder(sampler)
    t0 = time.perf_counter()
    build_atlas(source, out, BuildOptions(stream=True), progress=recorder)
    total = time.perf_counter() - t0
    recorder.close()
    sampler.stop()
    return {"n_cells": n_cells, "n_genes": json.loads((source / "generated.json").read_text())["n_genes"],
            "median_umis": median_umis, "rss_before": before / GIB,
            "steps": [{"step": step, "seconds": seconds, "peak_gib": peak / GIB} for step, seconds, peak in recorder.rows],
            "total": {"step": "**build total**", "seconds": total,
                      "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}}


def measure(bundle: Path, n_genes: int = 10, repeats: int = 3) -> list[dict]:
    """Operations on a built bundle, each against its obvious baseline (same data, same run)."""
    from gene_colouring import pick_genes, soma_column
    from map_scale import lasso_holding, pandas_majority, timed

    from engine.bundle.atlas import read_atlas
    from engine.space.index import exact_neighbours, load_index, recall_at_k
    from engine.space.raster import points_in_polygon, rasterise

    atlas = read_atlas(bundle)
    rows = []
    x = atlas.embedding()
    queries = np.ascontiguousarray(x[np.sort(np.random.default_rng(1).choice(atlas.n_cells, 1000, replace=False))])
    exact_s, _, truth = timed(lambda: exact_neighbours(x, queries, 10), 0)
    info = atlas.manifest.index
    index = load_index(atlas.path / info.path, nprobe=info.nprobe)
    _, search_s, found = timed(lambda: index.search(queries, 10)[1], repeats)
    rows.append({"step": "FAISS search, 1,000 queries k=10", "seconds": search_s,
                 "throughput": f"{1000 / search_s:,.0f} queries/s at recall@10 {recall_at_k(found, truth):.3f} "
                               f"({info.factory}, nprobe {info.nprobe})",
                 "baseline": "exact flat search", "baseline_s": exact_s})
    index = None  # free it before the next measurement
    _ = atlas.store.n_cells, atlas.genes
    genes = pick_genes(atlas.var, n_genes)
    times = [timed(lambda g=g: atlas.gene_values(int(g)), 0)[0] for g in genes]
    part = min(atlas.n_cells, 1_000_000)  # a whole column of a 10M-cell store is read for minutes
    base_s, _, _ = timed(lambda: soma_column(atlas, int(genes[-1]), part), 0)
    rows.append({"step": f"colour by a gene (median of {len(genes)} genes, first read)",
                 "seconds": float(np.median(times)), "throughput": f"max {max(times):.3f} s",
                 "baseline": "one column of the SOMA store" + (f" (first {part:,} cells, time x "
                                                               f"{atlas.n_cells / part:g})" if part < atlas.n_cells else ""),
                 "baseline_s": base_s * atlas.n_cells / part})
    layout = np.asarray(atlas.layout, dtype=np.float32)
    codes = atlas.obs["cell_type"].cat.codes.to_numpy()
    colours = ["#1f77b4"] * (codes.max() + 1)
    _, raster_s, _ = timed(lambda: rasterise(layout, width=800, codes=codes, colours=colours).to_data_uri(), repeats)
    base_s, _, _ = timed(lambda: pandas_majority(layout, codes), 0)
    rows.append({"step": "image of every cell by cell type (+ PNG)", "seconds": raster_s, "throughput": "",
                 "baseline": "pandas groupby(pixel, type)", "baseline_s": base_s})
    lasso = lasso_holding(layout, 0.05)
    _, lasso_s, chosen = timed(lambda: points_in_polygon(layout, lasso), repeats)
    from matplotlib.path import Path as Polygon

    base_s, _, _ = timed(lambda: Polygon(lasso).contains_points(layout.astype(np.float64)), 0)
    rows.append({"step": f"lasso against every cell ({len(chosen) / atlas.n_cells:.1%} selected)", "seconds": lasso_s,
                 "throughput": "", "baseline": "matplotlib contains_points", "baseline_s": base_s})
    return rows


def table(results: list[dict]) -> str:
    """One markdown table: a row per step, columns per atlas size, baseline ratio at the largest."""
    sizes = [r["n_cells"] for r in results]
    header = ["step"] + [f"{n / 1e6:g}M {c}" for n in sizes for c in ("s", "peak GiB", "throughput")] + [
        "baseline", f"× baseline ({sizes[-1] / 1e6:g}M)"]
    names = list(dict.fromkeys(_name(row) for r in results for row in _rows(r)))
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 2) + "|---:|"]
    for name in names:
        cells, baseline, ratio = [], "", ""
        for r in results:
            row = next((row for row in _rows(r) if _name(row) == name), None)
            if row is None:
                cells += ["–"] * 3
                continue
            peak = f"{row['peak_gib']:.2f}" if row.get("peak_gib") is not None else ""
            throughput = row.get("throughput") or (
                f"{r['n_cells'] / row['seconds']:,.0f} cells/s" if row["seconds"] >= 0.05 else "–")
            cells += [f"{row['seconds']:.3g}" if row["seconds"] < 10 else f"{row['seconds']:,.0f}", peak, throughput]
            if row.get("baseline"):
                baseline = row["baseline"]
                ratio = f"{row['baseline_s'] / row['seconds']:,.1f}× ({row['baseline_s']:.3g} s)"
        lines.append("| " + " | ".join([name] + cells + [baseline, ratio]) + " |")
    return "\n".join(lines)


def _name(row: dict) -> str:
    return re.sub(r" to /\S+$", "", row["step"])  # "bundle written to /path" names the same step at every size


def _rows(result: dict) -> list[dict]:
    return result["steps"] + [result["total"]] + result.get("operations", []) + result.get("dashboard", [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="200000,1000000", help="comma-separated atlas sizes")
    parser.add_argument("--work", default="/tmp/scale", type=Path, help="where atlases and bundles go")
    parser.add_argument("--median-umis", type=float, default=4000.0, help="generator's median UMIs per cell")
    parser.add_argument("--genes", type=int, default=None, help="generator's gene count (default: its 765 real genes)")
    parser.add_argument("--jobs", type=int, default=2, help="generator processes")
    parser.add_argument("--reuse", action="store_true",
                        help="keep a size's recorded build (WORK/gen_N.scale.json + bundle) and only measure")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for n in (int(c) for c in args.cells.split(",")):
        record = args.work / f"gen_{n}.scale.json"
        result = json.loads(record.read_text()) if args.reuse and record.exists() else None
        if result is None:
            result = build(n, args.work, args.median_umis, args.genes, args.jobs)
        if not (args.reuse and "operations" in result):
            result["operations"] = measure(args.work / f"gen_{n}.vcell")
        dashboard = args.work / f"gen_{n}.dashboard.json"  # benchmarks/dashboard_scale.py --json
        if dashboard.exists():
            result["dashboard"] = json.loads(dashboard.read_text())
        write_json(record, result)
        results.append(result)
        print(f"{n:,} cells done", flush=True)
    print(f"\n{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GIB:.0f} GiB RAM; generated atlases: "
          + ", ".join(f"{r['n_cells']:,} cells x {r['n_genes']} genes, median {r['median_umis']:,.0f} UMIs"
                      for r in results) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
