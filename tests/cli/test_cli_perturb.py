"""`vcell perturb` and `evaluate-response`: the tables written, the predictor chosen, bad options refused."""

from engine.cli import main


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


def test_perturb_without_a_model_uses_the_ridge_baseline(tmp_path, capsys, kang_bundle):
    import numpy as np

    from engine.bundle.atlas import read_atlas
    from engine.perturb.spec import RIDGE_METHOD

    atlas = read_atlas(kang_bundle)
    gene = atlas.genes.label(int(np.flatnonzero(atlas.var["highly_variable"].to_numpy())[0]))
    out = tmp_path / "ridge.csv"
    assert main(["perturb", str(kang_bundle), "--genes", gene, "--mode", "ko", "--cell-type",
                 atlas.categories("cell_type")[0], "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert RIDGE_METHOD in printed and f"written to {out}" in printed and "beside it" not in printed
    assert [p.name for p in tmp_path.iterdir()] == ["ridge.csv"]


def test_evaluate_response_refuses_unknown_conditions(tmp_path, capsys, kang_bundle):
    assert main(["evaluate-response", str(kang_bundle), "--condition-a", "CTRL", "--condition-b", "NOPE"]) == 2
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("error: "))
    assert "NOPE" in line and "Traceback" not in err
    assert not (kang_bundle / "evaluation" / "response").exists()
