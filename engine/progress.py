"""Progress reporting that works in a terminal and in the dashboard.

Long engine functions accept ``progress: Progress | None``. The CLI passes
:func:`tqdm_progress`; the app passes a callback that drives ``st.progress``. The engine
itself never imports a user-interface library beyond tqdm.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

Progress = Callable[[float, str], None]
"""A callback ``progress(fraction_done, message)`` with ``0 <= fraction_done <= 1``."""

T = TypeVar("T")


def report(progress: Progress | None, fraction: float, message: str) -> None:
    """Call ``progress`` if one was given."""
    if progress is not None:
        progress(min(max(float(fraction), 0.0), 1.0), message)


def track(items: Iterable[T], total: int, progress: Progress | None, message: str,
          start: float = 0.0, stop: float = 1.0) -> Iterator[T]:
    """Yield ``items`` while reporting progress from ``start`` to ``stop``."""
    total = max(int(total), 1)
    for i, item in enumerate(items):
        report(progress, start + (stop - start) * i / total, message)
        yield item
    report(progress, stop, message)


def tqdm_progress(desc: str = "vcell") -> Progress:
    """Return a progress callback that draws one tqdm bar, with the step as its postfix."""
    from tqdm.auto import tqdm

    bar = tqdm(total=1000, desc=desc, unit="‰", bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}")
    state = {"last": 0}

    def callback(fraction: float, message: str) -> None:
        done = int(round(fraction * 1000))
        if done > state["last"]:
            bar.update(done - state["last"])
            state["last"] = done
        bar.set_postfix_str(message, refresh=True)
        if done >= 1000:
            bar.close()

    return callback
