"""Embedding shift per cell type with a donor-permutation null (engine/shift.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.errors import EmptySelectionError, InputError
from engine.compare.shift import METHOD, atlas_embedding_shift, embedding_shift


def make_cells(n_donors: int, shift: dict[str, float], cells: int = 40, dim: int = 8, seed: int = 0):
    """Cells of types T and B from ``n_donors`` donors per condition; ``shift[type]`` moves disease cells."""
    rng = np.random.default_rng(seed)
    rows, vectors = [], []
    for condition in ("healthy", "disease"):
        for d in range(n_donors):
            donor_offset = rng.normal(0, 0.1, dim)
            for cell_type, centre in (("T", 0.0), ("B", 5.0)):
                moved = shift.get(cell_type, 0.0) if condition == "disease" else 0.0
                mean = np.full(dim, centre) + donor_offset
                mean[0] += moved
                vectors.append(rng.normal(mean, 1.0, (cells, dim)))
                rows += [(cell_type, condition, f"{condition}-{d}")] * cells
    obs = pd.DataFrame(rows, columns=["cell_type", "disease", "donor_id"]).astype("category")
    return np.vstack(vectors).astype(np.float32), obs


def test_shifted_cell_type_is_detected_and_exact_null_used():
    embedding, obs = make_cells(4, {"T": 2.0})
    result = embedding_shift(embedding, obs, "healthy", "disease")
    assert (result.a, result.b, result.method, result.embedding) == ("healthy", "disease", METHOD, None)
    table = result.table.set_index("cell_type")
    t, b = table.loc["T"], table.loc["B"]
    assert t["exact"] and t["min_pval"] == pytest.approx(2 / 70)  # C(8, 4) relabellings, symmetric in 4 vs 4
    assert t["pval"] == pytest.approx(t["min_pval"])  # no relabelling separates the donors more
    assert t["shift"] == pytest.approx(2.0, abs=0.3)
    assert t["relative_shift"] > 2 * b["relative_shift"]
    assert b["shift"] < 0.35 * t["shift"]
    assert list(table.index)[0] == "T"  # sorted by relative shift


def test_many_donors_use_random_permutations():
    embedding, obs = make_cells(10, {"B": 1.5}, cells=15)
    table = embedding_shift(embedding, obs, "healthy", "disease", n_permutations=200).table.set_index("cell_type")
    assert not table.loc["B", "exact"]
    assert table.loc["B", "pval"] == pytest.approx(1 / 201)
    assert table.loc["T", "pval"] > 0.01


def test_too_few_donors_are_said_plainly():
    embedding, obs = make_cells(1, {"T": 2.0})
    table = embedding_shift(embedding, obs, "healthy", "disease").table
    assert table["pval"].isna().all()
    assert table["note"].str.contains("Too few donors").all()
    assert (table["shift"] > 0).all()


def test_small_donors_are_left_out_for_that_cell_type():
    embedding, obs = make_cells(3, {})
    drop = (obs["cell_type"] == "B") & (obs["disease"] == "disease")
    keep = np.flatnonzero(~drop.to_numpy() | (np.arange(len(obs)) % 40 < 5))  # 5 B cells per disease donor
    table = embedding_shift(embedding[keep], obs.iloc[keep], "healthy", "disease", min_cells=10).table
    b = table.set_index("cell_type").loc["B"]
    assert b["n_donors_b"] == 0 and np.isnan(b["shift"]) and "No donor" in b["note"]


def test_bad_input():
    embedding, obs = make_cells(2, {})
    with pytest.raises(InputError, match="different conditions"):
        embedding_shift(embedding, obs, "healthy", "healthy")
    with pytest.raises(InputError, match="rows"):
        embedding_shift(embedding[:10], obs, "healthy", "disease")
    with pytest.raises(InputError):
        embedding_shift(embedding, obs, "healthy", "flu")
    paired = obs.copy()
    paired["donor_id"] = paired["donor_id"].astype(str).str.split("-").str[1]
    with pytest.raises(InputError, match="both conditions"):
        embedding_shift(embedding, paired, "healthy", "disease")
    with pytest.raises(EmptySelectionError):
        embedding_shift(embedding, obs, "healthy", "disease", min_cells=1000)


def test_on_a_generated_bundle(small_bundle):
    from engine.bundle.atlas import read_atlas

    atlas = read_atlas(small_bundle)
    conditions = atlas.categories("condition")
    reference = atlas.reference_condition
    other = next(c for c in conditions if c != reference)
    result = atlas_embedding_shift(atlas, reference, other)
    table = result.table
    assert set(table["cell_type"]) <= set(atlas.categories("cell_type"))
    tested = table.dropna(subset=["pval"])
    assert len(tested) > 0 and tested["pval"].between(0, 1).all()
    assert result.embedding == atlas.default_embedding
