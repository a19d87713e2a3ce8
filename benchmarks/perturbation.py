"""Benchmark the virtual cell on a generated atlas whose perturbation effects are known.

Generates an atlas (``vcell generate``), builds it with a masked autoencoder (``vcell build
--model mae``), then for the strongest regulators of a few populations and every mode (ko, kd,
oe) compares the predicted mean shift of each gene with the truth (``truth/perturbations.csv``,
``lognorm_shift_counts``: the shift of the observed log-normalised values; genes not listed
there have a true shift of ~0). Targets are left out of every score (all methods set them by
the same clamp). Per method (model, no change, ridge):

- ``r_all``: Pearson r over all non-target genes; ``r_top20``: over the (at most) 20 most affected
  network targets of the regulator (genes with a true effect; regulators have fewer than 20);
- ``sign_top20``: share of those whose predicted shift has the true sign (0 predicts no sign);
- ``coverage_top20``: share of those 20 whose true shift lies in the 95% interval.

Then times one population of 10,000 cells with 16 masks (the model alone, and the whole call).

With ``--part real`` (or ``both``): the interferon-beta response of ``kang_ifnb_1k.h5ad``, each cell
type left out in turn (:mod:`engine.perturb.evaluation`): its STIM profile predicted from its CTRL
cells and the other types' response, by no change, expression arithmetic and the MAE's latent
arithmetic, the MAE retrained per held-out type without its STIM cells (per seed); the bundle's
own MAE (which saw those cells) is scored too, to show what that leak is worth.

Usage::

    python benchmarks/perturbation.py --work /tmp/vc_bench --cells 20000 --epochs 8
    python benchmarks/perturbation.py --part real --kang ../shared/data/kang_ifnb_1k.h5ad --epochs 10
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mdtable import markdown

from engine.perturb.spec import NO_CHANGE_METHOD, RIDGE_METHOD, PerturbationSpec
from engine.perturb.virtual_cell import MODEL_METHOD, model_shift
from engine.perturb.counterfactual import load_mae, perturb_with_model

MODES = {"ko": None, "kd": 0.5, "oe": 4.0}
TOP = 20


def prepare(work: Path, n_cells: int, epochs: int, seed: int, model_seeds: int = 1) -> tuple[Path, Path]:
    """The generated atlas directory and its MAE bundle (made when missing)."""
    from engine.cli import main
    from engine.data.synth.generate import generate_atlas

    source = work / f"gen{n_cells}"
    bundle = work / (f"gen{n_cells}.vcell" if model_seeds == 1 else f"gen{n_cells}_seeds{model_seeds}.vcell")
    if not source.exists():
        generate_atlas(source, n_cells, seed=seed)
    if not bundle.exists():
        assert main(["build", str(source), "--out", str(bundle), "--model", "mae", "--epochs", str(epochs),
                     "--seed", str(seed), "--model-seeds", str(model_seeds)]) == 0
    return source, bundle


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def score(table: pd.DataFrame, truth: pd.Series) -> dict[str, float]:
    """Scores of one predicted table against the true shift per gene (non-target genes only)."""
    t = table[~table["is_target"]].set_index("gene")
    true = truth.reindex(t.index).fillna(0.0).to_numpy()
    pred = t["shift"].to_numpy()
    affected = np.flatnonzero(t.index.isin(truth.index))  # the regulator's network targets
    top = affected[np.argsort(-np.abs(true[affected]))[:TOP]]
    inside = (t["ci_low"].to_numpy()[top] <= true[top]) & (true[top] <= t["ci_high"].to_numpy()[top])
    return {"r_all": _pearson(pred, true), "r_top20": _pearson(pred[top], true[top]),
            "sign_top20": float(np.mean(np.sign(pred[top]) == np.sign(true[top]))),
            "coverage_top20": float(np.mean(inside))}


def evaluate(atlas, truth: pd.DataFrame, n_populations: int, n_regulators: int, seed: int) -> pd.DataFrame:
    """One row per (population, regulator, mode, method) with its scores."""
    reference = truth["condition"].iloc[0]
    counts = atlas.obs[atlas.roles["cell_type"]].value_counts()
    rows = []
    for cell_type in [str(c) for c in counts.index[:n_populations]]:
        here = truth[(truth["cell_type"] == cell_type) & (truth["condition"] == reference)]
        ko = here[(here["mode"] == "ko") & (here["role"] == "target")]
        strength = ko.groupby("regulator")["lognorm_shift_counts"].apply(lambda s: s.abs().sum())
        for regulator in strength.sort_values(ascending=False).index[:n_regulators]:
            for mode, s in MODES.items():
                case = here[(here["regulator"] == regulator) & (here["mode"] == mode)]
                true = case[case["role"] == "target"].set_index("gene")["lognorm_shift_counts"]
                result = perturb_with_model(atlas, [regulator], mode, strength=s, cell_type=cell_type,
                                            condition=reference, seed=seed)
                tables = {MODEL_METHOD: result.table, **result.baselines}
                for method, table in tables.items():
                    rows.append({"cell_type": cell_type, "regulator": regulator, "mode": mode, "method": method,
                                 "n_cells": result.n_cells, **score(table, true)})
                print(f"{cell_type:>28} {regulator:>8} {mode}: model r_top20 "
                      f"{rows[-3]['r_top20']:.2f}, ridge {rows[-1]['r_top20']:.2f}", flush=True)
    return pd.DataFrame(rows)


def time_population(atlas, n_cells: int = 10_000, n_masks: int = 16, seed: int = 0) -> dict[str, float]:
    """Seconds for one population of ``n_cells`` cells and ``n_masks`` masks (model only, and whole call)."""
    from engine.models.serialize import align_block, align_genes

    model, genes = load_mae(atlas)
    positions, _ = align_genes(genes, atlas.var)
    cells = np.sort(np.random.default_rng(seed).choice(atlas.n_cells, n_cells, replace=False))
    columns = np.unique(positions[positions >= 0])
    x, missing = align_block(atlas.expression(cells, columns), np.searchsorted(columns, positions))
    target = int(np.argmax(x.numpy().mean(0)))
    spec = PerturbationSpec([genes[target]], "kd")
    out = {}
    for label, max_pairs in (("model, default pair budget", "auto"), ("model, all 160,000 pairs", None)):
        start = time.perf_counter()
        prediction = model_shift(model, x, [target], spec, missing=missing.numpy(), n_masks=n_masks,
                                 max_pairs=max_pairs, seed=seed)
        out[f"{label} ({prediction.n_pairs:,} pairs)"] = time.perf_counter() - start
    start = time.perf_counter()
    perturb_with_model(atlas, [atlas.genes.label(int(positions[target]))], "kd", max_cells=n_cells, seed=seed)
    out["whole perturb_with_model call (baselines, landing)"] = time.perf_counter() - start
    return out


def real_response(kang: Path, work: Path, epochs: int, seeds: Sequence[int]) -> None:
    """Leave-one-cell-type-out on the Kang interferon-beta data: print per-type and summary tables."""
    from engine.bundle.atlas import Atlas
    from engine.cli import main as cli
    from engine.perturb.evaluation import holdout_condition_response, holdout_trainer, summarise_response

    bundle = work / f"kang_mae_{epochs}.vcell"
    if not bundle.exists():
        assert cli(["build", str(kang), "--out", str(bundle), "--model", "mae", "--epochs", str(epochs)]) == 0
    atlas = Atlas(bundle)
    runs = []
    for seed in seeds:
        start = time.perf_counter()
        fit = holdout_trainer(atlas, work / f"holdout_seed{seed}", epochs=epochs, seed=seed)
        runs.append(holdout_condition_response(atlas, "CTRL", "STIM", fit_model=fit, seed=seed).table.assign(seed=seed))
        print(f"seed {seed}: {time.perf_counter() - start:.1f} s (6 retrainings)", flush=True)
    results = pd.concat(runs, ignore_index=True)
    results.to_csv(work / "kang_holdout_scores.csv", index=False)
    metrics = ["r_all", "r_top20", "sign_top20", "rmse_ratio"]
    print(f"\nKang IFN-beta, leave one cell type out, MAE retrained without it ({epochs} epochs), "
          f"{len(seeds)} seeds: mean over cell types and seeds")
    print(markdown(summarise_response(results).set_index("method")))
    print("\nPer cell type (mean over seeds)")
    print(markdown(results.groupby(["cell_type", "method"], sort=False)[metrics].mean()))
    leaky = holdout_condition_response(atlas, "CTRL", "STIM")
    print("\nThe bundle's own MAE (saw the held-out STIM cells unlabelled while pretraining)")
    print(markdown(summarise_response(leaky.table).set_index("method")))


def main() -> None:
    """Run the benchmark and print the tables."""
    from engine.bundle.atlas import Atlas
    from engine.data.synth.generate import load_truth

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/vc_bench")
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--populations", type=int, default=3)
    parser.add_argument("--regulators", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-seeds", type=int, default=1, help="masked autoencoders pooled (training seeds)")
    parser.add_argument("--part", choices=["generated", "real", "both"], default="generated")
    parser.add_argument("--kang", default=str(Path(__file__).resolve().parents[2] / "shared/data/kang_ifnb_1k.h5ad"))
    parser.add_argument("--seeds", default="0,1,2", help="model seeds of the real-data leave-one-out")
    args = parser.parse_args()
    print(f"{platform.machine()} {platform.processor() or ''}, {__import__('os').cpu_count()} cores")
    if args.part in ("real", "both"):
        real_response(Path(args.kang), Path(args.work), args.epochs, [int(s) for s in args.seeds.split(",")])
    if args.part == "real":
        return
    source, bundle = prepare(Path(args.work), args.cells, args.epochs, args.seed, args.model_seeds)
    atlas = Atlas(bundle)
    print(f"bundle {bundle} ({atlas.n_cells:,} cells, model {atlas.manifest.model.name}, "
          f"{atlas.manifest.model.n_genes} genes)")
    results = evaluate(atlas, load_truth(source)["perturbations"], args.populations, args.regulators, args.seed)
    metrics = ["r_all", "r_top20", "sign_top20", "coverage_top20"]
    order = [MODEL_METHOD, RIDGE_METHOD, NO_CHANGE_METHOD]
    summary = results.groupby("method")[metrics].mean().reindex(order)
    results.to_csv(Path(args.work) / "perturbation_scores.csv", index=False)
    print("\nMean over", results.groupby(["cell_type", "regulator", "mode"]).ngroups, "cases")
    print(markdown(summary))
    print("\nBy mode")
    print(markdown(results.groupby(["mode", "method"])[metrics].mean()))
    wins = results.pivot_table(index=["cell_type", "regulator", "mode"], columns="method", values="r_top20")
    print(f"\nModel r_top20 above ridge in {(wins[MODEL_METHOD] > wins[RIDGE_METHOD]).sum()} of {len(wins)} cases")
    print("\nTiming, 10,000 cells x 16 masks")
    for label, seconds in time_population(atlas, seed=args.seed).items():
        print(f"- {label}: {seconds:.2f} s")


if __name__ == "__main__":
    main()
