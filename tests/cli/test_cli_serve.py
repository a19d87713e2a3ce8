"""`vcell serve` and `demo` (the served dashboard itself: tests/e2e)."""

import json

from vcell_testing import make_counts_adata

from engine.cli import main
from engine.cli.serve import APP


def test_serve_finds_the_app_and_refuses_a_missing_bundle(tmp_path, capsys):
    assert APP.is_file() and APP.parent.name == "app"
    assert main(["serve", str(tmp_path / "nope.vcell"), "--headless"]) == 2
    assert "nope.vcell does not exist" in capsys.readouterr().err


def test_demo_builds_its_bundle_once(tmp_path, capsys):
    source = tmp_path / "generated-300"  # stands in for `vcell generate` output, which takes a minute to write
    source.mkdir()
    make_counts_adata(n_cells=300).write_h5ad(source / "atlas.h5ad")
    (source / "generated.json").write_text("{}")
    argv = ["demo", "--cells", "300", "--dir", str(tmp_path), "--no-serve"]
    assert main(argv) == 0
    bundle = tmp_path / "generated-300.vcell"
    assert f"demo bundle ready at {bundle}" in capsys.readouterr().out
    manifest = bundle / "manifest.json"
    assert json.loads(manifest.read_text())["provenance"]["command"].startswith("vcell demo")
    built = manifest.stat().st_mtime_ns
    assert main(argv) == 0
    assert f"demo bundle ready at {bundle}" in capsys.readouterr().out
    assert manifest.stat().st_mtime_ns == built
