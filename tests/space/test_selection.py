"""Selection summaries: counts per role value, fractions and enrichment, checked against plain pandas."""

import numpy as np
import pandas as pd
import pytest

from engine.errors import EmptySelectionError
from engine.space.selection import summarise_selection


@pytest.mark.parametrize("categorical", [True, False])
def test_breakdown_matches_pandas_counts(categorical):
    rng = np.random.default_rng(0)
    types = rng.choice(["B", "T", "NK", "mono"], 1000).astype(object)
    types[rng.choice(1000, 50, replace=False)] = np.nan  # cells without a type are left out
    column = pd.Categorical(types, categories=["B", "T", "NK", "mono", "unused"]) if categorical else types
    obs = pd.DataFrame({"cell_type": column})
    cells = np.sort(rng.choice(1000, 300, replace=False))
    frame = summarise_selection(obs, cells, {"cell_type": "cell_type"}).breakdown["cell_type"]
    chosen = pd.Series(types[cells]).value_counts()
    everywhere = pd.Series(types).value_counts(normalize=True)
    assert list(frame["n_cells"]) == sorted(chosen.to_numpy(), reverse=True)  # largest first, empty ones dropped
    by_value = frame.set_index("value")
    for value, n in chosen.items():
        assert by_value.loc[value, "n_cells"] == n
        assert by_value.loc[value, "fraction"] == pytest.approx(n / 300)
        assert by_value.loc[value, "enrichment"] == pytest.approx(n / 300 / everywhere[value])
    assert "unused" not in by_value.index


def test_empty_selection_is_refused():
    with pytest.raises(EmptySelectionError, match="No cells are selected"):
        summarise_selection(pd.DataFrame({"cell_type": ["a"]}), np.array([], dtype=int), {"cell_type": "cell_type"})
