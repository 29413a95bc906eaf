"""Test helpers: the ``haq-plugin`` command line in a fresh interpreter, as a user runs it, and an
observer plugin that presses Ctrl-C in the middle of a search."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from haq_plugin.api.hookspecs import hookimpl

CLI = [sys.executable, "-m", "haq_plugin.cli"]


def cli_env(path: Sequence[Path] = ()) -> dict[str, str]:
    """The test's environment (HAQ_PLUGIN_CACHE included), one thread, ``path`` first on PYTHONPATH."""
    pythonpath = [str(p) for p in path] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(pythonpath)}


def run_cli(*args: str, cwd: Path | None = None, path: Sequence[Path] = (),
            timeout: float = 900) -> subprocess.CompletedProcess:
    """``haq-plugin ARGS`` in a subprocess; stdout and stderr captured separately as text."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, env=cli_env(path),
                          timeout=timeout)


def install_example(example: Path, copy_dir: Path, target: Path) -> Path:
    """``pip install --target TARGET`` of a copy of ``example`` (a build in place would litter the repository)."""
    source = copy_dir / example.name
    shutil.copytree(example, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--no-cache-dir", "--disable-pip-version-check", "--quiet", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return target


def start_cli(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    """``haq-plugin ARGS`` started in the background (to interrupt it)."""
    return subprocess.Popen([*CLI, *args], cwd=cwd, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


class Interrupter:
    """An observer plugin that presses Ctrl-C after a given number of finished episodes."""

    def __init__(self, after: int) -> None:
        self.after, self.seen = after, 0

    @hookimpl
    def haq_episode_finished(self, record):
        self.seen += 1
        if self.seen == self.after:
            raise KeyboardInterrupt
