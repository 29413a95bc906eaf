"""Checks of a user's data and evaluation function, run once before a search starts.

A search evaluates hundreds of policies; a calibration batch that does not fit
the model, or an ``eval_fn`` that returns ``None``, a string or NaN, would fail
deep inside a backend or, worse, produce a ``policy.json`` ranked by a
meaningless number.  :func:`check_task_data` runs one calibration batch and the
float evaluation up front and turns every such mistake into a
:class:`~haq_plugin.api.errors.HaqError` that names the item at fault.  What counts
as an accuracy is decided in one place, :mod:`haq_plugin.engine.eval_fn`, which also
checks every evaluation of the search itself.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from haq_plugin.api.backend import batch_inputs
from haq_plugin.api.errors import HaqError
from haq_plugin.engine.eval_fn import ALLOWED, EvaluationError, accuracy_value, call_eval_fn, short_repr

from haq_plugin.api.layers import evaluating, run_forward

__all__ = ["as_batches", "check_accuracy", "check_calibration", "check_task_data", "evaluate", "short_repr"]


def as_batches(data: Any, item: str) -> Sequence[Any]:
    """``data`` as a non-empty sequence of batches; ``item`` names it (``"calibration_data"``) in the message.

    A list or tuple comes back as the same object (a sweep recognises its data by
    identity); any other iterable, e.g. a generator, is read once into a list so
    that it can be used again in every episode.
    """
    if data is None:
        raise HaqError(f"{item} is missing (None); give a list of input batches (tensors or (inputs, targets)).")
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise HaqError(f"{item} must be an iterable of batches (e.g. a list of tensors or a DataLoader), "
                       f"got {type(data).__name__} {short_repr(data)}.")
    if isinstance(data, (list, tuple)):
        batches: Sequence[Any] = data
    else:
        try:
            batches = list(data)
        except Exception as exc:
            raise HaqError(f"{item}: iterating over it raised {type(exc).__name__}: {exc}") from None
    if not batches:
        raise HaqError(f"{item} is empty; give at least one batch.")
    _refuse_empty_batches(batches, item)
    return batches


def _refuse_empty_batches(batches: Sequence[Any], item: str) -> None:
    """A batch of zero samples calibrates nothing and scores nothing; refusing it beats a silent wrong result."""
    for index, batch in enumerate(batches):
        inputs = batch_inputs(batch)
        if isinstance(inputs, torch.Tensor) and inputs.dim() > 0 and inputs.shape[0] == 0:
            raise HaqError(f"{item} batch {index} has no samples (its inputs have shape {tuple(inputs.shape)}); "
                           "give batches of at least one sample, e.g. drop an empty last batch.")


def check_accuracy(value: Any, what: str) -> float:
    """``value`` as a float if it is an accuracy in percent (0..100); the test is :func:`~haq_plugin.engine.eval_fn.accuracy_problem`."""
    try:
        return accuracy_value(value, what)
    except EvaluationError as exc:
        raise HaqError(f"{exc}. {ALLOWED}.") from None


def evaluate(eval_fn: Callable[[nn.Module], Any], model: nn.Module, what: str = "eval_fn") -> float:
    """``eval_fn(model)`` checked like every search evaluation; a :class:`HaqError` in it passes unchanged."""
    try:
        return call_eval_fn(eval_fn, model, what)
    except EvaluationError as exc:
        if isinstance(exc.__cause__, HaqError):
            raise exc.__cause__ from None
        raise HaqError(f"{exc}. {ALLOWED}.") from None


def check_task_data(model: nn.Module, calibration_data: Any, eval_fn: Any,
                    float_accuracy: float | None = None) -> float:
    """Run one calibration batch and the float evaluation; return the float model's accuracy.

    Call this once before the first episode: the returned accuracy is the
    float accuracy the search compares every policy against.  With
    ``float_accuracy`` given (a resumed search, or the caller's own figure) that
    value is checked instead and ``eval_fn`` is not called, so an ``eval_fn``
    that draws random numbers sees the same generator state as before.
    """
    if not callable(eval_fn):
        raise HaqError(f"eval_fn must be a function model -> accuracy in percent, got {type(eval_fn).__name__}.")
    check_calibration(model, calibration_data)
    with evaluating(model):
        if float_accuracy is None:
            accuracy = evaluate(eval_fn, model, "eval_fn on the float model")
        else:
            accuracy = check_accuracy(float_accuracy, "float_accuracy")
    if accuracy == 0.0:
        raise HaqError("eval_fn on the float model returned 0.0%: the float model gets nothing right, so no "
                       "policy could be ranked by it. Check the validation data (is it empty? do its labels "
                       "match the model's outputs?) and that the model's weights are trained.")
    return accuracy


def check_calibration(model: nn.Module, calibration_data: Any) -> Sequence[Any]:
    """``calibration_data`` as batches, after checking that its first batch runs through ``model``."""
    batches = as_batches(calibration_data, "calibration_data")
    with evaluating(model):
        run_forward(model, batch_inputs(batches[0]), "the first calibration_data batch")
    return batches
