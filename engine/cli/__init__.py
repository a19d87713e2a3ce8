"""``vcell``: the command line, one module per command group (assembled by :mod:`engine.cli.main`)."""

from engine.cli.main import main

__all__ = ["main"]
