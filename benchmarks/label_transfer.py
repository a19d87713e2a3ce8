"""Benchmark: label transfer (`vcell annotate`, engine.annotate.label_transfer) accuracy, time and memory.

1. **Held-out donors, Kang control PBMC** (kang_ctrl_reference.h5ad, 5 donors, 4 types): for each donor,
   reference = the other four, query = that donor; macro-F1, accuracy (``unknown`` counts as wrong) and %
   unknown at several thresholds, plus a control with shuffled reference labels.
2. **Across data sets**: kang_ifnb_donors.h5ad (muscat, ``cluster_id``) annotated from kang_ifnb_1k.h5ad
   (Seurat, ``seurat_annotations``). The label names differ, so the confusion table is printed as is; the
   accuracy uses a small explicit name map (below, for this benchmark only).
3. **Scale** (optional, ``--big BUNDLE --reference-bundle REF``): `vcell annotate BIG --reference REF --out ...`
   in its own process; wall time and peak RSS, and accuracy against the generator's true cell types.

Usage::

    python benchmarks/label_transfer.py [--thresholds 0 0.5 0.7] [--big gen-200k.vcell --reference-bundle gen-20k.vcell]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_bundle import run  # noqa: E402  (wall seconds and peak RSS of one child process)

from engine.annotate.label_transfer import CellData, read_cells, transfer_labels  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NAME_MAP = {"B cells": {"B"}, "CD14+ Monocytes": {"CD14 Mono"}, "FCGR3A+ Monocytes": {"CD16 Mono"},
            "CD4 T cells": {"CD4 Naive T", "CD4 Memory T"}, "CD8 T cells": {"CD8 T"}}
"""muscat ``cluster_id`` -> the Seurat ``seurat_annotations`` names counted as correct (benchmark only)."""


def scores(truth: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Macro-F1 over the true types, accuracy (all cells; among the cells given a type), and % ``unknown``."""
    called = labels != "unknown"
    return {"macro_f1": f1_score(truth, labels, labels=np.unique(truth), average="macro", zero_division=0),
            "accuracy": float(np.mean(truth == labels)),
            "accuracy_called": float(np.mean(truth[called] == labels[called])) if called.any() else float("nan"),
            "unknown_pct": 100 * float(np.mean(~called))}


def at(result, threshold: float) -> np.ndarray:
    """The result's labels at another threshold (the vote does not depend on it)."""
    return np.where(result.confidence >= threshold, result.predicted, "unknown").astype(str)


def held_out_donors(thresholds: list[float]) -> pd.DataFrame:
    """Section 1: one row per (held-out donor, threshold), plus the shuffled-label control."""
    path = DATA / "kang_ctrl_reference.h5ad"
    cells = read_cells(path, cell_type_key="cluster_id")
    donors = ad.read_h5ad(path).obs["sample_id"].astype(str).to_numpy()
    rows = []
    for donor in np.unique(donors):
        reference, query = cells.subset(np.flatnonzero(donors != donor)), cells.subset(np.flatnonzero(donors == donor))
        result = transfer_labels(reference, query, threshold=0.0)
        for threshold in thresholds:
            rows.append({"held_out": donor, "n_query": query.n_cells, "threshold": threshold,
                         **scores(query.labels, at(result, threshold))})
        shuffled = CellData(reference.store, reference.genes, np.random.default_rng(0).permutation(reference.labels))
        control = transfer_labels(shuffled, query, threshold=0.0)
        rows.append({"held_out": donor, "n_query": query.n_cells, "threshold": "shuffled labels",
                     **scores(query.labels, at(control, 0.0))})
    return pd.DataFrame(rows)


