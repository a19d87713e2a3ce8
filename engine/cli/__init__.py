"""``vcell``: the command line. Thin wrappers over public engine functions.

Errors meant for the user (:class:`~engine.errors.VCellError`) print one sentence and exit
with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

from engine.errors import VCellError

APP = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"


def _add_build_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("harmonisation (obs columns are guessed when not given)")
    g.add_argument("--cell-type-key", help="obs column holding cell types (e.g. seurat_annotations)")
    g.add_argument("--condition-key", help="obs column holding the condition / disease (e.g. stim)")
    g.add_argument("--donor-key", help="obs column holding donors or samples (e.g. sample_id)")
    g.add_argument("--batch-key", help="obs column holding batches")
    g.add_argument("--reference-condition", help="the healthy / control condition value (e.g. Healthy)")
    g.add_argument("--gene-map", help="TSV/CSV of Ensembl ID and gene symbol, to fill the missing side")
    m = p.add_argument_group("methods")
    m.add_argument("--n-hvg", type=int, default=2000, help="highly variable genes for the embedding")
    m.add_argument("--n-pcs", type=int, default=50, help="PCA components")
    m.add_argument("--model", help="learned embedding: mae, gp-mae, byol, barlow, or a model checkpoint directory")
    m.add_argument("--epochs", type=int, default=10, help="pretraining epochs with --model METHOD")
    m.add_argument("--model-seeds", type=int, default=1, metavar="N",
                   help="with --model mae or gp-mae: train N models (seeds SEED..SEED+N-1) so that virtual-cell "
                        "intervals include training randomness")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--de", action="store_true",
                   help="also precompute pseudobulk DE of every cell type (as `vcell de`; about doubles build time)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vcell", description="Virtual Cell Explorer: build and explore atlas bundles.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="write a generated (synthetic) atlas with known ground truth")
    p.add_argument("--cells", type=int, default=50_000, help="number of cells")
    p.add_argument("--genes", type=int, default=None, help="number of genes (default: the 765 real profile genes)")
    p.add_argument("--donors", type=int, default=4, help="donors per condition")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["soma", "h5ad"], default="soma")
    p.add_argument("--jobs", type=int, default=1, help="worker processes sampling cells")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--out", required=True, help="output directory")

    p = sub.add_parser("census", help="download a CELLxGENE census slice (tissue / disease / cell type) as .h5ad")
    p.add_argument("--tissue", help="census tissue_general, e.g. lung or blood")
    p.add_argument("--disease", help="census disease, e.g. 'COVID-19' or normal")
    p.add_argument("--cell-type", help="census cell_type, e.g. 'classical monocyte'")
    p.add_argument("--max-cells", type=int, default=100_000, help="sample at most this many matching cells")
    p.add_argument("--organism", default="homo_sapiens")
    p.add_argument("--census-version", default="stable")
    p.add_argument("--uri", help="a census copy (path or URI) instead of the public census")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="the .h5ad file to write (then: vcell build OUT --out ...)")

    p = sub.add_parser("build", help="build an atlas bundle from .h5ad, a SOMA experiment or generated data")
    p.add_argument("input", help="input .h5ad file, TileDB-SOMA experiment (path or URI) or `vcell generate` output")
    p.add_argument("--out", required=True, help="bundle directory to write, e.g. covid.vcell")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted streaming build (inputs above 200k cells) from OUT.partial/, "
                        "skipping its completed steps; small inputs are built in memory and ignore it")
    _add_build_options(p)

    p = sub.add_parser("pretrain", help="pretrain a masked or contrastive encoder on a bundle's cells")
    p.add_argument("bundle", help="a bundle (build one from .h5ad / SOMA with `vcell build` first)")
    p.add_argument("--method", required=True, help="mae, gp-mae, byol, barlow or supervised")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-cells", type=int, default=None, help="train on a seeded subset of cells")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUT has a last checkpoint")
    p.add_argument("--out", required=True, help="run directory; the model is written to OUT/model")

    p = sub.add_parser("embed", help="add a saved model's embedding of every cell to a bundle")
    p.add_argument("bundle")
    p.add_argument("--model", required=True, help="model checkpoint directory (e.g. RUN/model from vcell pretrain)")

    p = sub.add_parser("embed-shards", help="embed a bundle's cells with a saved model in several processes "
                                            "(DDP; one shard of rows each; torchrun / srun on a cluster)")
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

    p = sub.add_parser("merge-shards", help="merge embed-shards output into one embedding and one FAISS index")
    p.add_argument("dir", help="the --out directory of embed-shards")
    p.add_argument("--bundle", help="also add the merged embedding and index to this bundle (the one embedded)")
    p.add_argument("--factory", help="FAISS factory (default: that of the shard indexes, else chosen by size)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("de", help="precompute pseudobulk DE (DESeq2 over donors) per cell type into a bundle")
    p.add_argument("bundle")
    p.add_argument("--cell-type", action="append", default=None, help="only this cell type (repeatable)")
    p.add_argument("--condition", action="append", default=None,
                   help="only this condition against the reference (repeatable)")
    p.add_argument("--reference", help="the reference condition (default: the bundle's, else the first in A-Z order)")

    p = sub.add_parser("annotate", help="transfer cell types from a labelled reference (kNN in reference PCA)")
    p.add_argument("bundle", help="the bundle to annotate (replaced in place unless --out is given)")
    p.add_argument("--reference", required=True, help="a labelled bundle or .h5ad with a cell-type column")
    p.add_argument("--out", help="write the annotated bundle here instead of replacing BUNDLE")
    p.add_argument("-k", type=int, default=15, help="reference neighbours that vote")
    p.add_argument("--threshold", type=float, default=0.5, help="vote share below which a cell is 'unknown'")
    p.add_argument("--reference-cell-type-key", help="the reference's cell-type column (guessed when not given)")
    p.add_argument("--gene-map", help="TSV/CSV of Ensembl ID and gene symbol, overriding the shipped GENCODE table")

    p = sub.add_parser("validate", help="check a bundle's parts against its manifest")
    p.add_argument("bundle")

    p = sub.add_parser("evaluate", help="score the bundle's embeddings against baselines on held-out donors")
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

    p = sub.add_parser("evaluate-response", help="virtual cell on real data: predict each held-out cell type's "
                                                 "response to a condition, model against baselines")
    p.add_argument("bundle")
    p.add_argument("--condition-a", required=True, help="the control condition, e.g. CTRL")
    p.add_argument("--condition-b", required=True, help="the response condition, e.g. STIM")
    p.add_argument("--cell-types", help="comma-separated cell types to hold out (default: all with 10+ cells in both)")
    p.add_argument("--retrain", action="store_true",
                   help="retrain the masked autoencoder per held-out type without its response cells (honest; "
                        "slower); default: the bundle's model, which saw them unlabelled")
    p.add_argument("--epochs", type=int, default=10, help="training epochs with --retrain")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("perturb", help="predict a knock-out / knock-down / over-expression in a population")
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

    p = sub.add_parser("serve", help="open the dashboard on a bundle")
    p.add_argument("bundle")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--headless", action="store_true", help="do not open a browser window")

    p = sub.add_parser("demo", help="generate a demo atlas, build it and open the dashboard")
    p.add_argument("--cells", type=int, default=30_000)
    p.add_argument("--dir", default="demo", help="where the demo atlas and bundle go")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--headless", action="store_true")
    p.add_argument("--no-serve", action="store_true", help="build only")
    return parser


def _options(args: argparse.Namespace):
    from engine.build.prepare import BuildOptions

    return BuildOptions(cell_type_key=args.cell_type_key, condition_key=args.condition_key,
                        donor_key=args.donor_key, batch_key=args.batch_key,
                        reference_condition=args.reference_condition, gene_map=args.gene_map,
                        n_hvg=args.n_hvg, n_pcs=args.n_pcs, model=args.model, epochs=args.epochs, seed=args.seed,
                        model_seeds=args.model_seeds, de=args.de)


def serve(bundle: str | os.PathLike, port: int = 8501, headless: bool = False) -> int:
    """Start the Streamlit dashboard on ``bundle`` (after checking it opens).

    Streamlit itself always runs headless (otherwise its first run asks for an e-mail on
    the terminal); unless ``headless``, a browser tab is opened once the server answers.
    """
    from engine.bundle.atlas import read_atlas

    read_atlas(bundle)  # fail here, in one sentence, rather than inside the app
    env = {**os.environ, "VCELL_BUNDLE": str(Path(bundle).resolve())}
    url = f"http://localhost:{port}"
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
           "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    print(f"serving {bundle} at {url} (Ctrl+C to stop)", flush=True)
    server = subprocess.Popen(cmd, env=env, cwd=APP.parent)  # Streamlit reads .streamlit/ from the cwd
    if not headless:
        threading.Thread(target=_open_browser_when_up, args=(url, server), daemon=True).start()
    try:
        return server.wait()
    except KeyboardInterrupt:
        server.terminate()
        return server.wait()


def _open_browser_when_up(url: str, server: subprocess.Popen, timeout: float = 120.0) -> None:
    """Open ``url`` in the user's browser once the server answers (no-op without a browser)."""
    import urllib.request
    import webbrowser

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
        except OSError:
            time.sleep(0.5)
            continue
        webbrowser.open(url)
        return


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vcell`` console script."""
    args = _parser().parse_args(argv)
    command = "vcell " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    try:
        return _run(args, command)
    except (VCellError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, command: str) -> int:
    from engine.progress import TqdmProgress

    if args.command == "generate":
        from engine.data.synth.generate import generate_atlas

        with TqdmProgress("generate") as progress:
            out = generate_atlas(args.out, args.cells, n_genes=args.genes, n_donors_per_condition=args.donors,
                                 seed=args.seed, fmt=args.format, overwrite=args.overwrite, n_jobs=args.jobs,
                                 progress=progress)
        print(f"GENERATED atlas ({args.cells:,} synthetic cells) written to {out}")
        return 0
    if args.command == "census":
        return _census(args)
    if args.command == "build":
        from engine.build.checkpoint import partial_path
        from engine.build.pipeline import build_atlas

        try:
            with TqdmProgress("build") as progress:
                out = build_atlas(args.input, args.out, _options(args), overwrite=args.overwrite, command=command,
                                  progress=progress, resume=args.resume)
        except (KeyboardInterrupt, Exception) as exc:
            if partial_path(args.out).exists() and not isinstance(exc, VCellError):
                print(f"build stopped; the steps done so far are kept in {partial_path(args.out)}: continue with "
                      "the same command and --resume", file=sys.stderr)
            if isinstance(exc, KeyboardInterrupt):
                return 130
            raise
        print(f"bundle written to {out}; open it with: vcell serve {out}")
        return 0
    if args.command == "pretrain":
        from engine.build.pretrain import pretrain

        model = pretrain(args.bundle, args.method, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         max_cells=args.max_cells, seed=args.seed, out=args.out, resume=not args.no_resume,
                         progress_bar=True)
        print(f"model written to {model}; use it with: vcell embed BUNDLE --model {model}")
        return 0
    if args.command == "embed":
        from engine.build.embed import add_embedding

        with TqdmProgress("embed") as progress:
            name = add_embedding(args.bundle, args.model, progress=progress)
        print(f"{name} added to {args.bundle}; compare it with: vcell evaluate {args.bundle}")
        return 0
    if args.command == "embed-shards":
        return _embed_shards(args)
    if args.command == "merge-shards":
        from engine.scale.merge import merge_shards

        with TqdmProgress("merge") as progress:
            result = merge_shards(args.dir, bundle=args.bundle, factory=args.factory, seed=args.seed,
                                  progress=progress)
        where = f"; {result.name} added to {result.bundle}" if result.bundle else ""
        print(f"merged {result.info['n']:,} cells into {result.embedding} and {result.index} "
              f"({result.info['factory']}){where}")
        return 0
    if args.command == "de":
        return _de(args)
    if args.command == "annotate":
        return _annotate(args, command)
    if args.command == "perturb":
        return _perturb(args)
    if args.command == "validate":
        from engine.bundle.atlas import validate_atlas

        problems = validate_atlas(args.bundle)
        for problem in problems:
            print(f"problem: {problem}", file=sys.stderr)
        print(f"{args.bundle}: " + ("OK" if not problems else f"{len(problems)} problem(s)"))
        return 0 if not problems else 1
    if args.command == "evaluate-response":
        return _evaluate_response(args)
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "serve":
        return serve(args.bundle, args.port, args.headless)
    if args.command == "demo":
        return _demo(args, command)
    raise AssertionError(args.command)


def _embed_shards(args: argparse.Namespace) -> int:
    """Every process of the run executes this; rank 0 reports."""
    from engine.scale.shards import embed_shards

    devices = int(args.devices) if str(args.devices).isdigit() else args.devices
    shard = embed_shards(args.bundle, args.checkpoint, args.out, devices=devices, num_nodes=args.num_nodes,
                         accelerator=args.accelerator, batch_size=args.batch_size, factory=args.factory,
                         seed=args.seed, num_workers=args.num_workers, progress_bar=True)
    if shard.rank == 0:
        print(f"{shard.world_size} shard(s) of {shard.n_cells:,} cells written to {args.out}; merge them with: "
              f"vcell merge-shards {args.out} --bundle {args.bundle}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    """Evaluate a bundle's embeddings and store the tables in BUNDLE/evaluation/."""
    from engine.bundle.atlas import read_atlas
    from engine.errors import InputError
    from engine.evaluate.metrics import summarise
    from engine.evaluate.suite import evaluate_bundle, save_evaluation

    atlas = read_atlas(args.bundle)
    names = args.embeddings.split(",") if args.embeddings else atlas.manifest["embedding"]["available"]
    checkpoints = {}
    for option in ("finetune", "reconstruct"):
        items = getattr(args, option)
        if any("=" not in item for item in items):
            raise InputError(f"--{option} takes NAME=CHECKPOINT, e.g. --{option} X_mae=run/model.")
        checkpoints[option] = dict(item.split("=", 1) for item in items) or None
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


