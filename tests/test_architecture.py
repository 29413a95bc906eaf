"""The package's shape, read from the source (not by importing): no import cycle, TYPE_CHECKING and
function-local imports included; no module over 400 lines; CONTRIBUTING.md's layout table lists every module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import haq_plugin

REPO = Path(__file__).resolve().parents[1]
#: Source folder -> the package it is installed as (pyproject.toml's package-dir mapping).
ROOTS = {"haq_plugin": "haq_plugin", "adapters": "haq_plugin.adapters", "hardware_models": "haq_plugin.hardware_models"}
MAX_LINES = 400


def source_files() -> dict[str, Path]:
    """Module name -> file, for every module of the installed package."""
    files = {}
    for folder, package in ROOTS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = [*package.split("."), *path.relative_to(REPO / folder).with_suffix("").parts]
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports anywhere: module level, inside functions, under TYPE_CHECKING."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
    return {target for target in found if target in modules}


def graph() -> dict[str, set[str]]:
    files = source_files()
    return {name: imports_of(name, path, set(files)) - {name} for name, path in files.items()}


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


def test_the_graph_sees_type_checking_and_function_local_imports():
    edges = graph()
    assert {"haq_plugin.engine.search", "haq_plugin.cli.search_cmd", "haq_plugin.adapters.torch_ao",
            "haq_plugin.hardware_models.bitfusion.rules"} <= set(edges)
    assert "haq_plugin.engine.settings" in edges["haq_plugin.cli.options"]
    assert "haq_plugin.api.backend" in edges["haq_plugin.api.hookspecs"]  # under TYPE_CHECKING
    assert "haq_plugin.adapters.brevitas.quantizers" in edges["haq_plugin.adapters.brevitas"]  # inside methods


def test_no_import_cycle_between_modules_of_the_package():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle)


def test_no_module_is_over_400_lines():
    long = {str(path.relative_to(REPO)): n for path in source_files().values()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules (at most {MAX_LINES} lines each): {long}"


def test_nothing_outside_the_command_line_imports_it():
    users = {name for name, targets in graph().items() if any(t.startswith("haq_plugin.cli") for t in targets)}
    assert {u for u in users if not u.startswith("haq_plugin.cli")} == {"haq_plugin.__main__"}


def layout_table_paths() -> set[str]:
    """Every ``path.py`` named in the first column of CONTRIBUTING.md's layout table."""
    text = (REPO / "CONTRIBUTING.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    paths = set()
    for line in section.splitlines():
        if line.startswith("| "):
            first = line.split("|")[1]
            paths |= set(re.findall(r"`([\w/]+\.py)`", first))
    return paths


def test_contributing_layout_table_lists_every_module_and_nothing_else():
    on_disk = {str(path.relative_to(REPO)) for path in source_files().values()}
    listed = layout_table_paths()
    assert not on_disk - listed, f"add to CONTRIBUTING.md's layout table: {sorted(on_disk - listed)}"
    assert not listed - on_disk, f"CONTRIBUTING.md's layout table lists missing files: {sorted(listed - on_disk)}"


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


def test_one_bit_pair_definition():
    defined = [str(path.relative_to(REPO)) for path in source_files().values()
               if re.search(r"^BitPair\s*=", path.read_text(), re.M)]
    assert defined == ["haq_plugin/api/bits.py"]
