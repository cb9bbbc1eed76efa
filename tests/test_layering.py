"""The floors point down: wire contract → runtime → nodes → command line, demo, bench.

A module may import its own floor and the floors below it, never one above, not even
by a module name in a string (``importlib.import_module("edge_node.cli")``). The two
nodes share a floor but never import each other (the edge install has no torch).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> floor; higher floors may import lower ones
FLOORS: dict[str, int] = {
    "schemas": 0,
    "runtime": 1,
    "edge_node": 2,
    "verifier_node": 2,
    "sled": 3,
    "bench": 3,
}
_NAME_STRING = re.compile(r"(" + "|".join(FLOORS) + r")(\.\w+)*")


def imported_names(source: str, module: str) -> Iterator[tuple[int, str]]:
    """``(line, module name)`` of every import of the project's packages in ``source``,
    at any depth (inside functions too), relative imports resolved, plus string
    constants that are exactly a dotted module name of the project."""
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                yield node.lineno, ".".join([*base, node.module] if node.module else base)
            elif node.module:
                yield node.lineno, node.module
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if "." in node.value and _NAME_STRING.fullmatch(node.value):
                yield node.lineno, node.value


def violations(source: str, module: str) -> list[str]:
    """Each upward (or node-to-node) import in ``source``, as ``line: a -> b``."""
    own = module.split(".")[0]
    found = []
    for line, name in imported_names(source, module):
        other = name.split(".")[0]
        if other not in FLOORS or other == own:
            continue
        upward = FLOORS[other] > FLOORS[own]
        sideways = FLOORS[other] == FLOORS[own] == FLOORS["edge_node"]
        if upward or sideways:
            found.append(f"{module}:{line}: {own} (floor {FLOORS[own]}) -> {name}")
    return found


def product_modules() -> Iterator[tuple[str, Path]]:
    for package in FLOORS:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            yield ".".join(rel.parts), path


def test_no_module_imports_a_higher_floor() -> None:
    found = [v for name, path in product_modules() for v in violations(path.read_text(), name)]
    assert found == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("schemas.codec", "from edge_node.policy import EdgePolicy", 1),  # contract -> node
        ("runtime.config", "import verifier_node", 1),  # runtime -> node
        ("edge_node.service", "def f():\n    from sled.client import SledClient", 1),
        ("verifier_node.runner", "from bench.sim import trace", 1),  # node -> bench
        ("edge_node.cli", "from verifier_node import cli", 1),  # node -> node
        ("runtime.x", "import importlib\nimportlib.import_module('sled.demo.cli')", 1),
        ("runtime.transport.mqtt", "from ..config import load_config", 0),  # same floor
        ("sled.cli", "from edge_node import cli\nfrom bench import rtt", 0),  # down
        ("edge_node.policy", "from schemas import DraftRequest\nimport numpy", 0),
        ("verifier_node.verify", '"""Mirrors ``edge_node.sampling.warp``."""', 0),  # prose
    ],
)
def test_violations_literal_cases(module: str, source: str, expected: int) -> None:
    assert len(violations(source, module)) == expected


def test_every_product_package_has_a_floor() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert packages == set(FLOORS)


def _readme_layout() -> dict[str, str]:
    """README's layout table: folder -> its text."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| `")]
    return {cells[1].strip().strip("`").rstrip("/"): cells[2].strip() for cells in rows}


def test_readme_layout_table_matches_the_tree() -> None:
    layout = _readme_layout()
    missing = sorted(folder for folder in layout if not (ROOT / folder).is_dir())
    assert missing == [], "README lists folders that do not exist"
    packages = {
        str(p.parent.relative_to(ROOT))
        for name in FLOORS
        for p in (ROOT / name).rglob("__init__.py")
    }
    assert sorted(packages - set(layout)) == [], "packages missing from README's layout"
    for package in packages:  # the floor in brackets is the package's floor
        assert layout[package].startswith(f"[{FLOORS[package.split('/')[0]]}]"), package
