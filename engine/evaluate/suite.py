"""A bundle's embeddings scored beside its baselines, on held-out donors; the saved evaluation.

* :func:`evaluate_bundle` -- the bundle's embeddings beside the PCA, HVG and supervised baselines, with
  fine-tuned classification (:mod:`engine.evaluate.baselines`, :mod:`engine.evaluate.finetune`) and the reconstruction of
  hidden genes of held-out cells beside gene-mean and kNN imputation (:mod:`engine.evaluate.reconstruction`).
* :func:`save_evaluation` / :func:`load_evaluation` -- the bundle's ``evaluation/`` directory (Model page),
  and ``evaluation/response`` for :mod:`engine.perturb.evaluation`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from engine.bundle.atlas import Atlas
from engine.errors import InputError
from engine.evaluate.baselines import hvg_embedding, pca_embedding
from engine.evaluate.finetune import classifier_source
from engine.evaluate.metrics import donor_split, evaluate_embeddings, summarise
from engine.evaluate.transfer import checkpoint_source
from engine.fileio import atomic_path, write_json

RESPONSE_DIR = "evaluation/response"  # the virtual cell's leave-one-out (engine.perturb.evaluation)


@dataclass
class EvaluationResult:
    """A table of scores and what its reader should know.

    ``table``: the scores (one row per method and seed, or per held-out cell type and method);
    ``notes``: plain sentences on how they were made (samples, splits, optimism); ``metric``: the
    kNN metric, where one was used. :func:`save_evaluation` writes all three.
    """

    table: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    metric: str | None = None


# -- a whole bundle ---------------------------------------------------------------------------------------
def evaluate_bundle(atlas, *, embeddings: list[str] | tuple[str, ...] = ("X_pca",), seeds=(0, 1, 2), k: int = 15,
                    metric: str = "l2", query_fraction: float = 0.3, max_cells: int | None = 50_000,
                    n_components: int = 64, linear: bool = True, supervised: bool = True, epochs: int = 20,
                    finetune: dict | None = None, reconstruct: dict | None = None, hidden_fraction: float = 0.5,
                    label_fraction: float = 1.0) -> EvaluationResult:
    """Evaluate a bundle's embeddings beside the HVG, reference-fitted PCA and supervised baselines.

    Each seed holds out a different set of donors (:func:`donor_split`); without donors it falls back to
    a stratified cell split and the ``split`` column says so. ``pca_reference`` is a PCA fitted on the
    reference cells only (no leakage); the bundle's own ``X_pca`` was fitted on all cells (unsupervised,
    but it has seen the query donors). ``supervised`` is the same encoder architecture trained from
    scratch on the reference cells' HVG expression and cell types (:func:`engine.evaluate.finetune.train_classifier`);
    its encoder embedding goes through the same kNN and probe, and ``classifier_macro_f1`` scores its own
    predictions on the query donors. Atlases larger than ``max_cells`` are evaluated on a reproducible
    sample of cells.

    Parameters
    ----------
    atlas
        An :class:`~engine.bundle.atlas.Atlas` or a bundle path.
    embeddings
        Names of the bundle's embeddings to score (``X_pca``, ``X_mae``, ...).
    seeds
        One reference/query split (and one row per method) per seed.
    k
        Neighbours of the kNN vote (and of the kNN-imputation baseline).
    query_fraction
        Share of the cells (as whole donors where there are donors) held out as queries.
    max_cells
        Evaluate on a reproducible sample of this many labelled cells at most (``None``: all).
    n_components
        Components of the reference-fitted PCA baseline.
    linear
        Also fit a linear probe on each embedding.
    metric
        kNN metric, ``"l2"`` or ``"cosine"``. Under ``"l2"`` the standardised HVG space is dominated by
        rare genes (clipped z-scores of 10) and scores poorly; ``"cosine"`` is the fairer comparison there.
    supervised, epochs
        Add the ``supervised`` baseline, trained for ``epochs`` per seed (also used for fine-tuning).
    finetune
        ``{method: checkpoint directory}`` (e.g. ``{"X_mae": run / "model"}``): the checkpoint's encoder is
        fine-tuned with a classifier head on the reference cells (all layers) and its query macro F1 is
        that method's ``classifier_macro_f1``. A method that is also in ``embeddings`` keeps its frozen
        bundle embedding for kNN and the probe; otherwise the checkpoint's frozen encoder embeds the cells.
        Model genes are aligned to the atlas by ID/symbol (missing genes read 0); a checkpoint that cannot
        be loaded or aligned is skipped with a note. A checkpoint that can reconstruct (a masked
        autoencoder) is also scored as under ``reconstruct``.
    reconstruct, hidden_fraction
        ``{method: checkpoint directory}`` of further checkpoints to score without fine-tuning (frozen
        embedding for kNN and the probe). For every masked autoencoder among ``finetune`` and
        ``reconstruct``, ``hidden_fraction`` of the query cells' genes (the checkpoint's genes found in the
        atlas, log-normalised) are hidden per seed and reconstructed by the frozen model: ``recon_mse`` and
        ``recon_explained_variance`` on the hidden entries, beside ``recon_mean_*`` (the reference cells'
        gene means) and ``recon_knn_*`` (mean of the ``k`` reference cells nearest on the visible genes)
        on exactly the same entries (:mod:`engine.evaluate.reconstruction`).
    label_fraction
        Share of the reference cells (stratified by cell type, seeded) whose labels the kNN vote, the probe
        and the classifiers may use: a low-label regime. Unsupervised fits (PCA, HVG scaling) still use
        every reference cell.

    Returns
    -------
    EvaluationResult
        The :func:`evaluate_embeddings` table, the notes the caller should know and ``metric``.

    Raises
    ------
    InputError
        When the atlas has no cell-type labels, or its cell types are clusters rather than labels.
    """

    if not isinstance(atlas, Atlas):
        atlas = Atlas(atlas)
    cell_type_key = atlas.roles.get("cell_type")
    if cell_type_key is None:
        raise InputError("This atlas has no cell-type labels: annotate it first (evaluation predicts cell types).")
    if atlas.manifest.harmonisation.cell_types_are_clusters:
        raise InputError("This atlas's cell types are clusters, not labels: annotate it first.")
    obs = atlas.obs
    labels = obs[cell_type_key]
    cells = np.flatnonzero(labels.notna().to_numpy() & ~labels.astype(str).isin(["", "unknown", "nan"]).to_numpy())
    notes = []
    if len(cells) < len(obs):
        notes.append(f"{len(obs) - len(cells):,} cells without a cell-type label left out")
    if max_cells is not None and len(cells) > max_cells:
        cells = np.sort(np.random.default_rng(0).choice(cells, max_cells, replace=False))
        notes.append(f"evaluated on a sample of {max_cells:,} cells")
    sub_obs = obs.iloc[cells]
    donor_key = atlas.roles.get("donor")
    if donor_key is None:
        notes.append("no donor column: cell split instead of held-out donors (scores are optimistic)")

    def split(seed):
        return donor_split(sub_obs, donor_key, query_fraction=query_fraction, seed=seed, label_key=cell_type_key)

    hvg = np.flatnonzero(atlas.var["highly_variable"].to_numpy())
    expression = atlas.expression(cells, hvg, layer="lognorm")
    sources = {}
    for name in embeddings:
        sources[name] = np.asarray(atlas.embedding(name)[cells])
    sources["pca_reference"] = lambda seed, ref, qry: pca_embedding(expression[ref], expression[qry],
                                                                    n_components=n_components, seed=seed)

    def hvg_source(seed, ref, qry):
        both = np.concatenate([ref, qry])
        emb = hvg_embedding(expression[both], fit_rows=np.arange(len(ref)))
        return emb[: len(ref)], emb[len(ref):]

    sources["hvg"] = hvg_source
    cell_labels = labels.astype(str).to_numpy()[cells]
    training = {"epochs": epochs, "label_fraction": label_fraction}
    if supervised:

        sources["supervised"] = classifier_source(expression, cell_labels, **training)
    finetune, reconstruct = dict(finetune or {}), dict(reconstruct or {})
    for name in {**reconstruct, **finetune}:
        if name in finetune and name in reconstruct and str(finetune[name]) != str(reconstruct[name]):
            raise InputError(f"Method '{name}' names two checkpoints ({finetune[name]}, {reconstruct[name]}).")
        source = checkpoint_source(atlas, cells, cell_labels, name, finetune.get(name) or reconstruct[name],
                                    embedding=sources.get(name), finetune=name in finetune,
                                    reconstruct={"rate": hidden_fraction, "k": k}, training=training, notes=notes)
        if source is not None:
            sources[name] = source
    if label_fraction < 1:
        notes.append(f"low-label regime: {100 * label_fraction:g}% of the reference cells per cell type keep "
                     "their label (kNN, probe and classifiers); unsupervised fits see all reference cells")
    table = evaluate_embeddings(sources, cell_labels, split, seeds, k=k, metric=metric, linear=linear,
                                label_fraction=label_fraction)
    return EvaluationResult(table=table, notes=notes, metric=metric)


def save_evaluation(path, results: EvaluationResult, summary: pd.DataFrame | None = None) -> None:
    """Write ``results.csv``, ``summary.csv`` (default :func:`summarise`) and ``notes.json`` into ``path``, atomically.

    ``notes.json`` holds the result's ``notes`` and ``metric``.
    """
    from pathlib import Path


    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    summary = summarise(results.table) if summary is None else summary
    for name, table in (("results.csv", results.table), ("summary.csv", summary)):
        with atomic_path(path / name) as tmp:
            table.to_csv(tmp, index=False)
    write_json(path / "notes.json", {"notes": list(results.notes), "metric": results.metric})


def load_evaluation(path) -> tuple[pd.DataFrame, list[str]] | None:
    """The summary table and notes written by :func:`save_evaluation`, or ``None`` if absent."""
    import json
    from pathlib import Path

    path = Path(path)
    if not (path / "summary.csv").exists():
        return None
    notes = json.loads((path / "notes.json").read_text()).get("notes", []) if (path / "notes.json").exists() else []
    return pd.read_csv(path / "summary.csv"), notes
