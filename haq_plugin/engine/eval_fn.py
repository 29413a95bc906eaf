"""Calling the user's ``eval_fn``: its answer must be an accuracy in percent (or a perplexity).

A search trusts the number ``eval_fn(model)`` returns: a string, None, NaN or
a value outside 0..100 would make every reward meaningless and the written
policy silently wrong.  So every call goes through :func:`checked_eval_fn`,
which turns a failure or a meaningless value into an :class:`EvaluationError`
that says what came back.  :func:`accuracy_problem` is the one definition of an
accuracy; :mod:`haq_plugin.tasks.validation` uses it for its up-front checks too.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

from torch import nn

from haq_plugin.api.errors import HaqError, one_line
from haq_plugin.engine.metric import ACCURACY, Metric

EvalFn = Callable[[nn.Module], float]
ALLOWED = ("eval_fn(model) must return the model's accuracy in percent, a number from 0 to 100 "
           "(a fraction such as 0.93 is read as 0.93%)")


class EvaluationError(HaqError):
    """``eval_fn`` raised or returned something that is not an accuracy; ``checkpoint`` is set when saved."""

    def __init__(self, message: str, checkpoint: Any = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


def _scalar(value: Any) -> Any:
    """A 0-d tensor or NumPy scalar as its Python number (``.item()``); anything else unchanged."""
    item = getattr(value, "item", None)
    return item() if callable(item) and getattr(value, "ndim", None) == 0 else value


def accuracy_problem(value: Any, metric: Metric = ACCURACY) -> str | None:
    """Why ``value`` is not an accuracy in percent (``"returned ..."``), or None when it is one.

    The single test of an accuracy: the search's :func:`checked_eval_fn` and
    :func:`haq_plugin.tasks.validation.check_accuracy` both use it.
    """
    value = _scalar(value)
    if value is None or isinstance(value, (str, bytes, bool)):
        return f"returned {value!r} ({type(value).__name__})"
    if not isinstance(value, numbers.Real):
        return f"returned {type(value).__name__} {short_repr(value)}, not a number"
    number = float(value)
    if math.isnan(number):
        return "returned NaN"
    if metric is not ACCURACY:
        problem = metric.problem(number)
        return f"returned {number:g}, not a {metric.name}" if problem else None
    if not 0.0 <= number <= 100.0:
        return f"returned {number:g}, outside 0..100"
    return None


def accuracy_value(value: Any, what: str = "eval_fn", metric: Metric = ACCURACY) -> float:
    """``value`` as a float accuracy in percent (or ``metric``); :class:`EvaluationError` otherwise."""
    problem = accuracy_problem(value, metric)
    if problem:
        raise EvaluationError(f"{what} {problem}")
    return float(_scalar(value))


def call_eval_fn(eval_fn: EvalFn, model: nn.Module, what: str = "eval_fn", metric: Metric = ACCURACY) -> float:
    """``eval_fn(model)`` as a float accuracy; its exception or a meaningless value becomes :class:`EvaluationError`."""
    try:
        value = eval_fn(model)
    except Exception as exc:  # the user's code: report it, do not lose the search
        raise EvaluationError(f"{what} raised {one_line(exc)}") from exc
    return accuracy_value(value, what, metric)


def checked_eval_fn(eval_fn: EvalFn, metric: Metric = ACCURACY) -> EvalFn:
    """``eval_fn`` that returns a float ``metric`` or raises :class:`EvaluationError` (one line of detail)."""
    if not callable(eval_fn):
        raise HaqError(f"eval_fn must be a callable model -> {metric.name}, got {type(eval_fn).__name__}.")
    return lambda model: call_eval_fn(eval_fn, model, metric=metric)


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters for a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def explain(error: EvaluationError, what: str, output_dir: Any = None, saved: int = 0,
            metric: Metric = ACCURACY) -> str:
    """The full message for a failure while evaluating ``what``; with ``saved`` episodes, how to resume."""
    allowed = ALLOWED if metric is ACCURACY else metric.answer
    message = f"{error} while evaluating {what}. {allowed}."
    if saved:
        message += (f" The {saved} finished episode(s) are saved in {output_dir}/checkpoint.pt; fix eval_fn and "
                    f"resume (resume=True, or haq-plugin search --resume {output_dir}).")
    return message
