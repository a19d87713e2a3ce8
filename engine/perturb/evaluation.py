"""Evaluate condition-response prediction on real data by leaving one cell type out.

For each cell type with cells in both conditions, its B profile (e.g. interferon-stimulated) is
predicted from its own A (control) cells and the other cell types' response, then compared with
its observed ``mean(B) - mean(A)`` shift:

- ``no change``: a shift of 0 (the floor every method must beat);
- ``expression arithmetic``: the other cell types' mean expression difference, added as is;
- ``latent arithmetic (MAE)``: the other cell types' mean latent difference added to the held-out
  cells' embeddings and decoded (scGen-style, :func:`~engine.perturb.baselines.latent_transfer`).

For an honest leave-one-out the masked autoencoder is retrained per held-out cell type without
that type's B cells (``fit_model``); with the bundle's own model those cells were seen, unlabelled,
in pretraining, and the table says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from torch import nn

from engine.build.pretrain import pretrain
from engine.bundle.select import select_cells
from engine.errors import InputError
from engine.evaluate.suite import RESPONSE_DIR, EvaluationResult, save_evaluation
from engine.fileio import safe_name
from engine.models.serialize import load_model
from engine.perturb.baselines import latent_transfer
from engine.progress import Progress, report

if TYPE_CHECKING:  # pragma: no cover
    from engine.bundle.atlas import Atlas

NO_CHANGE, ARITHMETIC, LATENT = "no change", "expression arithmetic", "latent arithmetic (MAE)"
METHODS = (NO_CHANGE, ARITHMETIC, LATENT)
TOP = 20
MIN_CELLS = 10
SCORES = ("r_all", f"r_top{TOP}", f"sign_top{TOP}", "rmse_ratio")
ModelFit = Callable[[np.ndarray, str], tuple[nn.Module, list[str]]]


def response_scores(predicted: np.ndarray, observed: np.ndarray, top: int = TOP) -> dict[str, float]:
    """How well a predicted mean shift matches the observed one.

    ``r_all``: Pearson r over all genes (NaN for a constant prediction); ``r_top``/``sign_top``:
    Pearson r and sign agreement over the ``top`` genes with the largest observed ``|shift|`` (a
    prediction of 0 has no sign); ``rmse_ratio``: RMSE of the predicted B profile over that of no
    change (1: no better than predicting no change; 0: exact).
    """
    predicted, observed = np.asarray(predicted, np.float64), np.asarray(observed, np.float64)
    if predicted.shape != observed.shape or predicted.ndim != 1:
        raise InputError("Predicted and observed shifts must be vectors over the same genes.")
    best = np.argsort(-np.abs(observed), kind="stable")[:top]

    def pearson(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a, b)[0, 1]) if a.size > 2 and a.std() > 0 and b.std() > 0 else np.nan

    floor = float(np.sqrt(np.mean(observed**2)))
    return {"r_all": pearson(predicted, observed), f"r_top{top}": pearson(predicted[best], observed[best]),
            f"sign_top{top}": float(np.mean(np.sign(predicted[best]) == np.sign(observed[best]))),
            "rmse_ratio": float(np.sqrt(np.mean((predicted - observed) ** 2)) / floor) if floor > 0 else np.nan}


def eligible_cell_types(atlas: Atlas, condition_a: str, condition_b: str, min_cells: int = MIN_CELLS) -> list[str]:
    """Cell types with at least ``min_cells`` cells in each condition (unknown condition: an error)."""
    for condition in (condition_a, condition_b):
        select_cells(atlas.obs, condition=condition, roles=atlas.roles)  # an unknown value: a clear error
    key, cond = atlas.roles.get("cell_type"), atlas.roles.get("condition")
    if key is None or cond is None:
        raise InputError("Leaving cell types out needs cell-type and condition columns in the atlas.")
    counts = pd.crosstab(atlas.obs[key].astype(str), atlas.obs[cond].astype(str))
    return [str(t) for t in counts.index if counts.loc[t, str(condition_a)] >= min_cells
            and counts.loc[t, str(condition_b)] >= min_cells]


def holdout_condition_response(atlas: Atlas, condition_a: str, condition_b: str, *,
                               cell_types: Sequence[str] | None = None, fit_model: ModelFit | None = None,
                               max_cells: int | None = 2000, seed: int = 0,
                               progress: Progress | None = None) -> EvaluationResult:
    """Leave each cell type out and predict its ``condition_b`` profile from its ``condition_a`` cells.

    Parameters
    ----------
    atlas
        A bundle with a masked-autoencoder model (its genes are the ones scored).
    condition_a, condition_b
        Control (A) and response (B) conditions.
    cell_types
        The cell types to hold out (default: all with at least 10 cells in both conditions).
    fit_model
        ``fit_model(train_cells, cell_type) -> (model, genes)``: a masked autoencoder trained on
        ``train_cells`` (every atlas row but the held-out type's B cells), e.g.
        :func:`holdout_trainer`. ``None`` uses the bundle's model (optimistic: it saw those cells).
    max_cells, seed
        Cells per population at most, and the subsampling seed.
    progress
        Progress callback.

    Returns
    -------
    EvaluationResult
        ``table``: one row per cell type and method (:data:`METHODS`): ``cell_type, method, n_a, n_b``
        and :data:`SCORES`; ``notes`` describe the protocol.
    """
    types = list(cell_types) if cell_types is not None else eligible_cell_types(atlas, condition_a, condition_b)
    if not types:
        raise InputError(f"No cell type has {MIN_CELLS}+ cells in both '{condition_a}' and '{condition_b}': "
                         "nothing to leave out.")
    key = atlas.roles["cell_type"]
    in_b = np.zeros(atlas.n_cells, bool)
    in_b[select_cells(atlas.obs, condition=condition_b, roles=atlas.roles)] = True
    rows = []
    for i, cell_type in enumerate(types):
        report(progress, i / len(types), f"Holding out {cell_type}")
        held = in_b & (atlas.obs[key].astype(str).to_numpy() == str(cell_type))
        model = fit_model(np.flatnonzero(~held), cell_type) if fit_model is not None else None
        result = latent_transfer(atlas, cell_type=cell_type, condition_a=condition_a, condition_b=condition_b,
                                 source="others", model=model, max_cells=max_cells, seed=seed)
        table = result.table
        observed = table["observed"].to_numpy()
        predictions = {NO_CHANGE: np.zeros_like(observed), ARITHMETIC: table["expression_arithmetic"].to_numpy(),
                       LATENT: table["predicted"].to_numpy()}
        sizes = {"n_a": int((~in_b & (atlas.obs[key].astype(str).to_numpy() == str(cell_type))).sum()),
                 "n_b": int(held.sum())}
        rows += [{"cell_type": cell_type, "method": name, **sizes, **response_scores(pred, observed)}
                 for name, pred in predictions.items()]
    report(progress, 1.0, "Leave-one-out done")
    notes = [
        f"Each cell type left out in turn: its '{condition_b}' profile predicted from its '{condition_a}' cells and "
        f"the other cell types' response; scored against its observed mean shift over {len(observed):,} model genes.",
        "The masked autoencoder was retrained without the held-out cells' response." if fit_model is not None else
        "The bundle's own masked autoencoder was used: it saw the held-out cells (unlabelled) while pretraining, "
        "so its scores are optimistic."]
    return EvaluationResult(table=pd.DataFrame(rows), notes=notes)


def holdout_trainer(atlas: Atlas, work: str | Path, *, epochs: int = 10, seed: int = 0,
                    method: str = "mae") -> ModelFit:
    """A ``fit_model`` for :func:`holdout_condition_response`: pretrain on the given cells in ``work/<type>``."""

    def fit(train_cells: np.ndarray, cell_type: str) -> tuple[nn.Module, list[str]]:
        out = Path(work) / safe_name(cell_type)
        return load_model(pretrain(atlas, method, epochs=epochs, seed=seed, out=out, cells=train_cells,
                                   resume=False))

    return fit


def summarise_response(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread of each score per method over the held-out cell types (``<score>_mean``, ``<score>_sd``)."""
    grouped = results.groupby("method", sort=False)[[s for s in SCORES if s in results.columns]]
    summary = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).add_suffix("_sd"))
    summary.insert(0, "n_cell_types", results.groupby("method", sort=False).size())
    return summary.reset_index()


def save_response(bundle: str | Path, results: EvaluationResult) -> Path:
    """Store the leave-one-out results and their summary in ``bundle/evaluation/response`` (the Model page reads it)."""

    path = Path(bundle) / RESPONSE_DIR
    save_evaluation(path, results, summarise_response(results.table))
    return path