def across_data_sets(thresholds: list[float]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Section 2: scores with :data:`NAME_MAP`, the confusion table at 0.5, and the gene overlap."""
    query = read_cells(DATA / "kang_ifnb_donors.h5ad", cell_type_key="cluster_id")
    result = transfer_labels(DATA / "kang_ifnb_1k.h5ad", query, threshold=0.0)
    rows = []
    for threshold in thresholds:
        labels = at(result, threshold)
        correct = np.array([label in NAME_MAP.get(truth, ()) for truth, label in zip(query.labels, labels)])
        mapped = np.where(correct, query.labels, labels)  # a correct call counts under its muscat name
        rows.append({"threshold": threshold, **scores(query.labels, mapped)})
    confusion = pd.crosstab(pd.Series(query.labels, name="kang_ifnb_donors cluster_id"),
                            pd.Series(at(result, 0.5), name="transferred (kang_ifnb_1k names)"))
    return pd.DataFrame(rows), confusion, result.info["genes"]


def scale(big: Path, reference: Path) -> dict:
    """Section 3: `vcell annotate` of ``big`` from ``reference`` in a child process; time, peak, accuracy."""
    from engine.bundle.atlas import read_atlas

    with tempfile.TemporaryDirectory(dir=big.parent) as tmp:
        out = Path(tmp) / "annotated.vcell"
        wall, peak = run([sys.executable, "-m", "engine.cli", "annotate", str(big), "--reference", str(reference),
                          "--out", str(out)])
        obs = read_atlas(out).obs
        truth = obs["cell_type_previous"].astype(str).to_numpy()
        found = scores(truth, obs["cell_type"].astype(str).to_numpy())
    return {"cells": len(obs), "reference_cells": read_atlas(reference).n_cells, "wall_s": wall, "peak_gib": peak,
            **found}


class GeneratedRows:
    """Row reads of a `vcell generate` SOMA output (raw counts), the store interface label transfer streams from.

    Lets the query side of the transfer be measured on more cells than `vcell build` holds in memory here.
    """

    layers = ["counts"]

    def __init__(self, path: Path):
        import tiledbsoma

        self._experiment = tiledbsoma.Experiment.open(str(path / "atlas.soma"))
        self._x = self._experiment.ms["RNA"].X["counts"]
        self.n_cells, self.n_genes = (int(v) for v in self._x.shape)

    def rows(self, cells: np.ndarray, genes: np.ndarray | None = None, layer: str = "counts"):
        """Counts of ``cells`` (sorted positions) x ``genes`` as CSR."""
        import scipy.sparse as sp

        cells = np.asarray(cells, dtype=np.int64)
        table = self._x.read(coords=(cells,)).tables().concat()
        rows = np.searchsorted(cells, table["soma_dim_0"].to_numpy())
        matrix = sp.csr_matrix((table["soma_data"].to_numpy().astype(np.float32),
                                (rows, table["soma_dim_1"].to_numpy())), shape=(len(cells), self.n_genes))
        return matrix if genes is None else matrix[:, np.asarray(genes)]

    def cell_types(self) -> np.ndarray:
        """The generator's true cell type of every cell."""
        obs = self._experiment.obs.read(column_names=["cell_type"]).concat().to_pandas()
        return obs["cell_type"].astype(str).to_numpy()

    def genes(self) -> pd.DataFrame:
        """Gene table of the generated genes."""
        from engine.data.genes import gene_table

        var = self._experiment.ms["RNA"].var.read().concat().to_pandas().set_index("var_id")
        return gene_table(var)


def stream_generated(generated: Path, reference: Path, out: Path) -> None:
    """Child process of :func:`scale_generated`: transfer labels to every generated cell, write scores as JSON."""
    import json
    import time

    start = time.perf_counter()
    rows = GeneratedRows(generated)
    result = transfer_labels(reference, CellData(rows, rows.genes()))
    seconds = time.perf_counter() - start
    found = scores(rows.cell_types(), result.labels.astype(str))
    out.write_text(json.dumps({"cells": rows.n_cells, "transfer_s": seconds, **found}))


def scale_generated(generated: Path, reference: Path) -> dict:
    """Label transfer (no bundle rewrite) over a generated SOMA atlas, in its own process."""
    import json

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "scores.json"
        wall, peak = run([sys.executable, __file__, "--stream-generated", str(generated), "--reference-bundle",
                          str(reference), "--scores", str(out)])
        return {**json.loads(out.read_text()), "wall_s": wall, "peak_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 0.5, 0.7, 0.9])
    parser.add_argument("--big", type=Path, help="a large (generated) bundle to annotate")
    parser.add_argument("--reference-bundle", type=Path, help="the labelled bundle to annotate --big from")
    parser.add_argument("--generated", type=Path, nargs="*", default=[],
                        help="`vcell generate` SOMA outputs to stream through label transfer (no bundle)")
    parser.add_argument("--stream-generated", type=Path, help=argparse.SUPPRESS)  # the child of --generated
    parser.add_argument("--scores", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--skip-real", action="store_true", help="only the scale measurements")
    args = parser.parse_args()
    if args.stream_generated is not None:
        return stream_generated(args.stream_generated, args.reference_bundle, args.scores)
    print(f"# {date.today()}, {platform.machine()}, Python {platform.python_version()}\n")
    if args.skip_real:
        return _scale(args, parser)
    donors = held_out_donors(args.thresholds)
    print("## Held-out donors, kang_ctrl_reference.h5ad (reference = the other 4 donors)")
    print(donors.to_string(index=False, float_format="{:.3f}".format))
    columns = ["macro_f1", "accuracy", "accuracy_called", "unknown_pct"]
    mean = donors.groupby(donors["threshold"].astype(str), sort=False)[columns].mean()
    print("\nmean over donors:\n" + mean.to_string(float_format="{:.3f}".format))
    table, confusion, genes = across_data_sets(args.thresholds)
    print("\n## kang_ifnb_donors.h5ad annotated from kang_ifnb_1k.h5ad")
    print(f"genes: {genes}")
    print(table.to_string(index=False, float_format="{:.3f}".format))
    print("\nconfusion at threshold 0.5:\n" + confusion.to_string())
    _scale(args, parser)


def _scale(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Section 3: print the scale tables asked for."""
    if (args.big is not None or args.generated) and args.reference_bundle is None:
        parser.error("--big and --generated need --reference-bundle")
    fmt = "{:.3f}".format
    if args.big is not None:
        print("\n## Scale: vcell annotate BIG --reference REF --out ... (own process)")
        print(pd.DataFrame([scale(args.big, args.reference_bundle)]).to_string(index=False, float_format=fmt))
    if args.generated:
        print("\n## Scale: label transfer streamed over generated SOMA atlases (own process, no bundle rewrite)")
        table = pd.DataFrame([scale_generated(path, args.reference_bundle) for path in args.generated])
        print(table.to_string(index=False, float_format=fmt))


if __name__ == "__main__":
    main()
