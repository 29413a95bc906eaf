"""The ``llamacpp`` extra, imported on demand, and the identity of the machine it measures.

``llama-cpp-python`` builds llama.cpp from source on install (minutes) and only
this hardware model needs it, so it is an optional extra, imported inside the
functions that time a file.  Without it the model stays registered: ``hw list``
shows it as unavailable with the line that installs it, and using it is a
one-line refusal (:meth:`HardwareModel.unavailable <haq_plugin.api.hardware.HardwareModel.unavailable>`).

A measured table is only valid on the machine, build and settings that measured
it, so :func:`machine_identity` names the CPU model, the CPUs this process may
run on, and the llama-cpp-python version with the features llama.cpp was
compiled with (AVX2, NEON, ...); the table's cache key holds all of them.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import platform
import sys
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Iterator

from haq_plugin.api.errors import HaqError

LLAMACPP_INSTALL = 'pip install "haq-plugin[llamacpp]"'
_EXTRA_MODULES = ("llama_cpp", "gguf")


@functools.cache
def missing_extra() -> str | None:
    """None when every module of the extra imports, else one line naming the first that does not."""
    for name in _EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except Exception as error:  # a broken native library raises OSError or RuntimeError, not ImportError
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            return f"it needs the llamacpp extra ({name} does not import: {reason}); install it with: " \
                   f"{LLAMACPP_INSTALL}"
    return None


def require_llama_cpp(purpose: str = "hardware model 'llamacpp-cpu' is unavailable") -> ModuleType:
    """``llama_cpp``, or the one-line :class:`HaqError` of :func:`missing_extra` after ``purpose``."""
    missing = missing_extra()
    if missing:
        raise HaqError(f"{purpose}: {missing}")
    return importlib.import_module("llama_cpp")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_identity() -> dict[str, str | int]:
    """CPU model, usable CPUs, llama-cpp-python version and llama.cpp's compiled features."""
    llama_cpp = require_llama_cpp()
    features = llama_cpp.llama_print_system_info()
    return {"cpu": cpu_model(), "cpus": usable_cpus(), "machine": platform.machine(),
            "llama_cpp_python": getattr(llama_cpp, "__version__", "unknown"),
            "llama_cpp_features": features.decode(errors="replace") if isinstance(features, bytes) else str(features)}


@contextmanager
def native_output_to(log: Path) -> Iterator[None]:
    """Everything llama.cpp prints meanwhile (through llama-cpp-python's logger or straight to the process's
    stdout and stderr, as its quantizer and loader partly do) goes into the file ``log`` instead."""
    logger = logging.getLogger("llama-cpp-python")
    level = logger.level
    logger.setLevel(logging.ERROR)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log, "wb") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        logger.setLevel(level)
