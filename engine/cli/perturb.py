"""``vcell perturb`` and ``evaluate-response``: the virtual cell's predictions, and its score on real data."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from engine.bundle.atlas import Atlas, read_atlas
from engine.errors import InputError
from engine.fileio import write_csv
from engine.perturb.baselines import additive_combination
from engine.perturb.conditions import compare_conditions_effect, reversal_score
from engine.perturb.evaluation import holdout_condition_response, holdout_trainer, save_response, summarise_response
from engine.perturb.predict import default_method, perturb
from engine.progress import TqdmProgress


def add_perturb(p: argparse.ArgumentParser) -> None:
    """Options of ``vcell perturb``."""
    p.add_argument("bundle")
    p.add_argument("--genes", required=True, help="comma-separated genes, e.g. STAT1,IRF1")
    p.add_argument("--mode", required=True, help="ko (knock-out), kd (knock-down) or oe (over-expression)")
    p.add_argument("--strength", type=float, help="kd: remaining fraction (0.5); oe: multiple (4)")
    p.add_argument("--cell-type", help="the population's cell type (default: all)")
    p.add_argument("--condition", help="the population's condition (default: all)")
    p.add_argument("--method", choices=["model", "ridge"], default=None,
                   help="model (the masked autoencoder, with baselines; default when the bundle has one) or ridge")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="CSV file for the predicted shifts (baselines beside it)")
    p.add_argument("--versus", metavar="B",
                   help="also compare the perturbation in --condition (A, healthy) with condition B in --cell-type: "
                        "writes OUT_conditions.csv and prints the reversal score (a masked-autoencoder bundle)")
    p.add_argument("--additive", action="store_true",
                   help="with two or more genes, also write OUT_additive.csv: the joint prediction beside the sum "
                        "of single-gene ones (a masked-autoencoder bundle)")
    p.set_defaults(handler=run_perturb)


def run_perturb(args: argparse.Namespace) -> int:
    """Predict a perturbation and write its table (and each baseline's) as CSV, atomically.

    ``--versus`` and ``--additive`` add the across-conditions table (with the reversal score)
    and the additive-model table beside it.
    """
    genes = [g.strip() for g in args.genes.split(",") if g.strip()]
    _check_options(args, genes)
    atlas = read_atlas(args.bundle)
    method = args.method or default_method(atlas)
    with TqdmProgress("perturb") as progress:
        result = perturb(atlas, genes, args.mode, strength=args.strength, cell_type=args.cell_type,
                         condition=args.condition, method=method, seed=args.seed, progress=progress)
    out = Path(args.out)
    tables = {"": result.table, **{f"_{name.split()[0]}": table
                                   for name, table in getattr(result, "baselines", {}).items()}}
    for suffix, table in tables.items():
        write_csv(_beside(out, suffix), table)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    top = result.table[~result.table["is_target"]].head(10)
    print(f"{result.spec.describe()} in {result.population} ({result.n_cells:,} cells), {result.method}:")
    print(top[["gene", "shift", "ci_low", "ci_high"]].to_string(index=False, float_format="{:+.3f}".format))
    beside = [_beside(out, s).name for s in tables if s]
    if args.versus is not None:
        beside.append(_versus(atlas, genes, args, method, out).name)
    if args.additive:
        beside.append(_additive(atlas, genes, args, method, out).name)
    print(f"written to {out}" + (f" (beside it: {', '.join(beside)})" if beside else ""))
    return 0


def _check_options(args: argparse.Namespace, genes: list[str]) -> None:
    """Refuse ``--versus`` without a population and condition A, and ``--additive`` with one gene."""
    if args.versus is not None and (args.cell_type is None or args.condition is None):
        raise InputError("--versus B compares the perturbation in one cell type between condition A and B: give "
                         "--cell-type and --condition (condition A) too.")
    if args.additive and len(genes) < 2:
        raise InputError(f"--additive compares a combination with the sum of its single-gene effects: give two or "
                         f"more --genes (got {len(genes)}).")


def _beside(out: Path, suffix: str) -> Path:
    """``OUT_suffix.csv`` beside ``out``."""
    return out.with_name(out.stem + suffix + out.suffix)


def _versus(atlas: Atlas, genes: list[str], args: argparse.Namespace, method: str, out: Path) -> Path:
    """Compare the perturbation in condition A and B, write the table, print the reversal score."""
    options = dict(cell_type=args.cell_type, condition_a=args.condition, condition_b=args.versus,
                   strength=args.strength, method=method, seed=args.seed)
    effect = compare_conditions_effect(atlas, genes, args.mode, **options)
    reversal = reversal_score(atlas, genes, args.mode, **options)
    path = _beside(out, "_conditions")
    write_csv(path, effect.table)
    for note in effect.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{effect.description}: {effect.n_units[0]} + {effect.n_units[1]} {effect.units} permuted")
    print(f"reversal score {reversal.score:+.3f} (does it move '{args.versus}' toward '{args.condition}'): above "
          f"{reversal.percentile:.0%} of {reversal.control_scores.size} matched control gene sets, p = "
          f"{reversal.pval:.2g}")
    return path


def _additive(atlas: Atlas, genes: list[str], args: argparse.Namespace, method: str, out: Path) -> Path:
    """Write the joint prediction beside the sum of single-gene predictions; print their Pearson r."""
    result = additive_combination(atlas, genes, args.mode, cell_type=args.cell_type, condition=args.condition,
                                  strength=args.strength, method=method, seed=args.seed)
    path = _beside(out, "_additive")
    write_csv(path, result.table)
    print(f"joint vs additive prediction of the combination: Pearson r = {result.pearson_r:.3f}")
    return path


def add_evaluate_response(p: argparse.ArgumentParser) -> None:
    """Options of ``vcell evaluate-response``."""
    p.add_argument("bundle")
    p.add_argument("--condition-a", required=True, help="the control condition, e.g. CTRL")
    p.add_argument("--condition-b", required=True, help="the response condition, e.g. STIM")
    p.add_argument("--cell-types", help="comma-separated cell types to hold out (default: all with 10+ cells in both)")
    p.add_argument("--retrain", action="store_true",
                   help="retrain the masked autoencoder per held-out type without its response cells (honest; "
                        "slower); default: the bundle's model, which saw them unlabelled")
    p.add_argument("--epochs", type=int, default=10, help="training epochs with --retrain")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=run_evaluate_response)


def run_evaluate_response(args: argparse.Namespace) -> int:
    """Leave each cell type out, predict its response, store the scores in BUNDLE/evaluation/response/."""
    atlas = read_atlas(args.bundle)
    types = [t.strip() for t in args.cell_types.split(",") if t.strip()] if args.cell_types else None
    with tempfile.TemporaryDirectory(prefix="vcell-holdout-") as work, TqdmProgress("evaluate-response") as progress:
        fit = holdout_trainer(atlas, work, epochs=args.epochs, seed=args.seed) if args.retrain else None
        results = holdout_condition_response(atlas, args.condition_a, args.condition_b, cell_types=types,
                                             fit_model=fit, seed=args.seed, progress=progress)
    path = save_response(atlas.path, results)
    for note in results.notes:
        print(f"note: {note}")
    summary = summarise_response(results.table)
    print(summary[["method", "n_cell_types", *(c for c in summary.columns if c.endswith("_mean"))]]
          .to_string(index=False, float_format="{:.3f}".format))
    print(f"written to {path}; the dashboard's Model page shows it")
    return 0


COMMANDS = {"perturb": add_perturb, "evaluate-response": add_evaluate_response}
