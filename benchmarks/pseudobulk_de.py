"""Pseudobulk DE on a generated atlas: recovery of the known truth, time and memory.

Generates an atlas (``vcell generate``), builds it, runs pseudobulk DESeq2 for every cell type x
non-reference condition (:func:`engine.compare.pseudobulk.precompute_de`) and scores it against
``truth/de.csv`` (every gene whose population mean truly changes in that cell type and
condition): precision and recall at padj < 0.05. The cell-level Wilcoxon test
(:func:`engine.compare.conditions.compare_conditions`, subsampled to 20,000 cells per side as in the app)
is scored beside it on the same contrasts. Time and peak memory (RSS of the process and its
worker processes, sampled from /proc) of each DE step are reported.

With ``--summaries-only`` the bundle is not built (a full build of 1M cells needs more memory
than a small machine has): the per-donor summaries are accumulated straight from the generated
counts, block by block, as the build does, and pseudobulk DE runs on them (no Wilcoxon: it needs
the expression store). ``--reuse`` keeps an already generated atlas in the work directory.

    python benchmarks/pseudobulk_de.py --cells 100000 --workdir /tmp/pbde-bench
    python benchmarks/pseudobulk_de.py --cells 1000000 --summaries-only --workdir /tmp/pbde-bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path

import pandas as pd
import scipy.sparse as sp

from engine.bundle.atlas import read_atlas
from engine.build.pipeline import build_atlas
from engine.build.prepare import BuildOptions
from engine.compare.conditions import compare_conditions
from engine.data.synth.generate import generate_atlas, load_truth
from engine.data.normalise import normalise_log1p
from engine.errors import VCellError
from engine.compare.pseudobulk import cached_de, precompute_de, pseudobulk_de
from engine.bundle.summaries import Summaries, compute_summaries

PADJ = 0.05


class PeakRss:
    """Peak summed RSS (bytes) of this process and its children while the block runs (Linux /proc)."""

    def __enter__(self) -> PeakRss:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, sum(_rss(pid) for pid in _tree(os.getpid())))


def _tree(root: int) -> list[int]:
    pids, parents = [root], {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    for pid in pids:
        pids += [child for child, parent in parents.items() if parent == pid]
    return pids


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def score(found: dict[tuple[str, str], set[str]], truth: dict[tuple[str, str], set[str]]) -> dict[str, float]:
    """Micro-averaged precision and recall over contrasts ``(condition, cell_type)`` -> genes."""
    hits = sum(len(found[k] & truth.get(k, set())) for k in found)
    n_found = sum(len(v) for v in found.values())
    n_true = sum(len(truth.get(k, set())) for k in found)
    return {"n_called": n_found, "n_true": n_true, "true_positives": hits,
            "precision": hits / n_found if n_found else float("nan"),
            "recall": hits / n_true if n_true else float("nan")}


def summaries_from_source(source: Path, block: int = 50_000) -> tuple[Summaries, list[str]]:
    """Per-donor summaries of a generated atlas, accumulated block by block as ``vcell build`` does.

    The TileDB-SOMA counts are streamed ``block`` cells at a time (the count blocks are read
    twice: once normalised, once raw), so memory stays bounded at any size.
    """
    import tiledbsoma

    with tiledbsoma.Experiment.open(str(source / "atlas.soma")) as exp:
        obs = exp.obs.read(column_names=["soma_joinid", "cell_type", "disease", "donor_id"]).concat().to_pandas()
        genes = exp.ms["RNA"].var.read(column_names=["var_id"]).concat().to_pandas()["var_id"].astype(str).tolist()
        obs = obs.sort_values("soma_joinid").reset_index(drop=True)
        X = exp.ms["RNA"].X["counts"]

        def blocks(transform=lambda m: m):
            for start in range(0, len(obs), block):
                stop = min(start + block, len(obs))
                table = X.read(coords=(slice(start, stop - 1),)).tables().concat()
                rows = table["soma_dim_0"].to_numpy() - start
                matrix = sp.csr_matrix((table["soma_data"].to_numpy(), (rows, table["soma_dim_1"].to_numpy())),
                                       shape=(stop - start, len(genes)))
                yield start, transform(matrix)

        summaries = compute_summaries(obs, blocks(normalise_log1p), len(genes), blocks())
    return summaries, genes


def run(cells: int, workdir: Path, donors: int, seed: int, jobs: int, summaries_only: bool = False,
        reuse: bool = False) -> dict:
    """Generate, build, run both DE methods and score them; returns the results as a dict."""
    times = {}
    start = time.perf_counter()
    source = workdir / f"generated-{cells}"
    if not (reuse and (source / "generated.json").exists()):
        generate_atlas(source, cells, n_donors_per_condition=donors, seed=seed, overwrite=True, n_jobs=jobs)
        times["generate_s"] = time.perf_counter() - start
    truth = {k: set(g["gene"]) for k, g in load_truth(source)["de"].groupby(["condition", "cell_type"])}
    if summaries_only:
        return {"cells": cells, "donors_per_condition": donors, "seed": seed, "mode": "summaries only",
                **_summaries_only(source, truth, times)}
    start = time.perf_counter()
    bundle = build_atlas(source, workdir / f"generated-{cells}.vcell", BuildOptions(seed=seed), overwrite=True)
    times["build_s"] = time.perf_counter() - start
    atlas = read_atlas(bundle)

    with PeakRss() as rss:
        start = time.perf_counter()
        summary = precompute_de(atlas)
        times["pseudobulk_s"] = time.perf_counter() - start
    tested = summary[summary["skipped"] == ""]
    pseudobulk = {}
    for row in tested.itertuples():
        de = cached_de(atlas, row.a, row.b, row.cell_type).table
        pseudobulk[(row.b, row.cell_type)] = set(de.loc[de["padj"] < PADJ, "gene"])

    wilcoxon = {}
    with PeakRss() as rss_w:
        start = time.perf_counter()
        for row in tested.itertuples():
            de = compare_conditions(atlas, row.a, row.b, cell_type=row.cell_type).de
            wilcoxon[(row.b, row.cell_type)] = set(de.loc[de["padj"] < PADJ, "gene"])
        times["wilcoxon_s"] = time.perf_counter() - start
    return {
        "cells": cells, "genes": atlas.n_genes, "donors_per_condition": donors, "seed": seed,
        "contrasts": len(summary), "contrasts_tested": len(tested),
        "skipped": summary.loc[summary["skipped"] != "", ["cell_type", "b", "skipped"]].to_dict("records"),
        **{k: round(v, 1) for k, v in times.items()},
        "pseudobulk_peak_rss_gib": round(rss.peak / 2**30, 2), "wilcoxon_peak_rss_gib": round(rss_w.peak / 2**30, 2),
        "pseudobulk": score(pseudobulk, truth), "wilcoxon": score(wilcoxon, truth),
        "machine": f"{platform.machine()} {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
    }


def _summaries_only(source: Path, truth: dict, times: dict) -> dict:
    """Summaries straight from the generated counts, then pseudobulk DE of every contrast on them."""
    with PeakRss() as rss_s:
        start = time.perf_counter()
        summaries, genes = summaries_from_source(source)
        times["summaries_s"] = time.perf_counter() - start
    reference = "normal"
    groups = summaries.groups
    found, skipped = {}, []
    with PeakRss() as rss:
        start = time.perf_counter()
        for cell_type in sorted(groups["cell_type"].unique()):
            for b in sorted(set(groups["disease"]) - {reference}):
                try:
                    de = pseudobulk_de(summaries, genes, reference, b, cell_type).table
                except VCellError as exc:
                    skipped.append({"cell_type": cell_type, "b": b, "skipped": str(exc)})
                    continue
                found[(b, cell_type)] = set(de.loc[de["padj"] < PADJ, "gene"])
        times["pseudobulk_s"] = time.perf_counter() - start
    return {"genes": len(genes), "contrasts": len(found) + len(skipped), "contrasts_tested": len(found),
            "skipped": skipped, **{k: round(v, 1) for k, v in times.items()},
            "summaries_peak_rss_gib": round(rss_s.peak / 2**30, 2),
            "pseudobulk_peak_rss_gib": round(rss.peak / 2**30, 2),
            "pseudobulk": score(found, truth),
            "machine": f"{platform.machine()} {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=50_000)
    parser.add_argument("--donors", type=int, default=4, help="donors per condition")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1, help="worker processes generating cells")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vcell-pseudobulk-bench"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--summaries-only", action="store_true", help="skip the build (and the Wilcoxon test)")
    parser.add_argument("--reuse", action="store_true", help="reuse an atlas already generated in --workdir")
    args = parser.parse_args()
    result = run(args.cells, args.workdir, args.donors, args.seed, args.jobs, args.summaries_only, args.reuse)
    rows = pd.DataFrame([{"method": m, **result[m]} for m in ("pseudobulk", "wilcoxon") if m in result])
    print(rows.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(json.dumps({k: v for k, v in result.items() if k not in ("pseudobulk", "wilcoxon")}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
