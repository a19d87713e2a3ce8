"""`vcell embed-shards` and `merge-shards`: bad input refused in one sentence (the runs: tests/scale/test_shards.py)."""

from engine.cli import main


def test_embed_shards_and_merge_shards_refuse_missing_inputs(tmp_path, capsys):
    assert main(["embed-shards", str(tmp_path / "nope.vcell"), "--checkpoint", str(tmp_path / "model"),
                 "--out", str(tmp_path / "shards")]) == 2
    assert "nope.vcell does not exist" in capsys.readouterr().err
    assert main(["merge-shards", str(tmp_path)]) == 2
    assert "no finished embedding shards" in capsys.readouterr().err
    assert not (tmp_path / "shards").exists()
