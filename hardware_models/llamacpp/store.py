"""The measured table on disk, keyed by everything its figures depend on.

A table measured on one machine, thread count, context or llama.cpp build says
nothing about another, and measuring takes minutes, so it is kept in
haq-plugin's cache directory (:func:`~haq_plugin.storage.cache.cache_dir`,
``llamacpp/``) under a hash of: the machine (:func:`machine_identity`: CPU model,
usable CPUs, llama-cpp-python version and llama.cpp's compiled features), the
timing protocol (threads, context, prompt and decode tokens, repeats), the
calibration model's SHA-256, and the source of the code that writes and times
the files.  A damaged or mismatched file is a miss: measured again, replaced.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from haq_plugin.hardware_models.llamacpp.extra import machine_identity
from haq_plugin.hardware_models.llamacpp.table import LookupTable, measure
from haq_plugin.hardware_models.llamacpp.timing import Protocol
from haq_plugin.storage.cache import cache_dir, stable_hash
from haq_plugin.storage.code_hash import module_source_hash
from haq_plugin.storage.files import write_text_atomic
from haq_plugin.tasks.llm.float_cache import sha256_of

FORMAT = 1


def table_key(source: Path, protocol: Protocol) -> dict[str, Any]:
    """Everything the measured figures depend on."""
    return {"format": FORMAT, **machine_identity(), **asdict(protocol), "model_sha256": sha256_of(source),
            "code": module_source_hash("haq_plugin.hardware_models.llamacpp.table")}


def table_path(key: dict[str, Any]) -> Path:
    return cache_dir("llamacpp") / f"table-{stable_hash(key)}.json"


def _read(path: Path, key: dict[str, Any]) -> LookupTable | None:
    try:
        data = json.loads(path.read_text())
        table = LookupTable(**data)
    except (OSError, ValueError, TypeError):
        return None
    return table if table.key == json.loads(json.dumps(key)) else None


def load_or_measure(source: Path, protocol: Protocol, use_cache: bool = True, progress: bool = True) -> LookupTable:
    """The cached table of ``source`` under ``protocol`` on this machine, measuring it on a miss."""
    key = table_key(source, protocol)
    path = table_path(key)
    if use_cache and path.is_file():
        table = _read(path, key)
        if table is not None:
            return table
    table = measure(source, protocol, key, progress)
    if use_cache:
        write_text_atomic(path, json.dumps(table.to_json(), indent=1))
    return table
