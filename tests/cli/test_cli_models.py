"""`vcell pretrain`, `embed` and `evaluate`: tables written into the bundle, bad input refused in one sentence."""

import shutil

from engine.cli import main
from engine.evaluate.suite import load_evaluation


def test_evaluate_writes_its_tables_and_refuses_bad_checkpoint_options(kang_bundle, tmp_path, capsys):
    bundle = tmp_path / "kang.vcell"
    shutil.copytree(kang_bundle, bundle)
    assert main(["evaluate", str(bundle), "--finetune", "run/model"]) == 2
    assert "--finetune takes NAME=CHECKPOINT" in capsys.readouterr().err
    assert not (bundle / "evaluation").exists()
    assert main(["evaluate", str(bundle), "--embeddings", "X_pca", "--seeds", "1", "--no-supervised"]) == 0
    printed = capsys.readouterr().out
    assert "pca_reference" in printed and "the dashboard's Model page shows it" in printed
    summary, _ = load_evaluation(bundle / "evaluation")
    assert {"X_pca", "pca_reference", "hvg"} <= set(summary["method"])


def test_pretrain_and_embed_refuse_missing_inputs(kang_bundle, tmp_path, capsys):
    assert main(["pretrain", str(tmp_path / "nope.vcell"), "--method", "mae", "--out", str(tmp_path / "run")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["embed", str(kang_bundle), "--model", str(tmp_path / "no-model")]) == 2
    err = capsys.readouterr().err
    assert "error: The model checkpoint" in err and "config.json" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
