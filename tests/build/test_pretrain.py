"""Pretraining on a bundle: checkpoints, reproducibility, resume, DDP, labels, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from engine.build.embed import embed_atlas
from engine.build.pretrain import pretrain
from engine.bundle.atlas import read_atlas
from engine.errors import InputError
from engine.models.serialize import load_model

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"hidden": [32], "latent": 8}


def _weights(path):
    model, genes = load_model(path)
    return {k: v.clone() for k, v in model.state_dict().items()}, genes


def test_pretrain_writes_best_checkpoint_and_reproduces(small_bundle, tmp_path):
    a = pretrain(small_bundle, "mae", epochs=2, batch_size=128, out=tmp_path / "a", max_cells=1200, **SMALL)
    b = pretrain(small_bundle, "mae", epochs=2, batch_size=128, out=tmp_path / "b", max_cells=1200, **SMALL)
    wa, genes = _weights(a)
    wb, _ = _weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)  # same seed, same weights
    atlas = read_atlas(small_bundle)
    assert genes == list(atlas.var.index[atlas.var["highly_variable"].to_numpy()])
    config = json.loads((a / "config.json").read_text())
    training = config["training"]
    assert training["val_donors"] and "held-out donors" in training["split"]
    assert [e["epoch"] for e in training["history"]] == [0, 1]
    assert training["best_val_loss"] == pytest.approx(min(e["val/loss"] for e in training["history"]))
    assert sorted(p.name for p in (tmp_path / "a" / "lightning").iterdir()) == \
        [f"best-epoch={training['best_epoch']}.ckpt", "last.ckpt"]
    c = pretrain(small_bundle, "mae", epochs=2, batch_size=128, out=tmp_path / "c", max_cells=1200, seed=1,
                 resume=False, **SMALL)
    wc, _ = _weights(c)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


class _StopAt(L.Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_interrupted_run_resumes(small_bundle, tmp_path):
    out = tmp_path / "run"
    kw = dict(epochs=3, batch_size=128, out=out, max_cells=900, **SMALL)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(small_bundle, "barlow", callbacks=[_StopAt(1)], **kw)
    assert (out / "lightning" / "last.ckpt").exists() and not (out / "model").exists()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    started = []

    class _Watch(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            started.append(trainer.current_epoch)

    path = pretrain(small_bundle, "barlow", callbacks=[_Watch()], **kw)
    assert started == [1, 2]  # continued after the first epoch
    config = json.loads((path / "config.json").read_text())
    assert [e["epoch"] for e in config["training"]["history"]] == [0, 1, 2]
    load_model(path)
    # a corrupt last.ckpt (killed while writing) is set aside, not fatal
    (out / "lightning" / "last.ckpt").write_bytes(b"\x00garbage")
    with pytest.warns(UserWarning, match="unreadable"):
        pretrain(small_bundle, "barlow", **{**kw, "epochs": 1})


def test_byol_ema_and_supervised_labels(small_bundle, tmp_path):
    calls = []
    path = pretrain(small_bundle, "byol", epochs=1, batch_size=64, out=tmp_path / "byol", max_cells=400,
                    progress=lambda f, m: calls.append(f), **SMALL)
    assert calls[0] == 0.0 and calls[-1] == 1.0 and calls == sorted(calls)
    model, genes = load_model(path)
    z = embed_atlas(read_atlas(small_bundle), model, genes, batch_size=1000)
    assert z.shape == (3000, 8) and z.dtype == np.float32 and np.isfinite(z).all()
    path = pretrain(small_bundle, "supervised", epochs=1, batch_size=64, out=tmp_path / "sup", max_cells=400,
                    genes="all", **SMALL)
    assert json.loads((path / "config.json").read_text())["n_classes"] >= 2


def test_bad_input(small_bundle, tmp_path):
    with pytest.raises(InputError, match="Unknown method"):
        pretrain(small_bundle, "mea", epochs=1, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_ddp_two_processes(small_bundle, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "engine.build.pretrain", str(small_bundle), "--method", "mae", "--epochs", "2", "--lr", "3e-3",
           "--batch-size", "64", "--max-cells", "1200", "--out", str(out), "--config", json.dumps(SMALL)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoints = [p.parent for p in out.rglob("config.json")]
    assert checkpoints == [out / "model"]
    training = json.loads((out / "model" / "config.json").read_text())["training"]
    assert training["world_size"] == 2
    losses = [e["train/loss"] for e in training["history"]]
    assert len(losses) == 2 and losses[1] < losses[0]
    load_model(out / "model")
