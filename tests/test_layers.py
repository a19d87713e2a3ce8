"""The engine's import graph keeps the layering of DESIGN.md ("Layout of the code").

Every ``.py`` file under ``engine/`` is parsed (not imported); its imports, at module level and
inside functions, are read from the syntax tree, except those under ``if TYPE_CHECKING:`` (they
never run). The checks:

- no import cycle between engine modules;
- the engine never imports streamlit or the app;
- imports run only downward: ground floor (``errors``, ``progress``, ``fileio``, ``stats``) < data
  < models < space < bundle < compare = evaluate (neither imports the other) < build < annotate
  < perturb < scale < cli;
- an engine module imports engine modules at module level only (a function-level import is for
  an optional heavy third-party dependency, never to dodge a circle);
- no module over 450 lines in ``engine/`` or ``app/``;
- ``engine/`` holds only the ground floor's files and the layer packages at its top level.

``engine/__init__.py`` names the public verbs of every layer; it imports them lazily through
``importlib`` on first attribute access (PEP 562), which this graph does not see, so importing
``engine.errors`` stays light (checked in ``tests/test_api.py``).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "engine"
GROUND = ("__init__", "errors", "progress", "fileio", "stats")
FLOORS = {"data": 1, "models": 2, "space": 3, "bundle": 4, "compare": 5, "evaluate": 5, "build": 6,
          "annotate": 7, "perturb": 8, "scale": 9, "cli": 10}
MAX_LINES = 450

# Function-level imports of engine modules that genuinely need to stay inside a function:
# {(importing module, imported module): why}. Keep it empty unless there is no other way.
ALLOWED_FUNCTION_IMPORTS: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    """One import statement's target as seen from ``source``."""

    source: str
    target: str
    line: int
    in_function: bool

    def where(self) -> str:
        return f"{_path_of(self.source)}:{self.line}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _engine_files() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ENGINE.rglob("*.py")) if "__pycache__" not in p.parts}


MODULES = _engine_files()


