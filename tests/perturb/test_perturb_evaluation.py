"""Tests of engine.perturb.evaluation: leave-one-cell-type-out prediction of a condition response."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from engine.bundle.atlas import Atlas
from engine.errors import InputError
from engine.evaluate.suite import load_evaluation
from engine.perturb.evaluation import (ARITHMETIC, LATENT, METHODS, NO_CHANGE, eligible_cell_types,
                                       holdout_condition_response, holdout_trainer, response_scores, save_response,
                                       summarise_response)

A, B = "CTRL", "STIM"


def test_response_scores_by_hand():
    observed = np.array([4.0, -3.0, 2.0, 0.1, 0.0])
    exact = response_scores(observed, observed, top=3)
    assert exact == {"r_all": 1.0, "r_top3": 1.0, "sign_top3": 1.0, "rmse_ratio": 0.0}
    nothing = response_scores(np.zeros(5), observed, top=3)
    assert np.isnan(nothing["r_all"]) and nothing["sign_top3"] == 0.0 and nothing["rmse_ratio"] == 1.0
    half = response_scores(observed / 2, observed, top=3)
    assert half["r_all"] == pytest.approx(1.0) and half["rmse_ratio"] == pytest.approx(0.5)
    flipped = response_scores(-observed, observed, top=3)
    assert flipped["sign_top3"] == 0.0 and flipped["rmse_ratio"] == pytest.approx(2.0)
    with pytest.raises(InputError, match="same genes"):
        response_scores(np.zeros(4), observed)


@pytest.fixture(scope="module")
def kang(mae_bundle):
    return Atlas(mae_bundle)


def test_leave_one_out_on_interferon_response(kang, tmp_path):
    types = eligible_cell_types(kang, A, B)
    assert "CD14 Mono" in types and len(types) >= 4
    response = holdout_condition_response(kang, A, B)
    results = response.table
    assert list(results["method"].unique()) == list(METHODS)
    assert set(results["cell_type"]) == set(types)
    by = results.set_index(["cell_type", "method"])
    mono = by.loc["CD14 Mono"]
    assert mono.loc[NO_CHANGE, "rmse_ratio"] == 1.0 and mono.loc[NO_CHANGE, "n_a"] == 151
    summary = summarise_response(results).set_index("method")
    # the interferon response is shared across PBMC types: the other types' mean response predicts it
    assert summary.loc[ARITHMETIC, "r_top20_mean"] > 0.6 and summary.loc[ARITHMETIC, "rmse_ratio_mean"] < 1.0
    assert summary.loc[LATENT, "r_top20_mean"] > 0.3  # the 2-epoch model carries some of it
    assert any("optimistic" in note for note in response.notes)
    path = save_response(tmp_path, response)
    stored, notes = load_evaluation(path)
    assert list(stored["method"]) == list(METHODS) and notes == response.notes


def test_retrained_model_never_sees_the_held_out_response(kang, tmp_path):
    fit = holdout_trainer(kang, tmp_path, epochs=1)
    results = holdout_condition_response(kang, A, B, cell_types=["CD14 Mono"], fit_model=fit)
    assert len(results.table) == len(METHODS) and any("retrained" in note for note in results.notes)
    history = json.loads((tmp_path / "CD14-Mono" / "history.json").read_text())
    held = ((kang.obs[kang.roles["cell_type"]] == "CD14 Mono") & (kang.obs[kang.roles["condition"]] == B)).sum()
    assert history["n_train_cells"] + history["n_val_cells"] == kang.n_cells - held == kang.n_cells - 153


def test_bad_input(kang):
    with pytest.raises(InputError, match="Unknown condition"):
        holdout_condition_response(kang, A, "FLU")
    toy = SimpleNamespace(obs=pd.DataFrame({"ct": ["T"] * 30 + ["B"] * 15, "cond": [A] * 30 + [A] * 10 + [B] * 5}),
                          roles={"cell_type": "ct", "condition": "cond"}, n_cells=45)
    with pytest.raises(InputError, match="No cell type has 10"):
        holdout_condition_response(toy, A, B)  # T has no STIM cells, B only 5
    frame = pd.DataFrame({"method": [NO_CHANGE], "r_all": [np.nan]})
    assert summarise_response(frame)["n_cell_types"].tolist() == [1]
