"""Supervised cell-type classifiers: trained from scratch or fine-tuned from a pretrained encoder.

* :func:`train_classifier` -- a :class:`~engine.models.ssl.SupervisedClassifier` trained on reference
  cells only (from scratch, or starting from a pretrained :class:`~engine.models.encoder.MLPEncoder`,
  fine-tuning every layer).
* :func:`classify` -- predicted class indices (eval mode, no gradients).
* :func:`classifier_source` -- an :func:`engine.evaluate.metrics.evaluate_embeddings` source that trains a
  classifier per seed and reports its encoder's embeddings and its own query predictions.

A plain torch loop on in-memory arrays: evaluation subsets are small, and this keeps the scores
independent of the Lightning trainer's checkpointing and validation machinery.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from engine.errors import InputError
from engine.evaluate.metrics import label_subset
from engine.models.encoder import MLPEncoder
from engine.models.ssl import SupervisedClassifier


def _dense(x) -> np.ndarray:
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    return np.ascontiguousarray(x, dtype=np.float32)


def _encoder_settings(encoder: MLPEncoder) -> dict:
    """``hidden, latent, dropout, norm`` of an existing encoder (it stores only the widths)."""
    modules = list(encoder.net)
    norm = ("layer" if any(isinstance(m, nn.LayerNorm) for m in modules)
            else "batch" if any(isinstance(m, nn.BatchNorm1d) for m in modules) else "none")
    dropout = next((float(m.p) for m in modules if isinstance(m, nn.Dropout)), 0.0)
    return {"hidden": tuple(encoder.hidden), "latent": int(encoder.latent), "dropout": dropout, "norm": norm}


def train_classifier(x_ref, y_ref, n_classes: int, *, encoder_state: MLPEncoder | None = None, epochs: int = 20,
                     batch_size: int = 256, lr: float = 1e-3, seed: int = 0,
                     hidden: Sequence[int] = (512, 512, 256, 256), latent: int = 64,
                     dropout: float = 0.1) -> SupervisedClassifier:
    """Train a cell-type classifier on the reference cells only.

    Parameters
    ----------
    x_ref
        ``(cells, genes)`` log-normalised expression (dense or sparse), the reference cells.
    y_ref
        Integer class of each reference cell, in ``[0, n_classes)``.
    n_classes
        Number of classes.
    encoder_state
        A pretrained :class:`~engine.models.encoder.MLPEncoder` (e.g. ``load_model(path)[0].encoder``)
        to start from; its architecture replaces ``hidden``/``latent``/``dropout`` and its weights are
        copied (the original is left untouched), then every layer is fine-tuned.
    epochs, batch_size, lr
        Adam optimisation settings.
    seed
        Seeds the weights (``torch.manual_seed``) and the shuffling (a ``torch.Generator``): the same
        seed gives the same model.
    hidden, latent, dropout
        Architecture when training from scratch.

    Returns
    -------
    SupervisedClassifier
        In eval mode.

    Raises
    ------
    InputError
        Shapes disagree, labels are out of range, the input is not finite, or the encoder's gene count
        differs from the input's.
    """
    x = torch.from_numpy(_dense(x_ref))
    y = torch.as_tensor(np.asarray(y_ref), dtype=torch.int64)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise InputError(f"Expected (cells, genes) expression and one label per cell, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}.")
    if len(y) == 0:
        raise InputError("No reference cells to train the classifier on.")
    if int(y.min()) < 0 or int(y.max()) >= int(n_classes):
        raise InputError(f"Labels must lie in [0, {n_classes}), got {int(y.min())}..{int(y.max())}.")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise InputError(f"epochs and batch_size must be positive and lr > 0 (got {epochs}, {batch_size}, {lr}).")
    torch.manual_seed(seed)
    if encoder_state is not None:
        if encoder_state.n_genes != x.shape[1]:
            raise InputError(f"The pretrained encoder takes {encoder_state.n_genes} genes, the input has "
                             f"{x.shape[1]}: align the genes first (engine.models.serialize.align_genes).")
        model = SupervisedClassifier(x.shape[1], n_classes, **_encoder_settings(encoder_state))
        model.encoder.load_state_dict(encoder_state.state_dict(), strict=True)
    else:
        model = SupervisedClassifier(x.shape[1], n_classes, hidden=hidden, latent=latent, dropout=dropout)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(int(seed))
    model.train()
    for _ in range(int(epochs)):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            rows = order[start:start + batch_size]
            if len(rows) < 2 and len(x) > 1 and _has_batchnorm(model):
                continue  # BatchNorm cannot train on a single cell
            optimiser.zero_grad(set_to_none=True)
            loss = model.training_loss({"x": x[rows], "label": y[rows]})["loss"]
            loss.backward()
            optimiser.step()
    return model.eval()


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.BatchNorm1d) for m in model.modules())


@torch.no_grad()
def classify(model: SupervisedClassifier, x, *, batch_size: int = 4096) -> np.ndarray:
    """Predicted class index per cell (``int64``), in eval mode without gradients."""
    x = _dense(x)
    was_training = model.training
    model.eval()
    try:
        out = [model(torch.from_numpy(x[i:i + batch_size])).argmax(1).numpy() for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, dtype=np.int64)


@torch.no_grad()
def _embed(model: SupervisedClassifier, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    parts = [model.embed(torch.from_numpy(x[i:i + batch_size])).numpy() for i in range(0, len(x), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, model.encoder.latent), dtype=np.float32)


def classifier_source(expression, labels, *, encoder: MLPEncoder | None = None, embedding: np.ndarray | None = None,
                      epochs: int = 20, label_fraction: float = 1.0, **train_options) -> Callable:
    """An :func:`engine.evaluate.metrics.evaluate_embeddings` source backed by a classifier trained per seed.

    Parameters
    ----------
    expression
        ``(cells, genes)`` model input for every cell the split indexes (dense or CSR).
    labels
        One label (any type) per cell.
    encoder
        Pretrained encoder to fine-tune; ``None`` trains from scratch.
    embedding
        Fixed ``(cells, dim)`` embedding to report for kNN and the linear probe (e.g. the bundle's
        frozen ``X_mae``); ``None`` reports the trained classifier's own encoder embedding.
    label_fraction
        Train on the labelled reference cells only, :func:`engine.evaluate.metrics.label_subset` with the evaluation
        seed (the same cells whose labels the kNN vote and the probe use).
    epochs, **train_options
        Passed to :func:`train_classifier` (``seed`` is the evaluation seed).

    Returns
    -------
    ``source(seed, reference, query) -> {"reference", "query", "predictions"}`` with the query
    predictions as labels.
    """

    labels = np.asarray(labels)

    def source(seed, reference, query):
        labelled = label_subset(labels, reference, label_fraction, seed)
        classes, y_train = np.unique(labels[labelled], return_inverse=True)
        if len(classes) < 2:
            raise InputError("The reference cells hold fewer than 2 cell types: a classifier cannot be trained.")
        model = train_classifier(_dense(expression[labelled]), y_train, len(classes), encoder_state=encoder,
                                 epochs=epochs, seed=seed, **train_options)
        x_ref, x_query = _dense(expression[reference]), _dense(expression[query])
        if embedding is None:
            ref_emb, query_emb = _embed(model, x_ref), _embed(model, x_query)
        else:
            ref_emb, query_emb = np.asarray(embedding)[reference], np.asarray(embedding)[query]
        return {"reference": ref_emb, "query": query_emb, "predictions": classes[classify(model, x_query)]}

    return source
