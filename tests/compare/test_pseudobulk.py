"""Tests of engine.compare.pseudobulk: donor-level DESeq2 per cell type, its errors, its cache in the bundle."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from engine.bundle.atlas import read_atlas
from engine.compare.conditions import compare_conditions
from engine.errors import EmptySelectionError, InputError
from engine.compare.pseudobulk import (
    COLUMNS,
    PSEUDOBULK_METHOD,
    PseudobulkParams,
    PseudobulkResult,
    cached_de,
    contrast_de,
    de_contrasts,
    precompute_de,
    pseudobulk_de,
)
from engine.bundle.summaries import Summaries

N_GENES = 40
UP = [0, 1, 2]  # genes raised 4x in "sick"


def make_summaries(donors: dict[tuple[str, str], list[int]], seed: int = 0, counts: bool = True) -> Summaries:
    """Summaries of donor groups: ``{(cell_type, condition): [n_cells of each donor]}``.

    Counts are negative-binomial-like (Poisson with log-normal donor noise); genes :data:`UP`
    are 4x higher in ``sick``.
    """
    rng = np.random.default_rng(seed)
    base = rng.gamma(2.0, 1.0, N_GENES)
    rows, pseudobulk = [], []
    for (cell_type, condition), sizes in donors.items():
        for i, n in enumerate(sizes):
            mu = base * n * np.exp(rng.normal(0, 0.1, N_GENES))
            if condition == "sick":
                mu[UP] *= 4.0
            rows.append((cell_type, condition, f"{condition}-{cell_type}-{i}", n))
            pseudobulk.append(rng.poisson(mu).astype(np.float64))
    groups = pd.DataFrame(rows, columns=["cell_type", "disease", "donor_id", "n_cells"])
    total = np.array(pseudobulk)
    n = groups["n_cells"].to_numpy(dtype=np.float64)[:, None]
    mean_log = np.log1p(total / n)
    return Summaries(groups=groups, sum=mean_log * n, sum_sq=mean_log**2 * n,
                     n_expressing=np.minimum(np.rint(n * (1 - np.exp(-total / n))), n).astype(np.int64),
                     counts=total if counts else None)


LABELS = [f"G{i}" for i in range(N_GENES)]
BALANCED = {("T", "healthy"): [60, 50, 70, 55], ("T", "sick"): [65, 50, 60, 58, 3],
            ("B", "healthy"): [30, 40, 35], ("B", "sick"): [30, 4, 6]}


def fake_atlas(path: Path, summaries: Summaries, reference: str | None = None) -> SimpleNamespace:
    """What the pseudobulk cache needs of an Atlas: path, summaries, gene labels, gene hash, reference."""
    return SimpleNamespace(path=path, summaries=summaries, genes=SimpleNamespace(labels=LABELS),
                           manifest=SimpleNamespace(gene_hash="test"), reference_condition=reference)


@pytest.fixture(scope="module")
def t_cells() -> PseudobulkResult:
    return pseudobulk_de(make_summaries(BALANCED), LABELS, "healthy", "sick", "T")


def test_pseudobulk_de_finds_the_planted_genes(t_cells):
    table = t_cells.table
    assert list(table.columns) == COLUMNS
    assert t_cells.method == PSEUDOBULK_METHOD and not t_cells.cached
    assert (t_cells.a, t_cells.b, t_cells.cell_type, t_cells.params) == ("healthy", "sick", "T", PseudobulkParams())
    assert t_cells.n_genes == len(LABELS) and t_cells.n_genes_tested == len(table)
    up = table.set_index("gene").loc[[LABELS[g] for g in UP]]
    assert (up["padj"] < 0.01).all() and np.allclose(up["log2fc"], 2.0, atol=0.5)
    assert set(table["gene"].head(3)) == set(up.index)  # sorted by Wald statistic
    assert (table.loc[~table["gene"].isin(up.index), "padj"] < 0.05).sum() <= 1
    assert (table["n_donors_a"] == 4).all() and (table["n_donors_b"] == 4).all()  # the 3-cell donor is dropped
    assert (table["n_cells_a"] == 235).all() and (table["n_cells_b"] == 233).all()
    notes = " ".join(t_cells.notes)
    assert "Dropped 1 donor sample(s) with fewer than 10 T cells: sick-T-4 (3 cells)" in notes
    assert "genes (expressed in at least 5%" in notes
    assert ((table["mean_b"] > table["mean_a"]) == (table["log2fc"] > 0)).loc[table["padj"] < 0.05].all()
    assert table[["pct_a", "pct_b"]].stack().between(0, 1).all()


@pytest.mark.parametrize("change, args, error, message", [
    ("no counts", ("healthy", "sick", "T"), InputError, "no raw counts .* rebuild it from raw counts"),
    ("one condition", ("healthy", "sick", "T"), InputError, r"only one condition \('healthy'\)"),
    (None, ("sick", "sick", "T"), InputError, "Both conditions are 'sick'"),
    (None, ("healthy", "sik", "T"), InputError, "Unknown condition 'sik'.*Did you mean: sick"),
    (None, ("healthy", "sick", "NK"), InputError, "Unknown cell type 'NK': choose one of B, Mono, T"),
    (None, ("healthy", "sick", "Mono"), EmptySelectionError, "No 'Mono' cells in condition 'sick'"),
    (None, ("healthy", "sick", "B"), InputError,
     "Too few donors to test B in 'sick': 1 of its 3 donor\\(s\\) have at least 10 of these cells"),
    ("one donor", ("healthy", "sick", "T"), InputError, "Too few donors to test T in 'sick': 1 of its 1 donor"),
    ("no donors", ("healthy", "sick", "T"), InputError, "no donor column.* --donor-key"),
])
def test_pseudobulk_de_says_what_is_wrong(change, args, error, message):
    donors = {**BALANCED, ("Mono", "healthy"): [40, 40]}
    if change == "one condition":
        donors = {k: v for k, v in donors.items() if k[1] == "healthy"}
    if change == "one donor":
        donors[("T", "sick")] = [200]
    summaries = make_summaries(donors, counts=change != "no counts")
    if change == "no donors":
        summaries = make_summaries({("T", "healthy"): [200], ("T", "sick"): [200]})
        summaries.groups["donor_id"] = "all"
    with pytest.raises(error, match=message):
        pseudobulk_de(summaries, LABELS, *args)


def test_cache_round_trip(tmp_path, t_cells):
    summaries = make_summaries(BALANCED)
    atlas = fake_atlas(tmp_path, summaries)  # no known reference: the first condition alphabetically
    assert de_contrasts(atlas) == [("B", "healthy", "sick"), ("T", "healthy", "sick")]
    assert cached_de(atlas, "healthy", "sick", "T") is None
    ticks = []
    summary = precompute_de(atlas, progress=lambda f, m: ticks.append(f))
    assert ticks[-1] == 1.0 and ticks == sorted(ticks)
    assert list(summary["cell_type"]) == ["B", "T"]
    assert summary.loc[0, "skipped"].startswith("Too few donors to test B in 'sick'")
    assert summary.loc[1, "skipped"] == "" and summary.loc[1, "n_up"] >= 3
    index = json.loads((tmp_path / "summaries" / "de" / "index.json").read_text())
    assert index["method"] == PSEUDOBULK_METHOD and index["reference"] == "healthy"
    assert index["params"]["min_cells"] == 10 and index["design"] == "~ condition"
    assert [e["cell_type"] for e in index["contrasts"]] == ["T"] and len(index["skipped"]) == 1
    cached = cached_de(atlas, "healthy", "sick", "T")
    pd.testing.assert_frame_equal(cached.table, t_cells.table)
    assert cached.cached and cached.notes == t_cells.notes
    for field in ("method", "a", "b", "cell_type", "params", "n_genes", "n_genes_tested"):
        assert getattr(cached, field) == getattr(t_cells, field), field
    assert contrast_de(atlas, "healthy", "sick", "T").cached
    assert cached_de(atlas, "healthy", "sick", "B") is None  # skipped contrasts are not cached
    assert cached_de(atlas, "healthy", "sick", "T", params=PseudobulkParams(min_cells=5)) is None
    atlas.manifest = SimpleNamespace(gene_hash="another gene list")
    assert cached_de(atlas, "healthy", "sick", "T") is None


def test_cache_written_before_typed_results_is_still_read(tmp_path, t_cells):
    """Earlier engines also wrote the table's fields into each contrast's parquet metadata; index.json rules."""
    atlas = fake_atlas(tmp_path, make_summaries(BALANCED))
    precompute_de(atlas, cell_types=["T"])
    entry = json.loads((tmp_path / "summaries" / "de" / "index.json").read_text())["contrasts"][0]
    old = t_cells.table.copy()
    old.attrs.update(method=PSEUDOBULK_METHOD, a="healthy", b="sick", cell_type="T", notes=t_cells.notes,
                     params={"min_cells": 10, "min_pct": 0.05, "min_count": 10, "min_total_count": 15},
                     n_genes=t_cells.n_genes, n_genes_tested=t_cells.n_genes_tested)
    old.to_parquet(tmp_path / "summaries" / "de" / entry["file"])
    cached = cached_de(atlas, "healthy", "sick", "T")
    pd.testing.assert_frame_equal(cached.table, t_cells.table)
    assert cached.cached and cached.notes == t_cells.notes and cached.n_genes_tested == t_cells.n_genes_tested
    assert cached.table.attrs == {}  # the parquet metadata is not carried along as a side channel


def test_precompute_keeps_other_cached_contrasts(tmp_path):
    atlas = fake_atlas(tmp_path, make_summaries({**BALANCED, ("B", "sick"): [30, 40, 35]}), reference="healthy")
    precompute_de(atlas)
    first = cached_de(atlas, "healthy", "sick", "T")
    precompute_de(atlas, cell_types=["B"])  # recomputes B only; T stays cached
    pd.testing.assert_frame_equal(cached_de(atlas, "healthy", "sick", "T").table, first.table)
    assert cached_de(atlas, "healthy", "sick", "B") is not None
    assert sorted(p.name for p in (tmp_path / "summaries").iterdir()) == ["de"]  # no temporary left behind
    with pytest.raises(InputError, match="Unknown reference condition 'control'"):
        precompute_de(atlas, reference="control")
    with pytest.raises(InputError, match="Unknown cell type 'NK'"):
        precompute_de(atlas, cell_types=["NK"])


# ----------------------------------------------------------------------------- generated and real data
def test_generated_atlas_truth_is_recovered(small_bundle):
    """Pseudobulk calls at padj < 0.05 match the generator's truth/de.csv (measured: precision 0.99, recall 0.90)."""
    from engine.data.synth.generate import load_truth

    atlas = read_atlas(small_bundle)
    truth = load_truth(small_bundle.parent / "generated-3000")["de"]
    summary = precompute_de(atlas, cell_types=["CD14+ Monocyte", "CD4+/CD45RA+/CD25- Naive T"])
    assert (summary["skipped"] == "").all() and len(summary) == 4
    hits = called = true = same_sign = 0
    for row in summary.itertuples():
        expected = truth[(truth["condition"] == row.b) & (truth["cell_type"] == row.cell_type)].set_index("gene")
        de = cached_de(atlas, row.a, row.b, row.cell_type).table.set_index("gene")
        found = de.index[de["padj"] < 0.05]
        both = found.intersection(expected.index)
        hits, called, true = hits + len(both), called + len(found), true + len(expected)
        same_sign += int((np.sign(de.loc[both, "log2fc"]) == np.sign(expected.loc[both, "log2fc"])).sum())
    # by chance (calls spread over ~700 tested genes, ~3% truly changed) precision would be ~0.03
    assert hits / called > 0.85 and hits / true > 0.75 and same_sign == hits


@pytest.mark.shared
def test_kang_monocytes_interferon_genes(kang_donors_bundle):
    from engine.cli import main

    atlas = read_atlas(kang_donors_bundle)
    assert atlas.reference_condition == "ctrl"
    found = contrast_de(atlas, "ctrl", "stim", "CD14+ Monocytes")
    de = found.table
    genes = de.set_index("gene").loc[["ISG15", "IFIT1", "MX1", "IFI6"]]
    assert (genes["log2fc"] > 2).all() and (genes["padj"] < 0.05).all()
    assert (de["n_donors_a"] == 2).all() and (de["n_donors_b"] == 2).all() and (de["n_cells_a"] == 200).all()
    assert any("few donors" in note for note in found.notes)
    result = compare_conditions(atlas, "ctrl", "stim", cell_type="CD14+ Monocytes", method="pseudobulk")
    assert result.method == PSEUDOBULK_METHOD and result.warnings == found.notes
    pd.testing.assert_frame_equal(result.de, de)
    assert main(["de", str(kang_donors_bundle), "--cell-type", "CD14+ Monocytes"]) == 0
    pd.testing.assert_frame_equal(cached_de(atlas, "ctrl", "stim", "CD14+ Monocytes").table, de)
