"""Progress callbacks (engine.progress): clamping, sub-ranges, tracking an iterable, the terminal bar."""

from __future__ import annotations

import pytest

from engine.progress import TqdmProgress, report, scaled, track


def test_report_clamps_and_tolerates_no_callback():
    seen = []
    report(lambda f, m: seen.append((f, m)), 1.7, "done")
    report(None, 0.5, "nobody listens")
    assert seen == [(1.0, "done")]


def test_scaled_maps_a_sub_step_onto_its_share():
    seen = []
    sub = scaled(lambda f, m: seen.append(round(f, 6)), 0.2, 0.6)
    sub(0.0, "a")
    sub(0.5, "b")
    sub(1.0, "c")
    assert seen == [0.2, 0.4, 0.6] and scaled(None, 0.0, 1.0) is None


def test_track_yields_every_item_and_ends_at_stop():
    seen = []
    items = list(track(iter("abcd"), 4, lambda f, m: seen.append(f), "reading", start=0.5, stop=1.0))
    assert items == list("abcd")
    assert seen == [0.5, 0.625, 0.75, 0.875, 1.0]


def test_the_terminal_bar_moves_only_forward_and_shows_the_step(capsys):
    with TqdmProgress("building") as bar:
        bar(0.25, "reading")
        bar(0.1, "going back")  # a later step that reports less keeps the bar where it was
        bar(1.0, "done")
    frames = [f for f in capsys.readouterr().err.split("\r") if f.strip()]
    shown = {frame.rsplit(", ", 1)[-1].strip(): frame.split("|")[0] for frame in frames if ", " in frame}
    assert shown["reading"] == shown["going back"] == "building:  25%" and shown["done"] == "building: 100%"
    assert frames[-1].endswith("\n")  # closed: its line is ended


def test_the_bar_is_closed_when_the_step_fails(capsys):
    with pytest.raises(RuntimeError), TqdmProgress() as bar:
        bar(0.5, "half")
        raise RuntimeError("stop")
    err = capsys.readouterr().err
    assert "vcell:  50%" in err and err.endswith("\n")
