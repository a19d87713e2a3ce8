"""The vcell command line: one clear sentence and exit status 2 on bad input; nothing half-written."""

import json

import anndata as ad
import pytest

from vcell_testing import make_counts_adata
from engine.cli import main


def test_build_validate_roundtrip_with_explicit_keys(tmp_path, capsys):
    source = tmp_path / "tiny.h5ad"
    make_counts_adata(n_cells=300).write_h5ad(source)
    out = tmp_path / "tiny.vcell"
    assert main(["build", str(source), "--out", str(out), "--cell-type-key", "cell_label",
                 "--condition-key", "condition", "--donor-key", "sample", "--reference-condition", "normal",
                 "--n-pcs", "10"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["harmonisation"]["cell_type"] == {"source": "cell_label", "guessed": False}
    assert manifest["reference_condition"] == "normal"
    assert manifest["provenance"]["command"].startswith("vcell build")
    assert main(["validate", str(out)]) == 0
    assert "OK" in capsys.readouterr().out
    # building again onto the same path refuses, and leaves the bundle alone
    assert main(["build", str(source), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["validate", str(out)]) == 0


@pytest.mark.parametrize("make_input, message", [
    (lambda p: p / "missing.h5ad", "does not exist"),
    (lambda p: (p / "table.h5ad").write_text("a,b\n1,2\n") or p / "table.h5ad", "not"),
])
def test_bad_inputs_get_one_sentence(tmp_path, capsys, make_input, message):
    out = tmp_path / "out.vcell"
    assert main(["build", str(make_input(tmp_path)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    line = next(l for l in err.splitlines() if l.startswith("error: "))
    assert message in line and "Traceback" not in err
    assert not out.exists() and not any(p.name.startswith(".out.vcell") for p in tmp_path.iterdir())


def test_unknown_key_and_negative_counts(tmp_path, capsys):
    adata = make_counts_adata(n_cells=100)
    adata.write_h5ad(tmp_path / "a.h5ad")
    assert main(["build", str(tmp_path / "a.h5ad"), "--out", str(tmp_path / "o.vcell"), "--cell-type-key", "celltype"]) == 2
    assert "celltype" in capsys.readouterr().err
    adata.X = adata.X.toarray()
    adata.X[3, 4] = -2
    adata.X[5, 5] = 1.5
    ad.AnnData(adata.X, obs=adata.obs, var=adata.var).write_h5ad(tmp_path / "neg.h5ad")
    assert main(["build", str(tmp_path / "neg.h5ad"), "--out", str(tmp_path / "o.vcell")]) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "o.vcell").exists()


def test_unknown_bundle_version(tmp_path, capsys, kang_bundle):
    import shutil

    copy = tmp_path / "future.vcell"
    shutil.copytree(kang_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    assert main(["validate", str(copy)]) == 2
    assert "version 99" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "nothing.vcell")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_perturb_writes_the_model_table_and_its_baselines(tmp_path, capsys, mae_bundle):
    import numpy as np
    import pandas as pd

    from engine.bundle.atlas import read_atlas

    atlas = read_atlas(mae_bundle)
    gene = atlas.genes.label(int(np.flatnonzero(atlas.var["highly_variable"].to_numpy())[0]))
    cell_type = atlas.categories("cell_type")[0]
    out = tmp_path / "shifts.csv"
    assert main(["perturb", str(mae_bundle), "--genes", gene, "--mode", "kd", "--strength", "0.2",
                 "--cell-type", cell_type, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "masked-autoencoder virtual cell" in printed and f"knock-down to 20% of {gene}" in printed
    model = pd.read_csv(out)
    ridge = pd.read_csv(tmp_path / "shifts_ridge.csv")
    assert model.loc[model["is_target"], "gene"].tolist() == [gene] == ridge.loc[ridge["is_target"], "gene"].tolist()
    assert (model["ci_low"] <= model["shift"]).all() and (model["shift"] <= model["ci_high"]).all()
    assert main(["perturb", str(mae_bundle), "--genes", "NOTAGENE1", "--mode", "ko", "--out", str(out)]) == 2
    assert "not in this atlas" in capsys.readouterr().err


def test_perturb_versus_and_additive_write_their_tables(tmp_path, capsys, mae_bundle):
    import pandas as pd

    from engine.bundle.atlas import read_atlas
    from engine.perturb.conditions import prediction_context

    genes = prediction_context(read_atlas(mae_bundle)).kept
    pair = ["ISG15", "IFIT3"] if {"ISG15", "IFIT3"} <= set(genes) else genes[:2]
    out = tmp_path / "pair.csv"
    base = ["perturb", str(mae_bundle), "--genes", ",".join(pair), "--mode", "ko", "--out", str(out)]
    assert main(base + ["--versus", "STIM", "--condition", "CTRL"]) == 2
    assert "--cell-type and --condition" in capsys.readouterr().err
    assert main(base[:3] + [pair[0]] + base[4:] + ["--additive"]) == 2
    assert "two or more --genes" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before anything is written

    assert main(base + ["--cell-type", "CD14 Mono", "--condition", "CTRL", "--versus", "STIM", "--additive"]) == 0
    printed = capsys.readouterr().out
    assert "reversal score" in printed and "matched control gene sets" in printed
    conditions = pd.read_csv(tmp_path / "pair_conditions.csv")
    assert list(conditions.columns) == ["gene", "effect_a", "effect_b", "difference", "pval", "padj", "is_target"]
    assert set(conditions["gene"]) == set(genes) and len(conditions) == len(genes)
    assert sorted(conditions.loc[conditions["is_target"], "gene"]) == sorted(pair)
    assert conditions["pval"].between(0, 1).all()
    additive = pd.read_csv(tmp_path / "pair_additive.csv")
    assert list(additive.columns) == ["gene", "joint", "additive", "difference", "is_target"]
    assert set(additive["gene"]) == set(genes) and len(additive) == len(genes)
    assert out.exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())
