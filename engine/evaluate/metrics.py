"""How good is an embedding? Measured numbers for the Model page and the manifest.

* :func:`knn_label_agreement` -- how often a cell's nearest neighbours share its label (bundle quality).
* :func:`donor_split` -- reference / query cells by whole donors (query donors never in the reference).
* :func:`knn_zero_shot` -- zero-shot cell-type prediction by kNN from reference to query (macro/micro F1).
* :func:`linear_probe` -- logistic regression on frozen embeddings (the cheap transfer metric).
* :func:`label_subset` -- the reference cells whose labels may be used (a low-label regime).
* :func:`reconstruction_metrics` -- MSE and variance-weighted explained variance (:mod:`engine.evaluate.reconstruction`).
* :func:`evaluate_embeddings` / :func:`summarise` -- methods x seeds table, mean +- sd per method.

They are pure functions of arrays, so they score any embedding; :mod:`engine.evaluate.suite` applies
them to an atlas bundle beside its baselines.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from engine.errors import InputError
from engine.evaluate.reconstruction import BASELINES, reconstruction_metrics
from engine.space.index import search

__all__ = ["knn_label_agreement", "donor_split", "label_subset", "knn_zero_shot", "linear_probe",
           "reconstruction_metrics", "evaluate_embeddings", "summarise"]


def knn_label_agreement(index, embedding: np.ndarray, labels: pd.Series | np.ndarray, *, k: int = 15,
                        n_sample: int = 2_000, seed: int = 0) -> dict[str, float]:
    """Fraction of each cell's ``k`` nearest neighbours (itself excluded) sharing its label.

    Parameters
    ----------
    index
        FAISS index over ``embedding``.
    embedding
        ``(n_cells, dim)``.
    labels
        One label per cell (e.g. the input's cell types; never clusters computed from the
        same neighbours, which would agree by construction).
    k
        Neighbours per cell.
    n_sample
        Cells sampled (reproducibly) as queries.

    Returns
    -------
    ``{"knn_label_agreement": mean over cells, "knn_label_agreement_macro": mean over labels,
    "k": k, "n_queries": ...}``
    """
    labels = np.asarray(labels).astype(str)
    n = len(labels)
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(n, min(n, n_sample), replace=False))
    _, ids = search(index, np.asarray(embedding[queries]), k + 1)
    agree = np.empty(len(queries))
    for row, (cell, neighbours) in enumerate(zip(queries, ids)):
        neighbours = neighbours[(neighbours >= 0) & (neighbours != cell)][:k]
        agree[row] = np.mean(labels[neighbours] == labels[cell]) if len(neighbours) else np.nan
    per_label = pd.Series(agree).groupby(labels[queries]).mean()
    return {"knn_label_agreement": float(np.nanmean(agree)),
            "knn_label_agreement_macro": float(per_label.mean()), "k": k, "n_queries": int(len(queries))}


# -- held-out donors ------------------------------------------------------------------------------------
def donor_split(obs: pd.DataFrame, donor_key: str | None = "donor_id", query_fraction: float = 0.3, seed: int = 0,
                *, label_key: str | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """Split cells into reference and query by whole donors (query donors are never in the reference).

    Donors are put in a fixed shuffled order and, starting at a position set by ``seed``, moved to
    the query side until it holds at least ``query_fraction`` of the cells; at least one donor stays
    on each side. Consecutive seeds start further along the order, so seeds 0, 1, 2 hold out
    different donors (like donor-wise cross-validation) rather than repeating a draw by chance.
    With fewer than two donors (or no donor column) the split falls back to a random cell split,
    stratified by ``label_key`` when given, and ``note`` says so.

    Returns
    -------
    ``(reference_cells, query_cells, note)``: sorted row positions into ``obs`` and a sentence.
    """
    if not 0 < query_fraction < 1:
        raise InputError(f"query_fraction must be between 0 and 1 (got {query_fraction}).")
    n = len(obs)
    rng = np.random.default_rng(seed)
    donors = None
    if donor_key is not None and donor_key in obs.columns:
        donors = obs[donor_key].astype(str).where(obs[donor_key].notna()).to_numpy()
    unique = pd.unique(donors[pd.notna(donors)]) if donors is not None else np.array([])
    if len(unique) >= 2:
        counts = pd.Series(donors).value_counts()
        order = np.random.default_rng(0).permutation(np.sort(unique))
        step = max(1, int(round(query_fraction * len(unique))))
        start = (seed * step) % len(unique)
        query_donors, in_query = [], 0
        for donor in np.roll(order, -start)[:-1]:  # at least one donor always stays in the reference
            query_donors.append(donor)
            in_query += int(counts[donor])
            if in_query >= query_fraction * n:
                break
        is_query = np.isin(donors, query_donors)
        reference, query = np.flatnonzero(~is_query & pd.notna(donors)), np.flatnonzero(is_query)
        held_out = ", ".join(sorted(map(str, query_donors)))
        note = (f"donor split: {len(query_donors)} of {len(unique)} donors held out as query ({held_out}; "
                f"{len(query):,} cells), {len(reference):,} reference cells")
        if len(reference) + len(query) < n:
            note += f"; {n - len(reference) - len(query):,} cells without a donor left out"
        return reference, query, note
    why = "no donor column" if donors is None else f"{len(unique)} donor(s), fewer than two"
    labels = obs[label_key].astype(str).to_numpy() if label_key is not None and label_key in obs.columns else None
    is_query = np.zeros(n, dtype=bool)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == v) for v in np.unique(labels)]
    for group in groups:
        take = int(round(query_fraction * len(group)))
        if len(group) >= 2:
            take = min(max(take, 1), len(group) - 1)
        is_query[rng.choice(group, take, replace=False)] = True
    note = (f"cell split ({why}, so held-out donors are impossible): {int(is_query.sum()):,} random query cells"
            f"{' stratified by ' + label_key if labels is not None else ''}; the scores are optimistic")
    return np.flatnonzero(~is_query), np.flatnonzero(is_query), note


def label_subset(labels, reference, fraction: float = 1.0, seed: int = 0) -> np.ndarray:
    """The reference cells whose labels may be used: a seeded ``fraction`` of each label (at least one each).

    Parameters
    ----------
    labels
        One label per cell of the data set.
    reference
        Row positions of the reference cells (query cells are never labelled, whatever the fraction).
    fraction
        Share of the reference cells, per label, that keep their label; ``1`` keeps all.
    seed
        The same seed, labels and reference give the same subset (kNN, probe and classifiers agree).

    Returns
    -------
    Sorted row positions, a subset of ``reference``.
    """
    if not 0 < fraction <= 1:
        raise InputError(f"label_fraction must be in (0, 1] (got {fraction}).")
    reference = np.sort(np.asarray(reference))
    if fraction == 1:
        return reference
    labels = np.asarray(labels).astype(str)[reference]
    rng = np.random.default_rng([seed, 7919])
    keep = [rng.choice(group, max(1, int(round(fraction * len(group)))), replace=False)
            for group in (reference[labels == value] for value in np.unique(labels))]
    return np.sort(np.concatenate(keep))


# -- zero-shot kNN, linear probe --------------------------------------------------------
def _as_f32(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x), dtype=np.float32)


def _f1_table(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[dict[str, float], pd.DataFrame]:
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    labels = np.unique(np.concatenate([y_true, y_pred]))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    table = pd.DataFrame({"label": labels, "f1": f1, "precision": precision, "recall": recall, "support": support})
    scores = {"macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
              "micro_f1": float(np.mean(y_true == y_pred))}
    return scores, table


def knn_zero_shot(reference_emb, reference_labels, query_emb, query_labels, k: int = 15, metric: str = "l2",
                  *, weighted: bool = False) -> dict:
    """Zero-shot cell-type prediction: each query cell takes the majority label of its ``k`` nearest
    reference cells (exact FAISS search; reference and query are disjoint, so no neighbour is dropped).

    Parameters
    ----------
    reference_emb, query_emb
        ``(n_ref, dim)`` and ``(n_query, dim)`` embeddings.
    reference_labels, query_labels
        One label per row.
    k
        Neighbours that vote.
    metric
        ``"l2"`` (Euclidean) or ``"cosine"`` (inner product of normalised vectors).
    weighted
        Weight each vote by ``1 / (distance + eps)`` instead of 1.

    Returns
    -------
    ``{"macro_f1", "micro_f1" (= accuracy), "per_class" (DataFrame label/f1/precision/recall/support),
    "predictions" (array), "k", "n_reference", "n_query", "missing_labels" (query labels absent
    from the reference, which can never be predicted)}``
    """
    import faiss

    ref, qry = _as_f32(reference_emb), _as_f32(query_emb)
    ref_labels, qry_labels = np.asarray(reference_labels).astype(str), np.asarray(query_labels).astype(str)
    if ref.ndim != 2 or qry.ndim != 2 or ref.shape[1] != qry.shape[1]:
        raise InputError(f"Reference {ref.shape} and query {qry.shape} embeddings must be 2-D of the same width.")
    if len(ref) != len(ref_labels) or len(qry) != len(qry_labels):
        raise InputError("Give one label per embedding row, for the reference and for the query.")
    if len(ref) == 0 or len(qry) == 0:
        raise InputError("knn_zero_shot needs at least one reference and one query cell.")
    if not (np.isfinite(ref).all() and np.isfinite(qry).all()):
        raise InputError("The embeddings contain NaN or infinite values.")
    if metric == "cosine":
        ref, qry = ref.copy(), qry.copy()
        faiss.normalize_L2(ref)
        faiss.normalize_L2(qry)
        index = faiss.IndexFlatIP(ref.shape[1])
    elif metric == "l2":
        index = faiss.IndexFlatL2(ref.shape[1])
    else:
        raise InputError(f"Unknown metric '{metric}': use 'l2' or 'cosine'.")
    index.add(ref)
    k = int(min(k, len(ref)))
    distances, ids = index.search(qry, k)
    classes, codes = np.unique(ref_labels, return_inverse=True)
    if weighted:
        dist = np.sqrt(np.maximum(distances, 0)) if metric == "l2" else np.maximum(1 - distances, 0)
        weights = 1.0 / (dist + 1e-6)
    else:
        weights = np.ones_like(distances)
    weights = weights * (1 + 1e-6 * np.arange(k, 0, -1) / k)  # ties go to the label of the nearer neighbour
    votes = np.zeros((len(qry), len(classes)))
    np.add.at(votes, (np.repeat(np.arange(len(qry)), k), codes[ids].ravel()), weights.ravel())
    predictions = classes[votes.argmax(axis=1)]
    scores, table = _f1_table(qry_labels, predictions)
    return {**scores, "per_class": table, "predictions": predictions, "k": k, "n_reference": int(len(ref)),
            "n_query": int(len(qry)), "missing_labels": sorted(set(qry_labels) - set(ref_labels))}


def linear_probe(train_emb, train_labels, test_emb, test_labels, seed: int = 0, *, max_iter: int = 1000) -> dict:
    """Logistic regression on frozen embeddings (standardised on the training cells): the cheap transfer metric.

    Returns
    -------
    ``{"macro_f1", "micro_f1", "per_class", "predictions"}``
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, test = _as_f32(train_emb), _as_f32(test_emb)
    y_train, y_test = np.asarray(train_labels).astype(str), np.asarray(test_labels).astype(str)
    if len(np.unique(y_train)) < 2:
        raise InputError("A linear probe needs at least two cell types among the training cells.")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    model.fit(train, y_train)
    predictions = model.predict(test)
    scores, table = _f1_table(y_test, predictions)
    return {**scores, "per_class": table, "predictions": predictions}


