"""Files shipped with the project in its top-level ``data/`` folder (see ``data/README.md``).

In a checkout or an editable install (``pip install -e .``) the folder sits beside the ``engine``
package; a wheel installs the files under ``<prefix>/share/virtual-cell-explorer/data`` (the
``data-files`` of ``pyproject.toml``). :func:`shipped_file` looks in both, in that order.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from engine.errors import MissingDataError

INSTALLED_DATA = Path("share") / "virtual-cell-explorer" / "data"
"""Where a wheel puts ``data/``, relative to the environment's prefix."""
SYNTH_PROGRAMMES = "synth_programmes.json"
"""The generator's gene lists: ``shared_programmes`` (name, genes) and ``known_tfs``."""


def data_dirs() -> list[Path]:
    """Folders searched for shipped files: the repository's ``data/``, then the installed copy."""
    return [Path(__file__).resolve().parents[2] / "data", Path(sys.prefix) / INSTALLED_DATA]


def shipped_file(name: str) -> Path:
    """Path of a file shipped in ``data/``.

    Parameters
    ----------
    name
        File name inside ``data/`` (e.g. ``"genes_homo_sapiens.csv.gz"``).

    Returns
    -------
    pathlib.Path
        The first existing copy (see :func:`data_dirs`).

    Raises
    ------
    MissingDataError
        No copy exists: the installation is incomplete.
    """
    for folder in data_dirs():
        if (folder / name).is_file():
            return folder / name
    looked = " and ".join(str(folder) for folder in data_dirs())
    raise MissingDataError(f"The shipped data file {name} is missing (looked in {looked}): reinstall the project "
                           f"from its repository (pip install -e .), whose data/ folder holds it.")


def read_shipped_json(name: str) -> Any:
    """The parsed content of a JSON file shipped in ``data/`` (:func:`shipped_file`)."""
    return json.loads(shipped_file(name).read_text(encoding="utf-8"))
