"""The package's modules import each other without a cycle (read from the source, not by importing)."""

from __future__ import annotations

import ast
from pathlib import Path

import haq_plugin

ROOT = Path(haq_plugin.__file__).parent


def module_name(path: Path) -> str:
    parts = ["haq_plugin", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports at module level or inside functions (not for type checking)."""
    found = set()
    tree = ast.parse(path.read_text())
    checking = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in checking:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                      for alias in node.names}
    return found & modules


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: imports_of(path, set(paths)) - {name} for name, path in paths.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None
    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_modules_of_the_package():
    edges = graph()
    assert {"haq_plugin.engine.search", "haq_plugin.cli", "haq_plugin.cli.search_cmd", "haq_plugin.engine.settings"} <= set(edges)
    assert "haq_plugin.engine.settings" in edges["haq_plugin.cli.options"]
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


def test_nothing_outside_the_command_line_imports_it():
    users = {name for name, targets in graph().items() if any(t.startswith("haq_plugin.cli") for t in targets)}
    assert {u for u in users if not u.startswith("haq_plugin.cli")} == {"haq_plugin.__main__"}


def test_search_is_the_function_and_its_module_is_a_plain_module():
    import importlib
    import inspect
    import types

    from haq_plugin.engine.search import search as function

    assert haq_plugin.search is function and callable(haq_plugin.search)
    module = importlib.import_module("haq_plugin.engine.search")
    assert type(module) is types.ModuleType
    assert haq_plugin.search is function  # importing the module does not replace the function
    assert inspect.signature(haq_plugin.search) == inspect.signature(function)
