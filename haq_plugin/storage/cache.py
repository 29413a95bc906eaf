"""Where haq-plugin keeps derived files (cost tables, the trained demo model).

The platform's user cache directory (``platformdirs``), or ``$HAQ_PLUGIN_CACHE``
when set.  Everything in it can be deleted at any time: it is rebuilt on demand.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import platformdirs


def cache_dir(*parts: str) -> Path:
    """The cache directory (created), or a sub-directory of it."""
    root = os.environ.get("HAQ_PLUGIN_CACHE") or platformdirs.user_cache_dir("haq-plugin")
    path = Path(root).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def stable_hash(payload: Any) -> str:
    """A short hash of a JSON-serialisable value, stable across runs and machines."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]
