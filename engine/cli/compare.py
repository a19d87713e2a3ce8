"""``vcell de`` and ``annotate``: pseudobulk DE cached in a bundle, and cell types by label transfer."""

from __future__ import annotations

import argparse

from engine.annotate.apply import annotate_bundle
from engine.bundle.atlas import read_atlas
from engine.compare.pseudobulk import precompute_de
from engine.progress import TqdmProgress


def add_de(p: argparse.ArgumentParser) -> None:
    """Options of ``vcell de``."""
    p.add_argument("bundle")
    p.add_argument("--cell-type", action="append", default=None, help="only this cell type (repeatable)")
    p.add_argument("--condition", action="append", default=None,
                   help="only this condition against the reference (repeatable)")
    p.add_argument("--reference", help="the reference condition (default: the bundle's, else the first in A-Z order)")
    p.set_defaults(handler=run_de)


def run_de(args: argparse.Namespace) -> int:
    """Precompute pseudobulk DE into BUNDLE/summaries/de/ and print one line per contrast."""
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


def add_annotate(p: argparse.ArgumentParser) -> None:
    """Options of ``vcell annotate``."""
    p.add_argument("bundle", help="the bundle to annotate (replaced in place unless --out is given)")
    p.add_argument("--reference", required=True, help="a labelled bundle or .h5ad with a cell-type column")
    p.add_argument("--out", help="write the annotated bundle here instead of replacing BUNDLE")
    p.add_argument("-k", type=int, default=15, help="reference neighbours that vote")
    p.add_argument("--threshold", type=float, default=0.5, help="vote share below which a cell is 'unknown'")
    p.add_argument("--reference-cell-type-key", help="the reference's cell-type column (guessed when not given)")
    p.add_argument("--gene-map", help="TSV/CSV of Ensembl ID and gene symbol, overriding the shipped GENCODE table")
    p.set_defaults(handler=run_annotate)


def run_annotate(args: argparse.Namespace) -> int:
    """Annotate a bundle by label transfer and print the per-type summary."""
    with TqdmProgress("annotate") as progress:
        result = annotate_bundle(args.bundle, args.reference, out=args.out, k=args.k, threshold=args.threshold,
                                 reference_cell_type_key=args.reference_cell_type_key, gene_map=args.gene_map,
                                 command=args.command_line, progress=progress)
    genes = result.info["genes"]
    print(f"{genes['n_shared']:,} shared genes ({100 * genes['reference_hvg_fraction']:.0f}% of the reference's "
          f"highly variable genes); {result.info['n_unknown']:,} of {result.info['n_query_cells']:,} cells "
          f"unknown (confidence < {args.threshold:g})")
    print(result.summary.to_string(index=False, formatters={"fraction": "{:.1%}".format,
                                                            "mean_confidence": "{:.3f}".format}))
    print(f"annotated bundle written to {args.out or args.bundle}; open it with: vcell serve {args.out or args.bundle}")
    return 0


COMMANDS = {"de": add_de, "annotate": add_annotate}
