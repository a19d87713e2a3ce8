"""Dot-plot tables from summaries and the choice of top DE genes (engine/dotplot.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.compare.dotplot import dot_plot_table, top_genes
from engine.errors import EmptySelectionError, InputError


def test_dot_plot_matches_the_cells(small_bundle):
    from engine.bundle.atlas import read_atlas

    atlas = read_atlas(small_bundle)
    genes = np.array([0, 5, 17])
    labels = [atlas.genes.label(g) for g in genes]
    conditions = atlas.categories("condition")[:2]
    table = dot_plot_table(atlas.summaries, genes, labels, conditions=conditions)
    assert set(table["condition"]) == set(conditions)
    assert table["scaled_mean"].between(0, 1).all()
    row = table.iloc[len(table) // 2]
    obs = atlas.obs
    members = np.flatnonzero((obs["cell_type"].astype(str) == row["cell_type"]).to_numpy()
                             & (obs["disease"].astype(str) == row["condition"]).to_numpy())
    values = atlas.expression(members, np.array([genes[labels.index(row["gene"])]])).toarray().ravel()
    assert row["n_cells"] == len(members)
    assert row["mean"] == pytest.approx(values.mean(), rel=1e-4)
    assert row["frac_expressing"] == pytest.approx((values > 0).mean())


def test_dot_plot_bad_input(small_bundle):
    from engine.bundle.atlas import read_atlas

    summaries = read_atlas(small_bundle).summaries
    with pytest.raises(EmptySelectionError):
        dot_plot_table(summaries, [], [])
    with pytest.raises(InputError):
        dot_plot_table(summaries, [1, 2], ["a"])
    with pytest.raises(EmptySelectionError):
        dot_plot_table(summaries, [1], ["a"], conditions=["no such condition"])
    with pytest.raises(EmptySelectionError):
        dot_plot_table(summaries, [1], ["a"], min_cells=10**9)


def test_top_genes_takes_significant_up_then_down():
    de = pd.DataFrame({"gene": list("abcdef"), "log2fc": [2.0, 1.0, -3.0, -0.5, 0.2, np.nan],
                       "padj": [0.01, 0.001, 0.02, 0.5, 0.9, 0.01]})
    assert top_genes(de, 2) == ["b", "a", "c", "d"]
    assert top_genes(de, 1) == ["b", "c"]
    with pytest.raises(InputError, match="no column"):
        top_genes(de.drop(columns="padj"))
