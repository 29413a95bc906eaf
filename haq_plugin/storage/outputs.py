"""The output directory of a search: checked before the search, locked while it runs.

The files in it are written by :mod:`haq_plugin.storage.report` (policy, export, CSV,
markdown, figure) and :mod:`haq_plugin.storage.checkpoint` (``checkpoint.pt``).  While a
search runs, ``search.lock`` holds its process id, so that a second search on
the same directory is refused instead of silently overwriting the first one's
files; a lock left by a process that no longer runs (SIGKILL, power loss) is
taken over, and so is an empty one a few seconds old (its process died between
creating the file and writing its id into it).  A sweep locks its own directory
the same way, so two sweeps never search into the same budget folders.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Callable

from haq_plugin.storage.checkpoint import CHECKPOINT
from haq_plugin.api.errors import HaqError
from haq_plugin.storage.report import EPISODES, FIGURE, POLICY, SUMMARY

__all__ = ["CHECKPOINT", "EPISODES", "FIGURE", "LOCK", "POLICY", "SUMMARY", "OutputLock", "open_output_dir", "prepare_output_dir"]

LOCK = "search.lock"
#: How old an empty lock file must be to count as abandoned (writing a pid takes microseconds).
UNWRITTEN_LOCK_SECONDS = 5.0


def prepare_output_dir(path: str | Path, resume: bool, force: bool) -> Path:
    """Check the output directory for a new or resumed search and create it.

    A new search refuses a non-empty directory (it would mix two searches'
    files) unless ``force``; a resumed one needs the checkpoint there.  The
    directory's own lock file does not count as content.
    """
    path = Path(path)
    if resume:
        if not (path / CHECKPOINT).is_file():
            raise HaqError(f"Cannot resume: {path / CHECKPOINT} does not exist. Start a new search "
                           "without resume (--resume) or point to the directory of an earlier search.")
        return path
    if path.exists() and not path.is_dir():
        raise HaqError(f"Output path {path} exists and is not a directory.")
    content = sorted(p.name for p in path.iterdir() if p.name != LOCK) if path.exists() else []
    if content:
        if not force:
            raise HaqError(f"Output directory {path} is not empty ({', '.join(content[:5])}). Use a new "
                           "directory, overwrite with force=True (--force), or continue its search with "
                           "resume=True (--resume).")
        _remove_stale_checkpoint(path / CHECKPOINT)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HaqError(f"Cannot create output directory {path}: {exc.strerror or exc}.") from None
    return path


def _remove_stale_checkpoint(checkpoint: Path) -> None:
    """Remove an earlier search's checkpoint, which must never be resumed by mistake after ``force``."""
    try:
        checkpoint.unlink(missing_ok=True)
    except OSError as exc:
        raise HaqError(f"Cannot overwrite output directory {checkpoint.parent} (force): removing its old "
                       f"checkpoint {checkpoint} failed: {exc.strerror or exc}. Remove it yourself, or use a "
                       "new output directory.") from None


def open_output_dir(path: Path, resume: bool, force: bool) -> tuple[Path, OutputLock]:
    """Check and create a search's output directory and lock it (the lock first where it exists already)."""
    return lock_and_prepare(path, lambda: prepare_output_dir(path, resume, force))


def lock_and_prepare(path: Path, prepare: Callable[[], Path]) -> tuple[Path, OutputLock]:
    """``prepare()`` (which checks and creates ``path``) under the directory's lock, taken first where it can be.

    An existing directory is locked before it is checked, so a second process
    never inspects (or, with force, clears) files the first is writing; a new
    one must be created before its lock file can be.
    """
    if path.is_dir():
        lock = OutputLock(path).acquire()
        try:
            return prepare(), lock
        except BaseException:
            lock.release()
            raise
    prepared = prepare()
    return prepared, OutputLock(prepared).acquire()


class OutputLock:
    """An exclusive lock file in an output directory, held for the whole search (a context manager)."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LOCK
        self.held = False

    def acquire(self) -> "OutputLock":
        for _ in range(2):  # a second try after removing a dead process's lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _lock_owner(self.path)
                if owner is None and not _abandoned_unwritten(self.path):
                    break  # being written this instant by the process that holds it
                if owner is not None and _is_running(owner):
                    break
                self.path.unlink(missing_ok=True)  # stale: its process is gone (or died before writing it)
                continue
            except OSError as exc:
                raise HaqError(f"Cannot write the lock file {self.path}: {exc.strerror or exc}. The output "
                               "directory must be writable.") from None
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{os.getpid()} {socket.gethostname()}\n")
            self.held = True
            return self
        owner = _lock_owner(self.path)
        who = f"process {owner}" if owner is not None else "another process"
        raise HaqError(f"Another search is running in {self.path.parent} ({who}, lock file {self.path}). "
                       "Wait for it to finish, stop it, or use another output directory.")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "OutputLock":
        return self if self.held else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock_owner(path: Path) -> int | None:
    """The process id in a lock file, or None while it is being written (or unreadable)."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _abandoned_unwritten(path: Path) -> bool:
    """An unreadable lock file older than a few seconds: its process died between creating and writing it."""
    try:
        return time.time() - path.stat().st_mtime > UNWRITTEN_LOCK_SECONDS
    except OSError:
        return False


def _is_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    return True
