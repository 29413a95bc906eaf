"""Shared fixtures: an isolated cache directory and real plugin distributions on disk."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from haq_plugin.api.plugins import reset_plugin_manager

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models and batch-64 agent updates run fastest on one thread (and tests share the machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Cost tables go to a per-session temp cache; the demo model cache is shared across tests."""
    monkeypatch.setenv("HAQ_PLUGIN_CACHE", str(_session_cache(tmp_path_factory)))


_CACHE: list[Path] = []


def _session_cache(factory) -> Path:
    if not _CACHE:
        _CACHE.append(factory.mktemp("haq-cache"))
    return _CACHE[0]


def write_plugin_distribution(root: Path, dist_name: str, module_name: str, source: str,
                              entry_points: dict[str, str]) -> Path:
    """Lay out an installed distribution (module + .dist-info with entry points) under ``root``.

    This is exactly what ``pip install`` leaves in site-packages, so
    ``importlib.metadata`` discovers it through the real entry-point machinery.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module_name}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist_name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 1.0\n")
    lines = ["[haq_plugin]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def plugin_site(tmp_path, monkeypatch):
    """A site directory on sys.path for test plugin distributions; the plugin manager is reset around it."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    reset_plugin_manager()
    yield site
    for name in [m for m in sys.modules if m.startswith("haqtest_")]:
        del sys.modules[name]
    reset_plugin_manager()
