"""`vcell generate`, `census`, `build` and `validate`: one clear sentence and exit status 2 on bad input;
nothing half-written."""

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


def test_generate_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "generated"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["generate", "--cells", "100", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["generated"]


def test_census_refuses_an_output_that_is_not_h5ad(tmp_path, capsys):
    # the full query and write: tests/data/test_read.py (test_vcell_census_writes_a_slice_that_builds)
    assert main(["census", "--uri", str(tmp_path / "no-census"), "--out", str(tmp_path / "slice.csv")]) == 2
    line = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("error: "))
    assert "ending in .h5ad" in line and "slice.csv" in line
    assert not any(tmp_path.iterdir())
