"""The package's import graph: acyclic, and every arrow points down the layers of docs/architecture.md."""

from __future__ import annotations

import ast
from pathlib import Path

import kling_async

PACKAGE = Path(kling_async.__file__).parent

# Top to bottom; a module may import only modules on a lower line (the ground may not import each other
# upwards either: its order is the order below).
LAYERS: list[set[str]] = [
    {"__main__"},
    {"__init__"},
    {"_cli"},
    {"_progress", "_report"},
    {"_client"},
    {"_batch"},
    {"_tracker"},
    {"_submit"},
    {"_registry"},
    {"_polling"},
    {"_shared"},
    {"_relay_pg"},
    {"_journals"},
    {"_webhooks", "_rate_pg", "_download"},
    {"_journal_pg"},
    {"_journal"},
    {"_pipeline"},
    {"_retry", "_limits"},
    {"_transport"},
    {"_endpoints"},
    {"_models"},
    {"_events", "_errors", "_clock", "_secret"},
]


def _imports(path: Path) -> set[str]:
    """The package modules a module imports at run time (``if TYPE_CHECKING:`` blocks excluded)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    visit([child])

    visit(tree.body)
    return found


def _graph() -> dict[str, set[str]]:
    return {path.stem: _imports(path) for path in PACKAGE.glob("*.py")}


def test_every_module_has_a_layer() -> None:
    """A new module must be placed in the layering (and in docs/architecture.md)."""
    placed = set().union(*LAYERS)
    assert set(_graph()) - placed == set()


def test_no_module_imports_one_above_or_beside_it() -> None:
    """Every import points to a lower layer: no cycle is possible, and no arrow runs back up."""
    level = {module: depth for depth, layer in enumerate(LAYERS) for module in layer}
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in _graph().items()
        for target in targets
        if target in level and level[target] <= level[module]
    )
    assert upward == []


def test_the_import_graph_has_no_cycle() -> None:
    """Independently of the layers: a depth-first search finds no cycle among the package's modules."""
    graph = _graph()
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if target not in graph:
                continue
            assert state.get(target) != "open", " -> ".join([*trail, module, target])
            if target not in state:
                visit(target, [*trail, module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
