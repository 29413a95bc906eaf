"""The global random generators (Python, NumPy, PyTorch): seeding them, and their state as plain values.

A backend or an ``eval_fn`` may draw from these generators; a search seeds them
once, and the checkpoint stores their state so that a resumed search continues
bit for bit (the agent owns separate generators, :mod:`haq_plugin.engine.agent`).
"""

from __future__ import annotations

import random
from typing import Any, Mapping

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed the global generators a backend might use (Python, NumPy, PyTorch)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """The global generators' states as checkpoint-safe values (no NumPy arrays)."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"] = {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"])}
    return {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state()}


def restore_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    np_state = dict(state["numpy"])
    np_state["state"] = {"key": np.asarray(np_state["state"]["key"], dtype=np.uint32),
                         "pos": np_state["state"]["pos"]}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