def _evaluate_response(args: argparse.Namespace) -> int:
    """Leave each cell type out, predict its response, store the scores in BUNDLE/evaluation/response/."""
    import tempfile

    from engine.bundle.atlas import read_atlas
    from engine.perturb.evaluation import holdout_condition_response, holdout_trainer, save_response, summarise_response
    from engine.progress import TqdmProgress

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


def _de(args: argparse.Namespace) -> int:
    """Precompute pseudobulk DE into BUNDLE/summaries/de/ and print one line per contrast."""
    from engine.bundle.atlas import read_atlas
    from engine.compare.pseudobulk import precompute_de
    from engine.progress import TqdmProgress

    atlas = read_atlas(args.bundle)
    with TqdmProgress("de") as progress:
        table = precompute_de(atlas, cell_types=args.cell_type, conditions=args.condition, reference=args.reference,
                              progress=progress)
    for row in table.itertuples():
        result = f"skipped: {row.skipped}" if row.skipped else \
            f"{row.n_up} up, {row.n_down} down of {row.n_genes_tested:,} genes (padj < 0.05)"
        print(f"{row.cell_type}: {row.b} vs {row.a}: {result}")
    done = int((table["skipped"] == "").sum())
    print(f"pseudobulk DE of {done} of {len(table)} contrast(s) cached in {atlas.path / 'summaries' / 'de'}; "
          f"the dashboard's Compare page reads it")
    return 0


