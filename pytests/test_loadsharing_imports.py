"""The load-sharing package has no import cycle (issue 17) and its simulations live outside it.

Every import of a ``transports.loadsharing`` module counts, wherever it is written (at the top,
in a function), except under ``if TYPE_CHECKING:`` (annotations only, never run). A cycle is
reported with its path. ``python pytests/test_loadsharing_imports.py`` prints the graph.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "transports" / "loadsharing"
PREFIX = "transports.loadsharing"


def _imports(tree: ast.AST) -> set[str]:
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == PREFIX:
                found.update(f"{PREFIX}.{a.name}" for a in node.names)
            elif node.module.startswith(PREFIX + "."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(PREFIX + "."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def graph() -> dict[str, set[str]]:
    modules = {f"{PREFIX}.{p.stem}": p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    return {name: {m for m in _imports(ast.parse(path.read_text())) if m in modules} - {name}
            for name, path in sorted(modules.items())}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            walk(node)
    return found


def test_the_package_has_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_simulations_are_not_in_the_product_package() -> None:
    assert not [p.name for p in PACKAGE.glob("sim*.py")]


if __name__ == "__main__":
    for module, deps in graph().items():
        short = module.removeprefix(PREFIX + ".")
        print(f"{short}: {', '.join(sorted(d.removeprefix(PREFIX + '.') for d in deps)) or '-'}")
    sys.exit(1 if cycles(graph()) else 0)
