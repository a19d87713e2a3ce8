"""Progress callbacks (engine.progress): clamping, sub-ranges, tracking an iterable."""

from __future__ import annotations

from engine.progress import report, scaled, track


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
