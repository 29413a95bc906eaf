"""A hash of a module's source and of the project modules it imports.

Cost tables are cached on disk, and a cached table must never outlive the code
that computed it.  Hashing every module that happens to be imported would make
the key depend on what else the process loaded (and editing one hardware model
would invalidate every other model's tables).  Instead a model's key covers its
own module and, transitively, the modules of the same top-level package that its
``import`` statements name (function-level imports included; parent-package
``__init__`` files only when they are named).  Third-party packages are not
followed: their versions are the user's environment, not the model's code.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path


def module_source_hash(module: str) -> str:
    """Short hash of ``module``'s source and its project imports, in a stable order."""
    digest = hashlib.sha256()
    for name in sorted(project_imports(module)):
        digest.update(name.encode())
        digest.update(_source(name))
    return digest.hexdigest()[:16]


def project_imports(module: str) -> set[str]:
    """``module`` and every module of its top-level package that it imports, transitively."""
    root = module.partition(".")[0]
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(m for m in _direct_imports(name) if m.partition(".")[0] == root and _file(m))
    return seen


@lru_cache(maxsize=None)
def _direct_imports(module: str) -> tuple[str, ...]:
    path = _file(module)
    if path is None:
        return ()
    try:
        tree = ast.parse(Path(path).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return ()
    package = module if Path(path).name == "__init__.py" else module.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            if base is None:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append(sub if alias.name != "*" and _file(sub) else base)
    return tuple(found)


def _absolute(node: ast.ImportFrom, package: str) -> str | None:
    """The absolute module name of a ``from ... import`` statement."""
    if not node.level:
        return node.module
    parts = package.split(".")
    if node.level - 1 > len(parts):
        return None
    base = ".".join(parts[: len(parts) - (node.level - 1)])
    return f"{base}.{node.module}" if node.module else base


@lru_cache(maxsize=None)
def _file(module: str) -> str | None:
    """The source file of ``module``, or None (not found, not Python source)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError, AttributeError):
        return None
    origin = spec.origin if spec else None
    return origin if origin and origin.endswith(".py") else None


def _source(module: str) -> bytes:
    path = _file(module)
    try:
        return Path(path).read_bytes() if path else b""
    except OSError:
        return path.encode() if path else b""