# -- methods x seeds --------------------------------------------------------------------------------------
SCORE_COLUMNS = ["knn_macro_f1", "knn_micro_f1", "linear_macro_f1", "classifier_macro_f1", "recon_mse",
                 "recon_explained_variance",
                 *(f"recon_{name}_{score}" for name in BASELINES for score in ("mse", "explained_variance"))]


def _resolve_split(split, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    parts = split(seed) if callable(split) else split
    reference, query = np.asarray(parts[0]), np.asarray(parts[1])
    note = parts[2] if len(parts) > 2 else ""
    if len(reference) == 0 or len(query) == 0:
        raise InputError("The split leaves no reference or no query cells.")
    if np.intersect1d(reference, query).size:
        raise InputError("The split puts some cells in both the reference and the query.")
    return reference, query, note


def _method_output(source, seed: int, reference: np.ndarray, query: np.ndarray) -> dict:
    """A source's output as ``{"reference", "query"[, "reconstruction", "reconstruction_baselines",
    "predictions"]}`` from an array, pair or callable."""
    if callable(source):
        out = source(seed, reference, query)
        if isinstance(out, dict):
            if "reference" not in out or "query" not in out:
                raise InputError("A source's dict must hold 'reference' and 'query' embeddings.")
            return out
    elif isinstance(source, (tuple, list)):
        out = source
    else:  # one embedding row per cell of the data set
        emb = np.asarray(source)
        out = (emb[reference], emb[query])
    if len(out) not in (2, 3):
        raise InputError("An embedding source must give (reference_emb, query_emb) or (..., reconstruction).")
    return {"reference": out[0], "query": out[1], "reconstruction": out[2] if len(out) == 3 else None}


def _reconstruction_scores(out: dict) -> dict[str, float]:
    """``recon_*`` columns of a source's reconstruction and its baselines (empty without one)."""
    recon = out.get("reconstruction")
    if recon is None:
        return {}
    scores = recon if isinstance(recon, dict) else reconstruction_metrics(*recon)
    row = {"recon_mse": scores["mse"], "recon_explained_variance": scores["explained_variance"]}
    for name, baseline in (out.get("reconstruction_baselines") or {}).items():
        row[f"recon_{name}_mse"], row[f"recon_{name}_explained_variance"] = baseline["mse"], \
            baseline["explained_variance"]
    return row


def evaluate_embeddings(embeddings: dict, labels, split, seeds=(0, 1, 2), *, k: int = 15, metric: str = "l2",
                        linear: bool = True, label_fraction: float = 1.0) -> pd.DataFrame:
    """Score several embedding methods over seeds on one reference/query split: a tidy table.

    Parameters
    ----------
    embeddings
        ``{method: source}``. A source is (a) an ``(n_cells, dim)`` array for every cell (rows indexed by
        the split), (b) a precomputed pair ``(reference_emb, query_emb)`` for a fixed split, or (c) a
        callable ``source(seed, reference_cells, query_cells) -> (reference_emb, query_emb)`` that fits on
        the reference cells only; it may return a third element, the query reconstruction as a
        :func:`reconstruction_metrics` dict or ``(x_true, x_pred[, mask])``. A callable may instead return
        a dict ``{"reference", "query"[, "reconstruction"][, "reconstruction_baselines"][, "predictions"]}``,
        where ``predictions`` are a classifier's own labels for the query cells (scored as
        ``classifier_macro_f1``) and ``reconstruction_baselines`` maps a baseline name in
        ``engine.evaluate.reconstruction.BASELINES`` to its metrics on the same entries (``recon_<name>_*`` columns).
    labels
        One cell-type label per cell of the data set.
    split
        ``(reference_cells, query_cells[, note])`` used for every seed, or a callable
        ``split(seed) -> (reference_cells, query_cells, note)`` (e.g. a :func:`donor_split` per seed).
    seeds
        Seeds; each gives one row per method.
    k, metric
        Passed to :func:`knn_zero_shot`.
    linear
        Also fit a :func:`linear_probe`.
    label_fraction
        Share of the reference cells whose labels the kNN vote and the probe may use (:func:`label_subset`,
        stratified and seeded); sources still see every reference cell (unlabelled) to fit on. A classifier
        source must be given the same fraction (:func:`engine.evaluate.finetune.classifier_source`).

    Returns
    -------
    Columns ``method, seed, knn_macro_f1, knn_micro_f1, linear_macro_f1`` (+ ``classifier_macro_f1``
    where a source gives predictions, ``recon_*`` where it gives a reconstruction; NaN for the other
    methods), ``n_reference, n_labelled, n_query, split``.
    """
    labels = np.asarray(labels).astype(str)
    rows = []
    for seed in seeds:
        reference, query, note = _resolve_split(split, seed)
        labelled = label_subset(labels, reference, label_fraction, seed)
        order = np.argsort(reference, kind="stable")
        labelled_rows = order[np.searchsorted(reference[order], labelled)]  # rows of the reference embedding
        for method, source in embeddings.items():
            out = _method_output(source, seed, reference, query)
            ref_emb, query_emb = np.asarray(out["reference"])[labelled_rows], out["query"]
            knn = knn_zero_shot(ref_emb, labels[labelled], query_emb, labels[query], k=k, metric=metric)
            row = {"method": method, "seed": seed, "knn_macro_f1": knn["macro_f1"], "knn_micro_f1": knn["micro_f1"]}
            if linear:
                row["linear_macro_f1"] = linear_probe(ref_emb, labels[labelled], query_emb, labels[query],
                                                      seed=seed)["macro_f1"]
            predictions = out.get("predictions")
            if predictions is not None:
                predictions = np.asarray(predictions).astype(str)
                if len(predictions) != len(query):
                    raise InputError(f"Method '{method}' predicted {len(predictions)} labels for {len(query)} "
                                     "query cells.")
                row["classifier_macro_f1"] = _f1_table(labels[query], predictions)[0]["macro_f1"]
            rows.append({**row, **_reconstruction_scores(out), "n_reference": int(len(reference)),
                         "n_labelled": int(len(labelled)), "n_query": int(len(query)), "split": note})
    table = pd.DataFrame(rows)
    first = ["method", "seed"] + [c for c in SCORE_COLUMNS if c in table.columns]
    return table[first + [c for c in table.columns if c not in first]]


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds per method, plus a ``"mean ± sd"`` text column per score.

    Returns
    -------
    One row per method (in first-seen order): ``n_seeds``, ``<score>_mean``, ``<score>_sd``, ``<score>``.
    """
    scores = [c for c in SCORE_COLUMNS if c in results.columns]
    grouped = results.groupby("method", sort=False)
    out = pd.DataFrame({"n_seeds": grouped["seed"].nunique()})
    for column in scores:
        mean, sd = grouped[column].mean(), grouped[column].std(ddof=1).fillna(0.0)
        out[f"{column}_mean"], out[f"{column}_sd"] = mean, sd
        out[column] = ["" if np.isnan(m) else f"{m:.3f} ± {s:.3f}" for m, s in zip(mean, sd)]
    return out.reset_index()
