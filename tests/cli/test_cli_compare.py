"""`vcell de` and `annotate`: one line per contrast, bad input refused in one sentence."""

import shutil

from engine.bundle.atlas import read_atlas
from engine.cli import main


def test_de_reports_every_contrast_and_refuses_unknown_cell_types(kang_bundle, tmp_path, capsys):
    bundle = tmp_path / "kang.vcell"
    shutil.copytree(kang_bundle, bundle)
    assert main(["de", str(bundle), "--cell-type", "NOT A TYPE"]) == 2
    assert "Unknown cell type 'NOT A TYPE'" in capsys.readouterr().err
    cell_type = read_atlas(bundle).categories("cell_type")[0]
    assert main(["de", str(bundle), "--cell-type", cell_type]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{cell_type}: ") and "contrast(s) cached in" in lines[-1]


def test_annotate_refuses_a_missing_reference_and_writes_nothing(kang_bundle, tmp_path, capsys):
    out = tmp_path / "annotated.vcell"
    assert main(["annotate", str(kang_bundle), "--reference", str(tmp_path / "missing.h5ad"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "missing.h5ad' does not exist" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())
