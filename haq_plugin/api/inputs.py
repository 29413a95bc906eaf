"""A model's inputs: one tensor, a tuple of positional inputs, or a dict of keyword inputs.

Many real models take more than one tensor: a language model its token ids and
an attention mask, a two-tower model two images.  Their example input is then
a tuple (passed as ``model(*inputs)``) or a dict (``model(**inputs)``), and a
data batch is ``(inputs, targets)`` with such inputs as its first item (a bare
tuple would be read as inputs and targets).  :func:`call_model` is the one
place that turns inputs into a call, so layer extraction, calibration,
evaluation and fine-tuning agree; a backend that can only take one tensor says
so with :func:`require_one_tensor` instead of failing inside its library.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import torch
from torch import nn

from haq_plugin.api.errors import HaqError


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model`` applied to ``inputs``: keyword inputs for a dict, positional ones for a tuple or list."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def as_positional(model: nn.Module, inputs: Any) -> tuple[Any, ...]:
    """``inputs`` as positional arguments of ``model.forward``, for tools that take only those (torch.fx).

    A dict is bound to the signature of ``forward``: its keys must be the first
    parameters, in any order; a gap (a later parameter given, an earlier one not)
    is refused, because positions cannot skip an argument.
    """
    if isinstance(inputs, Mapping):
        try:
            bound = inspect.signature(model.forward).bind(**inputs)
        except TypeError as exc:
            raise HaqError(f"The example input's keys ({', '.join(map(str, inputs))}) do not fit "
                           f"{type(model).__name__}.forward: {exc}.") from None
        if bound.kwargs:
            raise HaqError(f"{type(model).__name__}.forward takes {', '.join(bound.kwargs)} only by keyword, and "
                           "this backend traces positional inputs; give the example input as a tuple in the "
                           "order of forward's parameters.")
        return tuple(bound.args)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs)
    return (inputs,)


def input_kind(inputs: Any) -> str:
    """What ``inputs`` is, in words, for messages: ``one tensor``, ``a tuple of 2 inputs``, ``keyword inputs ...``."""
    if isinstance(inputs, torch.Tensor):
        return "one tensor"
    if isinstance(inputs, Mapping):
        return "keyword inputs " + ", ".join(map(str, inputs))
    if isinstance(inputs, (tuple, list)):
        return f"a {type(inputs).__name__} of {len(inputs)} inputs"
    return f"a {type(inputs).__name__}"


def require_one_tensor(inputs: Any, backend: str, reason: str) -> torch.Tensor:
    """``inputs`` if it is one tensor; else the refusal that names what the backend cannot do and what can."""
    if isinstance(inputs, torch.Tensor):
        return inputs
    raise HaqError(f"backend '{backend}' takes models with one tensor input ({reason}); this model's example "
                   f"input is {input_kind(inputs)}. Search it with --backend torch.ao or --backend torchao, which "
                   "take a tuple or a dict of inputs.")
