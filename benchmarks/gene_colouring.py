"""Colouring every cell by a gene: the gene-major copy against the row-order SOMA store.

    python benchmarks/gene_colouring.py BUNDLE [--genes 20] [--baseline-genes 1]

For ``--genes`` genes spread over expression levels (highly variable first, by mean), times
:meth:`engine.bundle.atlas.Atlas.gene_values` (``store/by_gene``: one slice per gene, memory-mapped),
the first read of each gene and a repeat, and checks the values against a read of the same
column from the SOMA ``lognorm`` layer (the baseline: the row-major store, where a column means
visiting every tile) for ``--baseline-genes`` of them. Prints one markdown table.

The first read is "first in this process": pages the build just wrote may still be in the
operating system's page cache (the table says how much memory the machine has).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import numpy as np
import pandas as pd

from mdtable import markdown

from engine.bundle.atlas import read_atlas
from engine.data.store import LOGNORM, MEASUREMENT


def pick_genes(var: pd.DataFrame, n: int) -> np.ndarray:
    """``n`` gene positions spread evenly over mean expression (rarest to most common)."""
    order = np.argsort(var["mean"].to_numpy())
    return order[np.linspace(0, len(order) - 1, min(n, len(order))).round().astype(int)]


def soma_column(atlas, gene: int, n_rows: int | None = None) -> np.ndarray:
    """One gene for every cell (or the first ``n_rows``), read from the SOMA ``lognorm`` layer (row order)."""
    array = atlas.store._experiment.ms[MEASUREMENT].X[LOGNORM]
    n_rows = atlas.n_cells if n_rows is None else min(n_rows, atlas.n_cells)
    values = np.zeros(n_rows, dtype=np.float32)
    for table in array.read(coords=(slice(0, n_rows - 1), [int(gene)])).tables():
        values[table["soma_dim_0"].to_numpy()] = table["soma_data"].to_numpy()
    return values


def main() -> None:
    """Time the reads and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--genes", type=int, default=20)
    parser.add_argument("--baseline-genes", type=int, default=1)
    args = parser.parse_args()
    atlas = read_atlas(args.bundle)
    genes = pick_genes(atlas.var, args.genes)
    _ = atlas.store.n_cells, atlas.genes  # open the store once (as the dashboard does), outside the timings
    rows = []
    for g in genes:
        start = time.perf_counter()
        values = atlas.gene_values(int(g))
        first = time.perf_counter() - start
        start = time.perf_counter()
        atlas.gene_values(int(g))
        again = time.perf_counter() - start
        rows.append({"gene": atlas.genes.label(int(g)), "cells expressing": int(np.count_nonzero(values)),
                     "first read s": first, "repeat s": again})
    table = pd.DataFrame(rows)
    baseline = []
    for g in genes[-args.baseline_genes:] if args.baseline_genes else []:  # the most expressed
        start = time.perf_counter()
        column = soma_column(atlas, int(g))
        baseline.append(time.perf_counter() - start)
        ours = atlas.gene_values(int(g))
        np.testing.assert_allclose(ours, column, rtol=2e-3, atol=1e-3)  # float16 copy above 1M cells
        assert np.array_equal(ours > 0, column > 0)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, {memory:.0f} GiB RAM; "
          f"{args.bundle}: {atlas.n_cells:,} cells x {atlas.n_genes:,} genes, gene-major values "
          f"{np.load(atlas.path / 'store' / 'by_gene' / 'data.npy', mmap_mode='r').dtype}")
    print(markdown(table, index=False, digits=3))
    summary = pd.DataFrame([
        {"read": "gene-major copy, first read (median / max)",
         "seconds": f"{table['first read s'].median():.3f} / {table['first read s'].max():.3f}"},
        {"read": "gene-major copy, repeat (median)", "seconds": f"{table['repeat s'].median():.3f}"},
    ] + ([{"read": f"SOMA row-order store, one column (mean of {len(baseline)})",
           "seconds": f"{np.mean(baseline):.2f}"}] if baseline else []))
    print()
    print(markdown(summary, index=False))
    if baseline:
        print(f"\nthe gene-major copy is {np.mean(baseline) / table['first read s'].median():,.0f}x faster "
              "than a column of the row-order store (same values, checked)")


if __name__ == "__main__":
    main()
