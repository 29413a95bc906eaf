"""Evaluating a policy: the one sequence set_policy -> calibrate -> finetune -> evaluate.

Everything that reports the accuracy of a policy goes through :func:`evaluate_policy`
(the search in this process and on every Ray actor, the analyses, the held-out
accuracy the command line prints, the benchmarks), so all their numbers are
measured alike: the same eval mode, the same calibration, the same finetuning.
:func:`float_accuracy` is the float model's counterpart.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping

from torch import nn

from haq_plugin.api.backend import QuantBackend
from haq_plugin.api.bits import BitPair
from haq_plugin.api.layers import evaluating
from haq_plugin.engine.backend_faults import checked_accuracy, contained

EvalFn = Callable[[nn.Module], float]


def float_accuracy(model: nn.Module, eval_fn: EvalFn) -> float:
    """``eval_fn`` on the float model in eval mode, without gradients; the model's mode is restored."""
    with evaluating(model):
        return float(eval_fn(model))


def evaluate_policy(backend: QuantBackend, bits: Mapping[str, BitPair], eval_fn: EvalFn,
                    finetune_steps: int = 0, train_data: Iterable[Any] | None = None) -> float:
    """Accuracy of ``bits`` on a prepared backend: set the policy, recalibrate, finetune, evaluate.

    Each call is :func:`contained`: a backend's bug, or an accuracy that is not a real
    number, stops with one line naming the plugin and the method.
    """
    with contained(backend, "set_policy"):
        backend.set_policy(dict(bits))
    with contained(backend, "calibrate"):
        backend.calibrate()
    if finetune_steps:
        with contained(backend, "finetune"):
            backend.finetune(train_data, finetune_steps)  # type: ignore[arg-type]
    with contained(backend, "evaluate"):
        value = backend.evaluate(eval_fn)
    return checked_accuracy(backend, value)


def timed_evaluation(backend: QuantBackend, bits: Mapping[str, BitPair], eval_fn: EvalFn,
                     finetune_steps: int = 0, train_data: Iterable[Any] | None = None) -> tuple[float, float]:
    """:func:`evaluate_policy` and the seconds it took (an episode's ``eval_seconds``)."""
    start = time.perf_counter()
    accuracy = evaluate_policy(backend, bits, eval_fn, finetune_steps, train_data)
    return accuracy, time.perf_counter() - start
