"""Small file helpers: atomic writes and JSON reading with user-facing errors.

Every file haq-plugin writes (policies, exports, search outputs, checkpoints)
goes through :func:`write_via_temp`, so an interrupted write never leaves half a
file behind (the bytes are on disk before the rename makes them the file), and
the JSON files it reads go through :func:`read_json`, so a missing or malformed
file is a clear :class:`HaqError`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from haq_plugin.api.errors import HaqError


def write_via_temp(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it over ``path``.

    A directory that cannot be created or written (read-only, a file in the way,
    a full disk) is a :class:`HaqError` naming the path, not a traceback.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    except OSError as exc:
        raise unwritable(path, exc) from None
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, _default_mode())  # mkstemp makes 0600; give the file the user's usual mode
        _flush_to_disk(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise unwritable(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _flush_to_disk(path: Path) -> None:
    """Make the new file's bytes durable before the rename publishes it.

    Without this a power loss soon after the rename can leave the *named* file
    empty (the rename reached the disk, the data did not), which for a
    checkpoint would lose every episode of the search.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unwritable(path: Path, exc: OSError) -> HaqError:
    """The error for a file that could not be written: which file, the system's reason, what to do."""
    reason = exc.strerror or type(exc).__name__
    if exc.filename and Path(exc.filename) != path:
        reason += f" ({exc.filename})"
    return HaqError(f"Cannot write {path}: {reason}. Choose an output path in a directory you can write to.")


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    return write_via_temp(path, lambda tmp: tmp.write_text(text))


def _default_mode() -> int:
    """Permissions of a newly created file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def require_fields(entry: Any, keys: Iterable[str], where: str) -> None:
    """Raise :class:`HaqError` unless ``entry`` is a JSON object with every one of ``keys``."""
    if not isinstance(entry, dict):
        raise HaqError(f"{where} must be an object.")
    for key in keys:
        if key not in entry:
            raise HaqError(f"{where} lacks field '{key}'.")


def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file; a missing or malformed file is a :class:`HaqError` naming ``what`` it should be."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise HaqError(f"{what} {path} does not exist.") from None
    except IsADirectoryError:
        raise HaqError(f"{what} {path} is a directory, not a file.") from None
    except UnicodeDecodeError:
        raise HaqError(f"{what} {path} is not a text file (it is not valid UTF-8), so it cannot be JSON; "
                       "give the JSON file haq-plugin wrote.") from None
    except json.JSONDecodeError as exc:
        raise HaqError(f"{what} {path} is not valid JSON: {exc}.") from None
    except RecursionError:
        raise HaqError(f"{what} {path} is nested too deeply to be read; it is not a file haq-plugin "
                       "wrote.") from None


def read_versioned_json(path: str | Path, what: str, kind: str, file_format: str, schema_version: int) -> dict:
    """A JSON object that haq-plugin wrote with ``"format": file_format`` and ``schema_version``.

    ``what`` names the file in read errors, ``kind`` in the message for a file of
    another format; a file of another schema version is refused with the one read.
    """
    data = read_json(path, what)
    if not isinstance(data, dict) or data.get("format") != file_format:
        raise HaqError(f"{path} is not a {kind} written by haq-plugin (expected \"format\": \"{file_format}\").")
    if data.get("schema_version") != schema_version:
        raise HaqError(f"{path}: schema_version {data.get('schema_version')!r}; this haq-plugin reads "
                       f"schema_version {schema_version}.")
    return data
