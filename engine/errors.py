"""Errors the engine raises on bad input.

Every error carries one sentence that says what is wrong and what to do; callers (the CLI,
the dashboard) show ``str(error)`` to the user instead of a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class VCellError(Exception):
    """Base class of every error meant for the user."""


class InputError(VCellError):
    """The input file or arguments are not what the engine can use."""


class MissingKeyError(InputError):
    """An obs column (or other named key) was asked for but is not there."""


class GeneNotFoundError(VCellError, KeyError):
    """A gene is not in the atlas or model gene list."""

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0]) if self.args else "gene not found"


class BundleError(VCellError):
    """An atlas bundle is missing, incomplete, corrupt or of an unknown version."""


class EmptySelectionError(VCellError):
    """An operation was asked for on zero cells."""


class MissingDataError(VCellError):
    """A data file shipped with the project (its ``data/`` folder) is not installed."""


def suggest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return a ``" Did you mean: A, B?"`` suffix with close matches, or ``""``.

    Parameters
    ----------
    name
        The unknown name the user typed.
    choices
        Known names.
    n
        How many suggestions at most.
    """
    choices = list(choices)
    upper = {c.upper(): c for c in choices}
    close = difflib.get_close_matches(name.upper(), list(upper), n=n, cutoff=0.6)
    if not close:
        return ""
    return " Did you mean: " + ", ".join(upper[c] for c in close) + "?"
