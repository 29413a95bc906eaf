"""User-facing errors.

Every mistake a user can make (a bad option, an unknown name, an infeasible
budget, a malformed policy file) raises :class:`HaqError`.  The CLI turns it into a
one-paragraph message and a non-zero exit instead of a traceback, so the message
must say what was wrong and what is allowed.
"""

from __future__ import annotations


class HaqError(Exception):
    """A mistake in user input or plugin behaviour, explained in plain words."""


class PluginError(HaqError):
    """A plugin failed to load, raised in a hook, or registered something malformed."""


class InfeasibleBudget(HaqError):
    """No policy meets the budget; ``smallest`` is the smallest feasible fraction of the 8-bit cost."""

    def __init__(self, message: str, smallest: float) -> None:
        super().__init__(message)
        self.smallest = smallest


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (or only ``Type``): a foreign exception quoted in one of our messages.

    Framework errors (torch.fx, torch.export, unpickling) explain themselves in paragraphs; the
    first non-empty line says what happened.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