def _check_perturb_options(args: argparse.Namespace, genes: list[str]) -> None:
    """Refuse ``--versus`` without a population and condition A, and ``--additive`` with one gene."""
    from engine.errors import InputError

    if args.versus is not None and (args.cell_type is None or args.condition is None):
        raise InputError("--versus B compares the perturbation in one cell type between condition A and B: give "
                         "--cell-type and --condition (condition A) too.")
    if args.additive and len(genes) < 2:
        raise InputError(f"--additive compares a combination with the sum of its single-gene effects: give two or "
                         f"more --genes (got {len(genes)}).")


def _write_csv(table, path: Path) -> None:
    """Write ``table`` (a DataFrame) to ``path`` as CSV, atomically."""
    from engine.fileio import atomic_path

    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def _beside(out: Path, suffix: str) -> Path:
    """``OUT_suffix.csv`` beside ``out``."""
    return out.with_name(out.stem + suffix + out.suffix)


def _perturb_versus(atlas, genes: list[str], args: argparse.Namespace, method: str, out: Path) -> Path:
    """Compare the perturbation in condition A and B, write the table, print the reversal score."""
    from engine.perturb.conditions import compare_conditions_effect, reversal_score

    options = dict(cell_type=args.cell_type, condition_a=args.condition, condition_b=args.versus,
                   strength=args.strength, method=method, seed=args.seed)
    effect = compare_conditions_effect(atlas, genes, args.mode, **options)
    reversal = reversal_score(atlas, genes, args.mode, **options)
    path = _beside(out, "_conditions")
    _write_csv(effect.table, path)
    for note in effect.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{effect.description}: {effect.n_units[0]} + {effect.n_units[1]} {effect.units} permuted")
    print(f"reversal score {reversal.score:+.3f} (does it move '{args.versus}' toward '{args.condition}'): above "
          f"{reversal.percentile:.0%} of {reversal.control_scores.size} matched control gene sets, p = "
          f"{reversal.pval:.2g}")
    return path


