"""Progress reporting that works in a terminal and in the dashboard.

Long engine functions accept ``progress: Progress | None``. The CLI passes
:class:`TqdmProgress`; the app passes a callback that drives ``st.progress``. The engine
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


def scaled(progress: Progress | None, start: float, stop: float) -> Progress | None:
    """A callback mapping a sub-step's ``[0, 1]`` onto ``[start, stop]`` of ``progress``."""
    if progress is None:
        return None
    return lambda fraction, message: progress(start + (stop - start) * fraction, message)


def track(items: Iterable[T], total: int, progress: Progress | None, message: str,
          start: float = 0.0, stop: float = 1.0) -> Iterator[T]:
    """Yield ``items`` while reporting progress from ``start`` to ``stop``."""
    total = max(int(total), 1)
    for i, item in enumerate(items):
        report(progress, start + (stop - start) * i / total, message)
        yield item
    report(progress, stop, message)


class TqdmProgress:
    """A progress callback drawing one tqdm bar, with the current step as its postfix.

    Use it as a context manager so the bar is closed (and its line ended) even on error.
    """

    def __init__(self, desc: str = "vcell"):
        from tqdm.auto import tqdm

        self._bar = tqdm(total=1000, desc=desc, bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}")
        self._done = 0

    def __call__(self, fraction: float, message: str) -> None:
        done = int(round(fraction * 1000))
        if done > self._done:
            self._bar.update(done - self._done)
            self._done = done
        self._bar.set_postfix_str(message, refresh=True)

    def close(self) -> None:
        """End the bar's line."""
        self._bar.close()

    def __enter__(self) -> "TqdmProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
