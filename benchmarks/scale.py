"""Scale benchmark of ``vcell build``: wall time and peak memory per step on generated atlases.

    python benchmarks/scale.py --cells 200000,1000000 --work /tmp/scale

Generates ``WORK/gen_N`` with :func:`engine.data.generate.generate_atlas` (seed 0; reused when
present), builds ``WORK/gen_N.vcell`` with the streaming build, and prints one markdown table
per size: step, seconds, peak RSS (GiB, sampled from ``/proc/self/status`` every 50 ms) and
cells per second, plus the process's RSS before the build and ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import threading
import time
from pathlib import Path

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
    from engine.data.generate import generate_atlas

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


def run(n_cells: int, work: Path, median_umis: float = 4000.0, n_genes: int | None = None, jobs: int = 2) -> str:
    """Generate (or reuse) and build one atlas; the markdown report."""
    from engine.build import BuildOptions, build_atlas

    source = generated(n_cells, work, median_umis, n_genes, jobs)
    out = work / f"gen_{n_cells}.vcell"
    shutil.rmtree(out, ignore_errors=True)
    sampler = RssSampler().start()
    baseline = sampler.rss()
    sampler.take_peak()
    recorder = StepRecorder(sampler)
    t0 = time.perf_counter()
    build_atlas(source, out, BuildOptions(stream=True), progress=recorder)
    total = time.perf_counter() - t0
    recorder.close()
    sampler.stop()
    genes = json.loads((source / "generated.json").read_text())["n_genes"]
    lines = [f"### {n_cells:,} cells x {genes:,} genes, median {median_umis:,.0f} UMIs (streaming build)", "",
             "| step | seconds | peak RSS GiB | cells/s |", "|---|---:|---:|---:|"]
    for step, seconds, peak in recorder.rows:
        lines.append(f"| {step} | {seconds:.1f} | {peak / GIB:.2f} | {n_cells / max(seconds, 1e-9):,.0f} |")
    peak_all = max(peak for _, _, peak in recorder.rows)
    lines.append(f"| **total** | {total:.1f} | {peak_all / GIB:.2f} | {n_cells / total:,.0f} |")
    lines += ["", f"RSS before the build: {baseline / GIB:.2f} GiB; ru_maxrss of the process: "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2:.2f} GiB"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="200000,1000000", help="comma-separated atlas sizes")
    parser.add_argument("--work", default="/tmp/scale", type=Path, help="where atlases and bundles go")
    parser.add_argument("--median-umis", type=float, default=4000.0, help="generator's median UMIs per cell")
    parser.add_argument("--genes", type=int, default=None, help="generator's gene count (default: its 765 real genes)")
    parser.add_argument("--jobs", type=int, default=2, help="generator processes")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for n in (int(c) for c in args.cells.split(",")):
        print(run(n, args.work, args.median_umis, args.genes, args.jobs), flush=True)
        print(flush=True)


if __name__ == "__main__":
    main()