def _perturb_additive(atlas, genes: list[str], args: argparse.Namespace, method: str, out: Path) -> Path:
    """Write the joint prediction beside the sum of single-gene predictions; print their Pearson r."""
    from engine.perturb.baselines import additive_combination

    result = additive_combination(atlas, genes, args.mode, cell_type=args.cell_type, condition=args.condition,
                                  strength=args.strength, method=method, seed=args.seed)
    path = _beside(out, "_additive")
    _write_csv(result.table, path)
    print(f"joint vs additive prediction of the combination: Pearson r = {result.pearson_r:.3f}")
    return path


def _perturb(args: argparse.Namespace) -> int:
    """Predict a perturbation and write its table (and each baseline's) as CSV, atomically.

    ``--versus`` and ``--additive`` add the across-conditions table (with the reversal score)
    and the additive-model table beside it.
    """
    from engine.bundle.atlas import read_atlas
    from engine.perturb.predict import perturb
    from engine.progress import TqdmProgress

    genes = [g.strip() for g in args.genes.split(",") if g.strip()]
    _check_perturb_options(args, genes)
    atlas = read_atlas(args.bundle)
    method = args.method or ("model" if atlas.manifest.get("model", {}).get("name") in ("mae", "gp-mae")
                             else "ridge")
    with TqdmProgress("perturb") as progress:
        result = perturb(atlas, genes, args.mode, strength=args.strength, cell_type=args.cell_type,
                         condition=args.condition, method=method, seed=args.seed, progress=progress)
    out = Path(args.out)
    tables = {"": result.table, **{f"_{name.split()[0]}": table
                                   for name, table in getattr(result, "baselines", {}).items()}}
    for suffix, table in tables.items():
        _write_csv(table, _beside(out, suffix))
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    top = result.table[~result.table["is_target"]].head(10)
    print(f"{result.spec.describe()} in {result.population} ({result.n_cells:,} cells), {result.method}:")
    print(top[["gene", "shift", "ci_low", "ci_high"]].to_string(index=False, float_format="{:+.3f}".format))
    beside = [_beside(out, s).name for s in tables if s]
    if args.versus is not None:
        beside.append(_perturb_versus(atlas, genes, args, method, out).name)
    if args.additive:
        beside.append(_perturb_additive(atlas, genes, args, method, out).name)
    print(f"written to {out}" + (f" (beside it: {', '.join(beside)})" if beside else ""))
    return 0


