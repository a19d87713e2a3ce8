"""Group summaries agree with direct per-group statistics, block by block."""

import numpy as np
import pandas as pd
import scipy.sparse as sp

from engine.bundle.summaries import Summaries, compute_summaries


def test_summaries_match_direct_computation(tmp_path):
    rng = np.random.default_rng(0)
    n, g = 300, 12
    counts = sp.csr_matrix(rng.poisson(1.0, (n, g)).astype(np.float32))
    lognorm = counts.copy()
    lognorm.data = np.log1p(lognorm.data)
    obs = pd.DataFrame({"cell_type": pd.Categorical(rng.choice(["T", "B"], n)),
                        "disease": pd.Categorical(rng.choice(["normal", "flu"], n)),
                        "donor_id": pd.Categorical(rng.choice(["a", "b", "c"], n))})
    blocks = lambda m: ((s, m[s:s + 70]) for s in range(0, n, 70))  # noqa: E731 - uneven blocks on purpose
    summ = compute_summaries(obs, blocks(lognorm), g, blocks(counts))
    assert summ.groups["n_cells"].sum() == n
    summ.save(tmp_path / "s")
    summ = Summaries.load(tmp_path / "s")
    table, stats = summ.aggregate(["cell_type", "disease"])
    dense, raw = lognorm.toarray(), counts.toarray()
    for i, row in table.iterrows():
        mask = ((obs.cell_type == row.cell_type) & (obs.disease == row.disease)).to_numpy()
        assert row.n_cells == mask.sum()
        np.testing.assert_allclose(stats["mean"][i], dense[mask].mean(0), rtol=1e-6)
        np.testing.assert_allclose(stats["var"][i], dense[mask].var(0), rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(stats["frac_expressing"][i], (dense[mask] > 0).mean(0))
        np.testing.assert_allclose(stats["counts"][i], raw[mask].sum(0))


def test_missing_roles_become_one_group():
    obs = pd.DataFrame({"cell_type": pd.Categorical(["x", "y", "x"])})
    m = sp.csr_matrix(np.eye(3, dtype=np.float32))
    summ = compute_summaries(obs, [(0, m)], 3)
    assert set(summ.groups["disease"]) == {"all"} and summ.counts is None
    assert sorted(summ.groups["n_cells"]) == [1, 2]
