"""The public API: ``engine.__all__`` names the verbs, each imports lazily and has a numpydoc docstring."""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

import engine

ROOT = Path(__file__).resolve().parents[1]


def _sections(doc: str) -> dict[str, list[str]]:
    """A numpydoc docstring's lines by section (``""`` is the summary and extended description)."""
    lines = inspect.cleandoc(doc).splitlines()
    sections: dict[str, list[str]] = {"": []}
    current, skip = "", False
    for i, line in enumerate(lines):
        if skip:
            skip = False
            continue
        underline = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if line.strip() and underline and set(underline) == {"-"} and len(underline) >= len(line.strip()):
            current, skip = line.strip(), True
            sections[current] = []
        else:
            sections[current].append(line)
    return sections


def _documented(parameters: list[str]) -> set[str]:
    """Parameter names of a Parameters section: unindented entries, ``a, b : type`` naming several."""
    names = set()
    for line in parameters:
        if line.strip() and not line[0].isspace():
            names.update(name.strip().lstrip("*") for name in line.split(" : ")[0].split(","))
    return names


def docstring_problems(obj) -> list[str]:
    """What a public object's docstring lacks (numpydoc): summary, Parameters, Returns."""
    doc = inspect.getdoc(obj)
    if not doc:
        return ["no docstring"]
    problems = []
    sections = _sections(doc)
    summary = sections[""]
    if not summary or not summary[0].strip().endswith(".") or (len(summary) > 1 and summary[1].strip()):
        problems.append("the summary is not one line ending with a full stop")
    signature = inspect.signature(obj)
    wanted = [name for name in signature.parameters if name not in ("self", "cls")]
    missing = [name for name in wanted if name not in _documented(sections.get("Parameters", []))]
    if missing:
        problems.append(f"Parameters does not document {', '.join(missing)}")
    if not inspect.isclass(obj) and signature.return_annotation not in ("None", None):
        returns = [line for line in sections.get("Returns", []) if line.strip()]
        if not returns:
            problems.append("no Returns section")
        elif returns[0][0].isspace() or len(returns) < 2 or not returns[1][0].isspace():
            problems.append("Returns does not give a type (or names) line followed by an indented description")
    return problems


def test_the_public_names_are_listed_and_lazy():
    assert "read_atlas" in engine.__all__ and len(set(engine.__all__)) == len(engine.__all__)
    assert set(engine.__all__) <= set(dir(engine))
    with pytest.raises(AttributeError, match="no attribute 'no_such_verb'"):
        engine.no_such_verb  # noqa: B018


def test_no_public_name_is_a_subpackage():
    """``engine.perturb`` is the package: importing engine.perturb.* sets it, so no verb may take its name."""
    packages = {p.parent.name for p in (ROOT / "engine").glob("*/__init__.py")}
    assert not packages & set(engine.__all__), packages & set(engine.__all__)


def test_importing_the_ground_floor_stays_light():
    code = ("import sys, engine.errors; print(sorted(m for m in sys.modules if m == 'engine' or m.startswith('engine.')"
            " or m.split('.')[0] in ('torch', 'numpy', 'pandas', 'anndata')))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['engine', 'engine.errors']"


@pytest.mark.parametrize("name", engine.__all__)
def test_every_public_name_imports_and_is_documented(name):
    obj = getattr(engine, name)
    module, attribute = engine._PUBLIC[name]
    assert obj is getattr(importlib.import_module(module), attribute)
    problems = docstring_problems(obj)
    assert not problems, f"engine.{name} ({module}.{attribute}): " + "; ".join(problems)


def test_the_docstring_check_catches_what_it_should():
    def bad(a, b):
        """Do something
        over two lines."""

    def good(a, b) -> int:
        """Add.

        Parameters
        ----------
        a, b : int
            The terms.

        Returns
        -------
        int
            The sum.
        """

    assert docstring_problems(good) == []
    problems = docstring_problems(bad)
    assert problems[0].startswith("the summary") and "document a, b" in problems[1] and "Returns" in problems[2]