def _path_of(module: str) -> str:
    return str(MODULES[module].relative_to(ROOT)) if module in MODULES else module


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Collector(ast.NodeVisitor):
    """Imports of one module, with whether each runs inside a function."""

    def __init__(self, module: str, is_package: bool):
        self.module, self.package = module, module if is_package else module.rpartition(".")[0]
        self.depth = 0
        self.found: list[Import] = []

    def _add(self, target: str, node: ast.stmt) -> None:
        self.found.append(Import(self.module, target, node.lineno, self.depth > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[:len(base) - node.level + 1]
            stem = ".".join(base + ([node.module] if node.module else []))
        else:
            stem = node.module or ""
        for alias in node.names:
            sub = f"{stem}.{alias.name}"
            self._add(sub if sub in MODULES else stem, node)

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            for child in node.body:
                self.visit(child)
        for child in node.orelse:
            self.visit(child)
        self.visit(node.test)

    def _function(self, node) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function


def _imports_of(module: str) -> list[Import]:
    path = MODULES[module]
    collector = _Collector(module, path.name == "__init__.py")
    collector.visit(ast.parse(path.read_text(), filename=str(path)))
    return collector.found


IMPORTS = list(dict.fromkeys(imp for module in MODULES for imp in _imports_of(module)))  # one per target and line
ENGINE_IMPORTS = [imp for imp in IMPORTS if imp.target == "engine" or imp.target.startswith("engine.")]


def _package(module: str) -> str | None:
    """The layer package of an engine module (``None``: the ground floor)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FLOORS else None


def _floor(module: str) -> int:
    package = _package(module)
    return 0 if package is None else FLOORS[package]


def _describe(module: str) -> str:
    package = _package(module)
    return "the ground floor" if package is None else f"{package} (floor {FLOORS[package]})"


def _resolve(target: str) -> str:
    """The engine module an import loads: the target itself, or its closest enclosing module."""
    while target not in MODULES and "." in target:
        target = target.rpartition(".")[0]
    return target


def test_the_parser_sees_the_engine():
    assert {"engine.errors", "engine.models.train", "engine.build.pipeline"} <= set(MODULES)
    assert any(imp.target == "engine.errors" for imp in ENGINE_IMPORTS)
    assert all(_resolve(imp.target) in MODULES for imp in ENGINE_IMPORTS), \
        [f"{imp.where()} imports {imp.target}, which is no engine module" for imp in ENGINE_IMPORTS
         if _resolve(imp.target) not in MODULES]


def test_type_checking_blocks_and_functions_are_told_apart():
    source = ("from typing import TYPE_CHECKING\nimport engine.errors\nif TYPE_CHECKING:\n    import engine.cli\n"
              "def f():\n    from engine.data import store\n")
    collector = _Collector("engine.models.example", False)
    collector.visit(ast.parse(source))
    seen = {(imp.target, imp.in_function) for imp in collector.found}
    assert ("engine.errors", False) in seen and ("engine.data.store", True) in seen
    assert not any(target == "engine.cli" for target, _ in seen)


def test_no_import_cycles():
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    lines: dict[tuple[str, str], Import] = {}
    for imp in ENGINE_IMPORTS:
        target = _resolve(imp.target)
        if target != imp.source:
            graph[imp.source].add(target)
            lines.setdefault((imp.source, target), imp)
    cycles = []
    for component in _strongly_connected(graph):
        if len(component) > 1:
            cycle = _cycle_in(component, graph)
            steps = [f"{lines[a, b].where()} imports {b}" for a, b in zip(cycle, cycle[1:] + cycle[:1])]
            cycles.append(" -> ".join(steps))
    assert not cycles, "Import cycles between engine modules:\n" + "\n".join(cycles)


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _cycle_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One cycle through the component's first module (breadth-first, so a shortest one)."""
    members, start = set(component), sorted(component)[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & members):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return path[::-1]
                if nxt not in parent:
                    parent[nxt] = node
                    following.append(nxt)
        frontier = following
    return [start]


def test_the_engine_never_imports_streamlit_or_the_app():
    bad = [f"{imp.where()} imports {imp.target}" for imp in IMPORTS
           if imp.target.split(".")[0] in ("streamlit", "app")]
    assert not bad, "The engine is a plain library (DESIGN.md): " + "; ".join(bad)


def test_imports_run_downward():
    bad = []
    for imp in ENGINE_IMPORTS:
        target = _resolve(imp.target)
        source_package, target_package = _package(imp.source), _package(target)
        if _floor(target) > _floor(imp.source) or (
                source_package != target_package and _floor(target) == _floor(imp.source) > 0):
            bad.append(f"{imp.where()}: {imp.source} in {_describe(imp.source)} imports {target} in "
                       f"{_describe(target)}")
    assert not bad, ("Imports must run downward (ground < data < models < space < bundle < compare = evaluate "
                     "< build < annotate < perturb < scale < cli):\n" + "\n".join(bad))


def test_engine_modules_are_imported_at_module_level():
    bad = [f"{imp.where()}: {imp.source} imports {imp.target} inside a function" for imp in ENGINE_IMPORTS
           if imp.in_function and (imp.source, _resolve(imp.target)) not in ALLOWED_FUNCTION_IMPORTS]
    assert not bad, ("Engine imports belong at module level (a function-level import is only for an optional "
                     "heavy third-party dependency):\n" + "\n".join(bad))


@pytest.mark.parametrize("folder", ["engine", "app"])
def test_no_module_is_over_450_lines(folder):
    long = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        n = len(path.read_text().splitlines())
        if n > MAX_LINES:
            long.append(f"{path.relative_to(ROOT)}: {n} lines")
    assert not long, f"Modules over {MAX_LINES} lines (split them by concept):\n" + "\n".join(long)


def test_the_top_level_is_the_ground_floor_and_the_layer_packages():
    bad = []
    for path in sorted(ENGINE.iterdir()):
        if path.name.startswith((".", "__pycache__")):
            continue
        if path.is_dir():
            if path.name not in FLOORS or not (path / "__init__.py").exists():
                bad.append(f"engine/{path.name}/ is not one of the layer packages ({', '.join(FLOORS)})")
        elif path.suffix == ".py" and path.stem not in GROUND:
            bad.append(f"engine/{path.name} is not a ground-floor module ({', '.join(GROUND)}): move it into "
                       "its layer's package")
    assert not bad, "\n".join(bad)
