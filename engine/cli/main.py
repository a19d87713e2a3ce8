"""The ``vcell`` parser and entry point.

Each command lives in a command-group module (:mod:`~engine.cli.build`, :mod:`~engine.cli.models`,
:mod:`~engine.cli.shards`, :mod:`~engine.cli.compare`, :mod:`~engine.cli.perturb`,
:mod:`~engine.cli.serve`) whose ``COMMANDS`` maps a command name to a function that adds the
command's options to its sub-parser and sets ``handler``: a function of the parsed arguments that
returns the exit status. Only the module of the command being run is imported: importing the
engine behind every command takes seconds, ``vcell --help`` a tenth of one.

Errors meant for the user (:class:`~engine.errors.VCellError`, :class:`FileExistsError`) print one
sentence and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from importlib import import_module

from engine.errors import VCellError

COMMANDS: dict[str, tuple[str, str]] = {
    # command: (its module in engine.cli, the line `vcell --help` shows)
    "generate": ("build", "write a generated (synthetic) atlas with known ground truth"),
    "census": ("build", "download a CELLxGENE census slice (tissue / disease / cell type) as .h5ad"),
    "build": ("build", "build an atlas bundle from .h5ad, a SOMA experiment or generated data"),
    "pretrain": ("models", "pretrain a masked or contrastive encoder on a bundle's cells"),
    "embed": ("models", "add a saved model's embedding of every cell to a bundle"),
    "embed-shards": ("shards", "embed a bundle's cells with a saved model in several processes "
                               "(DDP; one shard of rows each; torchrun / srun on a cluster)"),
    "merge-shards": ("shards", "merge embed-shards output into one embedding and one FAISS index"),
    "de": ("compare", "precompute pseudobulk DE (DESeq2 over donors) per cell type into a bundle"),
    "annotate": ("compare", "transfer cell types from a labelled reference (kNN in reference PCA)"),
    "validate": ("build", "check a bundle's parts against its manifest"),
    "evaluate": ("models", "score the bundle's embeddings against baselines on held-out donors"),
    "evaluate-response": ("perturb", "virtual cell on real data: predict each held-out cell type's "
                                     "response to a condition, model against baselines"),
    "perturb": ("perturb", "predict a knock-out / knock-down / over-expression in a population"),
    "serve": ("serve", "open the dashboard on a bundle"),
    "demo": ("serve", "generate a demo atlas, build it and open the dashboard"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``vcell`` parser, with the options of ``command`` (whose module alone is imported).

    Parameters
    ----------
    command
        The command to be parsed; the other commands' sub-parsers have no options (enough for
        ``vcell --help`` and for refusing an unknown command).
    """
    parser = argparse.ArgumentParser(prog="vcell",
                                     description="Virtual Cell Explorer: build and explore atlas bundles.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, summary) in COMMANDS.items():
        options = sub.add_parser(name, help=summary)
        if name == command:
            import_module(f"engine.cli.{module}").COMMANDS[name](options)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vcell`` console script; returns the exit status.

    The handler sees the command as typed in ``args.command_line`` (recorded as provenance).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_command(argv)).parse_args(argv)
    args.command_line = "vcell " + " ".join(shlex.quote(a) for a in argv)
    try:
        return args.handler(args)
    except (VCellError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _command(argv: list[str]) -> str | None:
    """The command named in ``argv``: its first word that is not an option (``vcell`` itself has only ``-h``)."""
    return next((word for word in argv if not word.startswith("-")), None)
