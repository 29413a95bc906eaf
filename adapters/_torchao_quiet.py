"""Import torchao without its start-up noise, at this adapter's import only.

On a CPU-only machine ``import torchao`` logs one "Failed to load ..._C_*.so"
warning per CUDA extension library it ships, and torch logs a notice about an
enum torchao registers with ``torch.utils._pytree``.  Neither is about the
user's model and neither can be acted on, so :func:`quiet_torchao_import`
raises those two loggers to ERROR while the imports run and then puts their
levels back; later torchao messages and every other logger are untouched.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

NOISY_AT_IMPORT = ("torchao", "torch.utils._pytree")


@contextlib.contextmanager
def quiet_torchao_import() -> Iterator[None]:
    """Run the ``with`` block (torchao imports) with the start-up loggers silenced."""
    loggers = [logging.getLogger(name) for name in NOISY_AT_IMPORT]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
