"""Benchmark: does pretraining on a larger atlas help a small labelled real set (the paper's transfer question)?

Target: ``kang_ifnb_donors.h5ad`` (1,556 PBMCs, 5 cell types, 2 donors x control/stimulated). Its
``sample_id`` (ctrl101, stim101, ctrl107, stim107) names samples, not donors, so a ``donor`` column
(101 / 107) is derived: holding out a sample would leave the same donor's other sample in the reference.

A masked autoencoder is pretrained, without labels, on each corpus (raw counts restricted to the
target's genes with :func:`engine.evaluate.transfer.write_union`; a source lacking a kept gene reads 0 there):

* ``target`` -- the target's own cells (in-domain SSL; it sees the held-out donor's cells unlabelled);
* ``generated`` -- a generated atlas (``vcell generate``; negative-binomial cells from pbmc68k profiles);
* ``real`` -- covid_pbmc_combat_subset + kang_ifnb_1k, minus kang_ifnb_1k's cells whose barcodes are the
  target's (the same Kang et al. cells; kept out so no target cell is pretrained on);
* ``generated+real`` -- both.

kang_ctrl_reference is left out: its genes are Ensembl IDs only and no offline ID-to-symbol map exists
here, so it cannot be aligned to the target's symbols honestly. Every corpus gets the same number of
cell presentations (``--budget``; epochs = budget / cells), so a larger corpus is more data, not more
compute. Each checkpoint is then scored on the target with ``evaluate_bundle``: zero-shot cosine kNN on its
frozen embedding, a fine-tuned classifier (all layers, reference donor only), and the reconstruction of
hidden genes of held-out cells, beside reference-fitted PCA, HVG and a supervised classifier trained from
scratch; with all reference labels and with ``--label-fraction`` of them.

Usage::

    python benchmarks/transfer.py --work /tmp/transfer --seeds 4
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from mdtable import markdown

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COLUMNS = {"knn_macro_f1": "kNN", "classifier_macro_f1": "classifier"}
RECON = {"recon_explained_variance": "model", "recon_mean_explained_variance": "gene mean",
         "recon_knn_explained_variance": "kNN impute"}


def vcell(*args: str) -> None:
    """Run one vcell command quietly (raises on failure)."""
    subprocess.run([str(Path(sys.executable).with_name("vcell")), *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def barcode(name: str) -> str:
    """A cell name's barcode without lane suffix (``AAAC...-1`` and ``AAAC....1`` match)."""
    return str(name).split("-")[0].split(".")[0]


def prepare_target(work: Path) -> tuple[ad.AnnData, Path]:
    """The target with a derived ``donor`` column, written and built as a bundle."""
    target = ad.read_h5ad(DATA / "kang_ifnb_donors.h5ad")
    target.obs["donor"] = target.obs["sample_id"].astype(str).str.replace(r"^(ctrl|stim)", "", regex=True)
    target.write_h5ad(work / "target.h5ad")
    bundle = work / "target.vcell"
    if not bundle.exists():
        vcell("build", str(work / "target.h5ad"), "--out", str(bundle), "--cell-type-key", "cluster_id",
              "--donor-key", "donor", "--condition-key", "group_id")
    return target, bundle


def corpora(target: ad.AnnData, work: Path, n_generated: int) -> dict[str, dict]:
    """Source data sets of each pretraining corpus (labels are dropped by write_union)."""
    generated = work / f"generated-{n_generated}"
    if not (generated / "atlas.h5ad").exists():
        vcell("generate", "--cells", str(n_generated), "--format", "h5ad", "--out", str(generated), "--overwrite")
    kang = ad.read_h5ad(DATA / "kang_ifnb_1k.h5ad")
    shared = np.isin([barcode(c) for c in kang.obs_names], [barcode(c) for c in target.obs_names])
    print(f"kang_ifnb_1k: {int(shared.sum())} of {kang.n_obs} cells carry a target barcode (the same Kang cells): "
          "left out of the real corpus")
    real = {"covid_pbmc_combat_subset": DATA / "covid_pbmc_combat_subset.h5ad", "kang_ifnb_1k": kang[~shared].copy()}
    gen = {"generated": generated / "atlas.h5ad"}
    return {"target": {"kang_ifnb_donors": target}, "generated": gen, "real": real,
            "generated+real": {**gen, **real}}


