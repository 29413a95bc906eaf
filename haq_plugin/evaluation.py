"""Calling the user's ``eval_fn``: its answer must be an accuracy in percent.

A search trusts the number ``eval_fn(model)`` returns: a string, None, NaN or
a fraction in [0, 1] instead of percent would make every reward meaningless and
the written policy silently wrong.  So every call goes through
:func:`checked_eval_fn`, which turns a failure or a meaningless value into an
:class:`EvaluationError` that says what came back.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from torch import nn

from haq_plugin.errors import HaqError

EvalFn = Callable[[nn.Module], float]
ALLOWED = "eval_fn(model) must return the model's accuracy in percent, a number from 0 to 100"


class EvaluationError(HaqError):
    """``eval_fn`` raised or returned something that is not an accuracy; ``checkpoint`` is set when saved."""

    def __init__(self, message: str, checkpoint: Any = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


def accuracy_problem(value: Any) -> str | None:
    """Why ``value`` is not an accuracy in percent, or None when it is one."""
    if value is None or isinstance(value, (str, bytes, bool)):
        return f"returned {value!r} ({type(value).__name__})"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return f"returned {type(value).__name__}, not a number"
    if math.isnan(number):
        return "returned NaN"
    if not 0.0 <= number <= 100.0:
        return f"returned {number:g}, outside 0..100"
    return None


def checked_eval_fn(eval_fn: EvalFn) -> EvalFn:
    """``eval_fn`` that returns a float accuracy or raises :class:`EvaluationError` (one line of detail)."""
    if not callable(eval_fn):
        raise HaqError(f"eval_fn must be a callable model -> accuracy, got {type(eval_fn).__name__}.")

    def evaluate(model: nn.Module) -> float:
        try:
            value = eval_fn(model)
        except Exception as exc:  # the user's code: report it, do not lose the search
            detail = (str(exc).strip().splitlines() or [""])[0]
            raise EvaluationError(f"eval_fn raised {type(exc).__name__}: {detail}") from exc
        problem = accuracy_problem(value)
        if problem:
            raise EvaluationError(f"eval_fn {problem}")
        return float(value)
    return evaluate


def explain(error: EvaluationError, what: str, output_dir: Any = None, saved: int = 0) -> str:
    """The full message for a failure while evaluating ``what``; with ``saved`` episodes, how to resume."""
    message = f"{error} while evaluating {what}. {ALLOWED}."
    if saved:
        message += (f" The {saved} finished episode(s) are saved in {output_dir}/checkpoint.pt; fix eval_fn and "
                    f"resume (resume=True, or haq-plugin search --resume {output_dir}).")
    return message
