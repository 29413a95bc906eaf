"""Accuracy of a float model and of a bit policy, measured the way the search measures it.

The analyses (:mod:`haq_plugin.analyses.sweep`, :mod:`haq_plugin.analyses.sensitivity`) evaluate
policies outside a search; they go through these two functions so that their
numbers are comparable with the search's (same eval mode, same calibration).
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn

from haq_plugin.api.backend import QuantBackend

EvalFn = Callable[[nn.Module], float]


def float_accuracy(model: nn.Module, eval_fn: EvalFn) -> float:
    """``eval_fn`` on the float model in eval mode, without gradients; the model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return float(eval_fn(model))
    finally:
        model.train(was_training)


def policy_accuracy(backend: QuantBackend, bits: Mapping[str, tuple[int, int]], eval_fn: EvalFn) -> float:
    """Accuracy of ``bits`` on a prepared backend: set the policy, recalibrate, evaluate."""
    backend.set_policy(dict(bits))
    backend.calibrate()
    return float(backend.evaluate(eval_fn))
