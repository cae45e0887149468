"""The package map of docs/architecture.md, enforced: who may import whom, and no cycles.

`backworks_core` is the layer that needs no running mitmproxy addon: it must never import `addons`
(not even inside a function), so that the loader, the compiler and the capture pipeline can be used
and tested alone. `addons` builds on `backworks_core`; the CLI (`backworks_cli`) and `backworks.py`
sit on top and may see both. Imports inside `if TYPE_CHECKING:` blocks are annotations only and
do not count.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("backworks_core", "addons", "backworks_cli")
LAYERS = {"backworks_core": 0, "addons": 1, "backworks_cli": 2}
"""A package may import its own layer and the ones below, never one above."""


def project_modules() -> dict[str, Path]:
    """Module name → file, for every module of the three packages (and backworks.py)."""
    found = {"backworks": ROOT / "backworks.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node, except those under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports at run time, at any depth of its code."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            # the longest project module the dotted name starts with
            parts = target.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts and ".".join(parts) != name:
                found.add(".".join(parts))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer(module: str) -> int:
    return LAYERS.get(module.split(".")[0], 3)  # backworks.py: the top


def test_no_package_imports_a_layer_above_it(graph: dict[str, set[str]]) -> None:
    upward = sorted(f"{name} imports {target}" for name, targets in graph.items() for target in targets if layer(target) > layer(name))
    assert upward == [], "backworks_core must not import addons or backworks_cli, addons not backworks_cli:\n" + "\n".join(upward)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's `__init__` importing its own submodules (to re-export them) is not a cycle
    of design: drop the edges from a submodule to the package that contains it."""
    return {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph.items()}


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    cycles = find_cycles(without_package_inits(graph))
    assert cycles == [], "import cycles:\n" + "\n".join(" ↔ ".join(c) for c in cycles)


def test_the_checks_see_a_violation() -> None:
    """The two rules above must be able to fail: a made-up graph with both faults."""
    bad = {"backworks_core.a": {"addons.b"}, "addons.b": {"backworks_core.a"}}
    assert find_cycles(bad) == [["addons.b", "backworks_core.a"]]
    assert layer("addons.b") > layer("backworks_core.a")


def test_imports_are_read_at_every_depth(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from addons import annotations_only\n"
        "def f():\n    from addons.core import Backworks\n    from . import sibling\n"
    )
    modules = {"addons": tmp_path, "addons.core": tmp_path, "pkg.m": source, "pkg.sibling": tmp_path, "pkg": tmp_path}
    assert imports_of("pkg.m", source, modules) == {"addons.core", "pkg", "pkg.sibling"}
