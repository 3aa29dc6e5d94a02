"""The import floors of ``docs/architecture.md``, checked on the source: a wrong arrow fails.

Every ``import`` in ``circuitlens/`` (at the top or inside a function) is an arrow; it may point
to the importer's own floor or below, never above, and the graph has no cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "circuitlens"
#: above every floor: the public API, the command line
TOP = {"circuitlens", "circuitlens.__main__", "circuitlens.cli"}
#: upward arrows the document names and keeps (hooks reads the scored positions of metrics)
KEPT_UPWARD = {("circuitlens.hooks", "circuitlens.tasks.metrics")}


def floor_table() -> dict[str, int]:
    """``{"circuitlens.report": 8, "circuitlens.experiments": 7, ...}`` from the floor table
    (a module ``x.py`` or a package ``x/`` named in backticks in the modules column)."""
    floors = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        row = re.match(r"\|\s*(\d+) [^|]*\|([^|]*)\|", line)
        if row:
            for name in re.findall(r"`(\w+)(?:\.py|/)`", row[2]):
                floors[f"circuitlens.{name}"] = int(row[1])
    return floors


def modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The circuitlens modules ``path`` imports (a ``from pkg import submodule`` names it)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            found |= {
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            }
    out = set()
    for m in found:
        while m and m not in known:
            m = m.rpartition(".")[0]
        if m and m != name:
            out.add(m)
    return out


def floor_of(name: str, floors: dict[str, int]) -> int:
    if name in TOP:
        return max(floors.values()) + 1
    for prefix, floor in floors.items():
        if name == prefix or name.startswith(prefix + "."):
            return floor
    raise AssertionError(f"{name} is on no floor of docs/architecture.md: add it to the table")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_the_table_names_the_floors() -> None:
    floors = floor_table()
    assert floors["circuitlens.report"] == floors["circuitlens.plotting"] == 8
    assert floors["circuitlens.models"] == floors["circuitlens.zoo"] == 3
    assert floors["circuitlens.hooks"] == 1


def test_every_arrow_points_down_or_level(graph: dict[str, set[str]]) -> None:
    floors = floor_table()
    wrong = [
        f"{a} (floor {floor_of(a, floors)}) -> {b} (floor {floor_of(b, floors)})"
        for a, targets in sorted(graph.items())
        for b in sorted(targets)
        if floor_of(b, floors) > floor_of(a, floors) and (a, b) not in KEPT_UPWARD
    ]
    assert not wrong, "imports that point up a floor:\n" + "\n".join(wrong)


def test_presentation_is_imported_by_the_top_only(graph: dict[str, set[str]]) -> None:
    plotting = {a for a, targets in graph.items() if "circuitlens.plotting" in targets}
    report = {a for a, targets in graph.items() if "circuitlens.report" in targets}
    assert plotting <= {"circuitlens.report", *TOP}, plotting
    assert report <= TOP, report


def test_models_imports_no_source(graph: dict[str, set[str]]) -> None:
    sources = {m for m in graph if m.startswith(("circuitlens.real", "circuitlens.zoo"))}
    assert not graph["circuitlens.models"] & sources


def test_no_cycles(graph: dict[str, set[str]]) -> None:
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycle = path[path.index(node) :] + [node]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, [*path, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])


#: the size limits of issue 24: a function a reader takes in at once, a class with one job
MAX_FUNCTION_LINES, MAX_CLASS_LINES = 80, 300


def _sizes() -> list[tuple[str, str, int, int]]:
    out = []
    for f in sorted((ROOT / "circuitlens").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
                out.append(
                    (str(f.relative_to(ROOT)), node.name, node.end_lineno - node.lineno + 1, limit)
                )
    return out


def test_no_function_or_class_over_its_size_limit() -> None:
    sizes = _sizes()
    assert any(name == "CircuitTrainer" for _, name, _, _ in sizes)  # the walk sees classes
    over = [f"{f}: {name} is {n} lines (limit {limit})" for f, name, n, limit in sizes if n > limit]
    assert not over, "split these:\n" + "\n".join(over)
