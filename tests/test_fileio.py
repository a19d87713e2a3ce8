"""Atomic writes leave nothing half-written behind."""

import pandas as pd
import pytest

from engine.fileio import atomic_dir, write_csv, write_json


def test_failed_build_leaves_no_directory(tmp_path):
    target = tmp_path / "bundle"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "part").write_text("x")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_only_on_success(tmp_path):
    target = tmp_path / "bundle"
    with atomic_dir(target) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(FileExistsError):
        with atomic_dir(target):
            pass
    with pytest.raises(ValueError):
        with atomic_dir(target, overwrite=True) as tmp:
            (tmp / "v").write_text("2")
            raise ValueError("fail")
    assert (target / "v").read_text() == "1"
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "v").write_text("2")
    assert (target / "v").read_text() == "2"
    write_json(tmp_path / "m.json", {"a": 1})
    assert (tmp_path / "m.json").read_text().strip().startswith("{")


def test_written_files_follow_the_umask(tmp_path):
    import os
    import stat

    os.umask(0o022)
    with atomic_dir(tmp_path / "b") as tmp:
        write_json(tmp / "m.json", {})
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "b" / "m.json").stat().st_mode) == 0o644


def test_write_csv_replaces_the_file_whole(tmp_path):
    path = tmp_path / "table.csv"
    write_csv(path, pd.DataFrame({"gene": ["A", "B"], "shift": [0.5, -1.0]}))
    write_csv(path, pd.DataFrame({"gene": ["C"], "shift": [2.0]}, index=[7]))
    assert path.read_text() == "gene,shift\nC,2.0\n"  # no index column, nothing of the first table
    with pytest.raises(AttributeError):
        write_csv(path, None)
    assert path.read_text() == "gene,shift\nC,2.0\n" and [p.name for p in tmp_path.iterdir()] == ["table.csv"]