def pretrain_corpus(name: str, sources: dict, genes, work: Path, budget: int, seed: int) -> tuple[Path, dict]:
    """Write, build and pretrain one corpus; its checkpoint and a description."""
    from engine.build.pretrain import pretrain
    from engine.evaluate.transfer import write_union

    slug = name.replace("+", "_")
    union = write_union(sources, genes, work / f"corpus-{slug}.h5ad")
    path, report = union.path, union.report
    bundle = work / f"corpus-{slug}.vcell"
    vcell("build", str(path), "--out", str(bundle), "--overwrite")
    n_cells = int(report.cells.sum())
    epochs = max(1, int(round(budget / n_cells)))
    start = time.perf_counter()
    model = pretrain(bundle, "mae", genes="all", epochs=epochs, seed=seed, out=work / f"run-{slug}", resume=False)
    seconds = time.perf_counter() - start
    found = "; ".join(f"{r.dataset} {r.cells:,} cells, {r.genes_found} genes" for r in report.itertuples())
    return model, {"corpus": name, "cells": n_cells, "genes": union.genes_kept, "epochs": epochs,
                   "pretrain_s": round(seconds, 1), "sources": found}


def table(summary: pd.DataFrame, label: str) -> pd.DataFrame:
    """``mean ± sd`` text columns of one regime, renamed with the regime's label."""
    columns = [c for c in COLUMNS if c in summary]
    return summary.set_index("method")[columns].rename(columns={c: f"{COLUMNS[c]} {label}" for c in columns})


def paired(results: pd.DataFrame, score: str, baseline: str, label: str) -> pd.Series:
    """``mean ± sd`` over seeds of each method's ``score`` minus ``baseline``'s on the same seed (same split
    and labelled cells), which removes the spread due to which donor is held out."""
    wide = results.pivot_table(index="seed", columns="method", values=score, sort=False)
    diff = wide.drop(columns=baseline).sub(wide[baseline], axis=0)
    return pd.Series({m: f"{diff[m].mean():+.3f} ± {diff[m].std(ddof=1):.3f}" for m in diff},
                     name=f"Δ{COLUMNS[score]} vs {baseline} {label}")


def report(results: dict[str, pd.DataFrame]) -> None:
    """Print the scores per regime, the paired differences and the reconstruction table."""
    from engine.evaluate.metrics import summarise

    parts, deltas = [], []
    for label, frame in results.items():
        parts.append(table(summarise(frame), label))
        deltas += [paired(frame, "knn_macro_f1", "pca_reference", label),
                   paired(frame, "classifier_macro_f1", "supervised", label)]
    print(markdown(pd.concat(parts, axis=1).fillna("—").replace("", "—")))
    print("\npaired differences (per seed, then mean ± sd):")
    print(markdown(pd.concat(deltas, axis=1).fillna("—").rename_axis("method")))
    summary = summarise(next(iter(results.values()))).set_index("method")
    recon = summary.loc[summary["recon_explained_variance"].fillna("") != "", list(RECON)].rename(columns=RECON)
    print("\nexplained variance of hidden genes (50% per held-out cell), same entries per row:")
    print(markdown(recon))


def main() -> None:
    import torch

    from engine.evaluate.suite import evaluate_bundle

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/vcell-transfer", help="scratch directory (data are not copied "
                                                                        "into the repository)")
    parser.add_argument("--generated-cells", type=int, default=50_000)
    parser.add_argument("--budget", type=int, default=60_000, help="cell presentations per pretraining run")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=20, help="fine-tuning / supervised epochs")
    parser.add_argument("--label-fraction", type=float, default=0.1)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"# transfer benchmark, {date.today()}, {platform.machine()} {os.cpu_count()} cores, torch "
          f"{torch.__version__}, CPU only; MAE pretraining budget {args.budget:,} cell presentations per corpus, "
          f"fine-tuning {args.epochs} epochs, {args.seeds} seeds, label fraction {args.label_fraction}")
    target, bundle = prepare_target(work)
    genes = list(target.var_names)
    checkpoints, described = {}, []
    for name, sources in corpora(target, work, args.generated_cells).items():
        checkpoints[f"mae[{name}]"], info = pretrain_corpus(name, sources, genes, work, args.budget, seed=0)
        described.append(info)
        print(f"pretrained {name}: {info}")
    print(markdown(pd.DataFrame(described).drop(columns="sources"), index=False))
    regimes = {"full": 1.0, f"{100 * args.label_fraction:g}%": args.label_fraction}
    results, notes = {}, set()
    for label, fraction in regimes.items():
        evaluation = evaluate_bundle(bundle, embeddings=(), seeds=tuple(range(args.seeds)), metric="cosine",
                                     epochs=args.epochs, finetune=checkpoints, label_fraction=fraction)
        results[label] = evaluation.table
        results[label].to_csv(work / f"results-{fraction:g}.csv", index=False)
        notes.update(evaluation.notes)
    print("\n".join(f"note: {n}" for n in sorted(notes)))
    report(results)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
