"""Supervised classifiers for evaluation: trained from scratch, fine-tuned from a pretrained encoder,
and the ``supervised`` / ``classifier_macro_f1`` parts of :func:`engine.evaluate.suite.evaluate_bundle`."""

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from engine.bundle.atlas import read_atlas
from engine.errors import InputError
from engine.evaluate.metrics import summarise
from engine.evaluate.suite import evaluate_bundle
from engine.evaluate.finetune import classify, train_classifier
from engine.models.serialize import save_model
from engine.models.ssl import build_model

SMALL = {"hidden": (32, 16), "latent": 8}


def _separable(n=600, n_classes=4, n_genes=40, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    programmes = np.zeros((n_classes, n_genes), dtype=np.float32)
    for c in range(n_classes):
        programmes[c, c * 5:(c + 1) * 5] = 2.0
    x = np.clip(programmes[y] + rng.normal(0, 0.5, (n, n_genes)), 0, None).astype(np.float32)
    return x, y


def test_classifier_from_scratch_is_accurate_and_reproducible():
    x, y = _separable()
    model = train_classifier(x[:400], y[:400], 4, epochs=10, batch_size=64, seed=3, **SMALL)
    predicted = classify(model, x[400:])
    assert predicted.dtype == np.int64 and predicted.shape == (200,)
    assert f1_score(y[400:], predicted, average="macro") > 0.9
    again = train_classifier(x[:400], y[:400], 4, epochs=10, batch_size=64, seed=3, **SMALL)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert not model.training


def test_fine_tuning_starts_from_the_pretrained_encoder_and_leaves_it_intact():
    x, y = _separable(seed=1)
    mae = build_model("mae", x.shape[1], **SMALL)
    optimiser = torch.optim.Adam(mae.parameters(), lr=1e-3)
    for step in range(5):
        optimiser.zero_grad()
        mae.training_loss({"x": torch.from_numpy(x[step * 64:(step + 1) * 64])})["loss"].backward()
        optimiser.step()
    before = {k: v.clone() for k, v in mae.encoder.state_dict().items()}
    model = train_classifier(x[:400], y[:400], 4, encoder_state=mae.encoder, epochs=5, batch_size=64, seed=0)
    assert model.encoder.hidden == (32, 16) and model.encoder.latent == 8
    predicted = classify(model, x[400:])
    assert np.isin(predicted, np.arange(4)).all()
    assert np.isfinite(model.embed(torch.from_numpy(x[400:])).numpy()).all()
    assert all(torch.equal(before[k], v) for k, v in mae.encoder.state_dict().items())  # a copy was tuned
    with pytest.raises(InputError, match="align the genes"):
        train_classifier(x[:, :10], y, 4, encoder_state=mae.encoder)
    with pytest.raises(InputError, match="Labels must lie"):
        train_classifier(x, y, 3)


def test_evaluate_bundle_adds_supervised_and_fine_tuned_classification(small_bundle, tmp_path):
    atlas = read_atlas(small_bundle)
    hvg = atlas.var.index[atlas.var["highly_variable"].to_numpy()]
    mae = build_model("mae", len(hvg), **SMALL)
    save_model(tmp_path / "mae", mae, [str(g) for g in hvg])
    result = evaluate_bundle(atlas, seeds=(0,), supervised=True, epochs=3, linear=False,
                             finetune={"X_mae": tmp_path / "mae", "broken": tmp_path / "absent"})
    table = result.table
    assert set(table.method) == {"X_pca", "pca_reference", "hvg", "supervised", "X_mae"}
    scores = table.set_index("method")["classifier_macro_f1"]
    assert scores[["supervised", "X_mae"]].between(0, 1).all()
    assert scores[["X_pca", "pca_reference", "hvg"]].isna().all()
    assert table.set_index("method").loc["supervised", "knn_macro_f1"] > 0.5
    assert any(note.startswith("broken: not fine-tuned") for note in result.notes)
    summary = summarise(table).set_index("method")
    assert summary.loc["hvg", "classifier_macro_f1"] == "" and "±" in summary.loc["supervised", "classifier_macro_f1"]
