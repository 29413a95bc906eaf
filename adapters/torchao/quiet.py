"""Import torchao without its start-up noise, at this adapter's import only.

On a CPU-only machine ``import torchao`` logs one "Failed to load ..._C_*.so"
warning per CUDA extension library it ships, and torch logs a notice about an
enum torchao registers with ``torch.utils._pytree``.  Neither is about the
user's model and neither can be acted on, so :func:`quiet_torchao_import`
raises those two loggers to ERROR while the imports run and then puts their
levels back; later torchao messages and every other logger are untouched.
:func:`quiet_export` hides the partial graph torch.export logs and prints when
it cannot capture a model, which the backend turns into one clear error.
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Iterator

NOISY_AT_IMPORT = ("torchao", "torch.utils._pytree")
# torch.export logs (and prints to stderr) the partial graph of a model it cannot capture.
NOISY_ON_EXPORT_FAILURE = ("torch.fx.experimental.symbolic_shapes", "torch._dynamo", "torch.export")


@contextlib.contextmanager
def quiet_loggers(names: tuple[str, ...]) -> Iterator[None]:
    """Run the ``with`` block with the loggers ``names`` raised to ERROR, then restore their levels."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def quiet_torchao_import() -> contextlib.AbstractContextManager[None]:
    """Silence the start-up loggers while torchao is imported."""
    return quiet_loggers(NOISY_AT_IMPORT)


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Hide what a failing ``torch.export`` logs and prints; the caller's error names the cause instead."""
    with quiet_loggers(NOISY_ON_EXPORT_FAILURE), contextlib.redirect_stderr(io.StringIO()):
        yield
