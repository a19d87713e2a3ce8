"""``vcell generate``, ``census``, ``build`` and ``validate``: making an atlas bundle and checking it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.build.checkpoint import partial_path
from engine.build.pipeline import build_atlas
from engine.build.prepare import BuildOptions
from engine.bundle.atlas import validate_atlas
from engine.data.soma import write_census
from engine.data.synth.generate import generate_atlas
from engine.errors import VCellError
from engine.progress import TqdmProgress


def add_generate(p: argparse.ArgumentParser) -> None:
    """Options of ``vcell generate``."""
    p.add_argument("--cells", type=int, default=50_000, help="number of cells")
    p.add_argument("--genes", type=int, default=None, help="number of genes (default: the 765 real profile genes)")
    p.add_argument("--donors", type=int, default=4, help="donors per condition")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["soma", "h5ad"], default="soma")
    p.add_argument("--jobs", type=int, default=1, help="worker processes sampling cells")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(handler=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    """Write a generated atlas."""
    with TqdmProgress("generate") as progress:
        out = generate_atlas(args.out, args.cells, n_genes=args.genes, n_donors_per_condition=args.donors,
                             seed=args.seed, fmt=args.format, overwrite=args.overwrite, n_jobs=args.jobs,
                             progress=progress)
    print(f"GENERATED atlas ({args.cells:,} synthetic cells) written to {out}")
    return 0


def add_census(p: argparse.ArgumentParser) -> None:
    """Options of ``vcell census``."""
    p.add_argument("--tissue", help="census tissue_general, e.g. lung or blood")
    p.add_argument("--disease", help="census disease, e.g. 'COVID-19' or normal")
    p.add_argument("--cell-type", help="census cell_type, e.g. 'classical monocyte'")
    p.add_argument("--max-cells", type=int, default=100_000, help="sample at most this many matching cells")
    p.add_argument("--organism", default="homo_sapiens")
    p.add_argument("--census-version", default="stable")
    p.add_argument("--uri", help="a census copy (path or URI) instead of the public census")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="the .h5ad file to write (then: vcell build OUT --out ...)")
    p.set_defaults(handler=run_census)


def run_census(args: argparse.Namespace) -> int:
    """Write a census slice as .h5ad."""
    out = Path(args.out)
    adata = write_census(out, organism=args.organism, tissue=args.tissue, disease=args.disease,
                         cell_type=args.cell_type, max_cells=args.max_cells, census_version=args.census_version,
                         uri=args.uri, seed=args.seed)
    print(f"{adata.n_obs:,} census cells x {adata.n_vars:,} genes written to {out}; build it with: "
          f"vcell build {out} --out {out.with_suffix('.vcell')}")
    return 0


def add_build(p: argparse.ArgumentParser) -> None:
    """Options of ``vcell build``."""
    p.add_argument("input", help="input .h5ad file, TileDB-SOMA experiment (path or URI) or `vcell generate` output")
    p.add_argument("--out", required=True, help="bundle directory to write, e.g. covid.vcell")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted streaming build (inputs above 200k cells) from OUT.partial/, "
                        "skipping its completed steps; small inputs are built in memory and ignore it")
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
    p.set_defaults(handler=run_build)


def run_build(args: argparse.Namespace) -> int:
    """Build a bundle; on Ctrl-C (exit 130) or a crash, say how to resume from ``OUT.partial/``."""
    options = BuildOptions(cell_type_key=args.cell_type_key, condition_key=args.condition_key,
                           donor_key=args.donor_key, batch_key=args.batch_key,
                           reference_condition=args.reference_condition, gene_map=args.gene_map,
                           n_hvg=args.n_hvg, n_pcs=args.n_pcs, model=args.model, epochs=args.epochs, seed=args.seed,
                           model_seeds=args.model_seeds, de=args.de)
    try:
        with TqdmProgress("build") as progress:
            out = build_atlas(args.input, args.out, options, overwrite=args.overwrite, command=args.command_line,
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


def add_validate(p: argparse.ArgumentParser) -> None:
    """Options of ``vcell validate``."""
    p.add_argument("bundle")
    p.set_defaults(handler=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    """List a bundle's problems on stderr; exit 1 when there are any."""
    problems = validate_atlas(args.bundle)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    print(f"{args.bundle}: " + ("OK" if not problems else f"{len(problems)} problem(s)"))
    return 0 if not problems else 1


COMMANDS = {"generate": add_generate, "census": add_census, "build": add_build, "validate": add_validate}