def _annotate(args: argparse.Namespace, command: str) -> int:
    """Annotate a bundle by label transfer and print the per-type summary."""
    from engine.annotate.apply import annotate_bundle
    from engine.progress import TqdmProgress

    with TqdmProgress("annotate") as progress:
        result = annotate_bundle(args.bundle, args.reference, out=args.out, k=args.k, threshold=args.threshold,
                                 reference_cell_type_key=args.reference_cell_type_key, gene_map=args.gene_map,
                                 command=command, progress=progress)
    genes = result.info["genes"]
    print(f"{genes['n_shared']:,} shared genes ({100 * genes['reference_hvg_fraction']:.0f}% of the reference's "
          f"highly variable genes); {result.info['n_unknown']:,} of {result.info['n_query_cells']:,} cells "
          f"unknown (confidence < {args.threshold:g})")
    print(result.summary.to_string(index=False, formatters={"fraction": "{:.1%}".format,
                                                            "mean_confidence": "{:.3f}".format}))
    print(f"annotated bundle written to {args.out or args.bundle}; open it with: vcell serve {args.out or args.bundle}")
    return 0


def _census(args: argparse.Namespace) -> int:
    """Query the census and write the slice as .h5ad, atomically."""
    from engine.data.soma import census_query
    from engine.errors import InputError
    from engine.fileio import atomic_path

    out = Path(args.out)
    if out.suffix != ".h5ad":
        raise InputError(f"--out must end in .h5ad (got {out.name}).")
    adata = census_query(organism=args.organism, tissue=args.tissue, disease=args.disease, cell_type=args.cell_type,
                         max_cells=args.max_cells, census_version=args.census_version, uri=args.uri, seed=args.seed)
    adata.uns.pop("vcell_source", None)  # may hold values h5py cannot write; the query is printed below
    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp)
    print(f"{adata.n_obs:,} census cells x {adata.n_vars:,} genes written to {out}; build it with: "
          f"vcell build {out} --out {out.with_suffix('.vcell')}")
    return 0


def _demo(args: argparse.Namespace, command: str) -> int:
    """Generate (once) a demo atlas, build (once) its bundle, and serve it."""
    from engine.build.pipeline import build_atlas
    from engine.build.prepare import BuildOptions
    from engine.data.synth.generate import generate_atlas
    from engine.progress import TqdmProgress

    root = Path(args.dir)
    source = root / f"generated-{args.cells}"
    bundle = root / f"generated-{args.cells}.vcell"
    if not source.exists():
        with TqdmProgress("generate") as progress:
            generate_atlas(source, args.cells, progress=progress)
    if not bundle.exists():
        with TqdmProgress("build") as progress:
            build_atlas(source, bundle, BuildOptions(), command=command, progress=progress)
    if args.no_serve:
        print(f"demo bundle ready at {bundle}")
        return 0
    return serve(bundle, args.port, args.headless)


if __name__ == "__main__":
    sys.exit(main())
