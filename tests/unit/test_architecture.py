"""Imports point downward only: the layers of STYLE.md, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "esper"

# Which top-level parts of esper each part may import (besides itself).
BOTTOM = {"lifecycle", "contracts", "config", "registry", "machine", "provenance", "lifetime"}
ALLOWED: dict[str, set[str]] = {
    "lifecycle": set(),
    "registry": set(),
    "machine": set(),
    # How worker processes end: with the process that started them.
    "lifetime": set(),
    # Command, commit, machine and date of a result; it may import torch (its version).
    "provenance": set(),
    "arms": BOTTOM | {"controller"},
    "cluster": set(),
    "contracts": {"lifecycle"},
    "config": {"lifecycle"},
    "data": {"contracts"},
    "model": BOTTOM,
    "controller": BOTTOM,
    "telemetry": BOTTOM,
    "training": BOTTOM | {"data", "model", "controller", "telemetry"},
    "rl": BOTTOM | {"cluster", "data", "model", "controller", "telemetry", "training", "rundir"},
    "rundir": set(),
    "run": BOTTOM | {"data", "model", "controller", "telemetry", "training", "rundir"},
    # Runs, pools (local and Ray: Ray itself only through esper.cluster), statistics, report.
    "compare": BOTTOM
    | {"arms", "cluster", "data", "model", "controller", "telemetry", "training", "rl"}
    | {"run", "rundir"},
    # Headroom: scripted plans searched through the compare's pools and runs.
    "search": BOTTOM | {"arms", "controller", "telemetry", "training", "run", "compare"},
    # The live view reads what runs write, like `esper report`; it never imports torch.
    "watch": BOTTOM | {"telemetry"},
    "cli": BOTTOM
    | {
        "arms",
        "cluster",
        "data",
        "model",
        "controller",
        "telemetry",
        "training",
        "rl",
        "rundir",
        "run",
        "compare",
        "search",
        "watch",
    },
}

# The only esper imports allowed inside a function, each for start-up time alone: the
# command line parses its arguments (and answers --help) before the command it runs
# imports torch and friends. (file, imported module)
LAZY_FOR_START_UP = {
    ("__init__.py", "esper.model.export"),
    ("cli/__init__.py", "esper.cli.commands"),
    ("cli/__init__.py", "esper.cli.watch"),
}


def _part(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _imported_parts(path: Path) -> set[str]:
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            if name.startswith("esper."):
                parts.add(name.split(".")[1])
    return parts


def test_imports_point_downward() -> None:
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        part = _part(path)
        if part == "__init__":
            continue
        assert part in ALLOWED, f"new top-level part {part!r}: add it to ALLOWED"
        for imported in _imported_parts(path) - {part}:
            if imported not in ALLOWED[part]:
                wrong.append(f"{path.relative_to(SRC)} imports esper.{imported}")
    assert not wrong, "upward or sideways imports:\n" + "\n".join(wrong)


def test_no_import_inside_functions() -> None:
    # Lazy imports hide cycles; the only allowed ones load optional extras, and the
    # command's modules once the command line is parsed (LAZY_FOR_START_UP).
    lazy = []
    for path in sorted(SRC.rglob("*.py")):
        where = path.relative_to(SRC).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.Import | ast.ImportFrom):
                        mod = inner.module if isinstance(inner, ast.ImportFrom) else None
                        name = mod or inner.names[0].name
                        if name.startswith("esper") and (where, name) not in LAZY_FOR_START_UP:
                            lazy.append(f"{where}:{inner.lineno}")
    assert not lazy, f"esper imported inside a function: {lazy}"


LONGEST_FUNCTION = 80
"""Lines of the longest function src/ may hold: a function should read at once."""


def test_no_function_is_too_long_to_read_at_once() -> None:
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > LONGEST_FUNCTION:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({lines})")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)
