"""Perplexity: the language-model counterpart of accuracy, lower is better.

exp of the mean next-token negative log-likelihood over every predicted token of every
window.  The loss is summed here from the logits rather than taken from the model's
``labels=`` output, which averages per call: a mean of per-batch means would weight
tokens unequally whenever batches differ in size, and the figure must not depend on the
batch size.  Each window is scored on its own (no state carried between windows).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_BATCH_SIZE = 4


def _device(model: nn.Module) -> torch.device:
    """Where the model's first parameter or buffer lives (the CPU for a model without tensors)."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if first is None else first.device


def _logits(output: Any) -> torch.Tensor:
    """The logits of a forward pass, whether a ``ModelOutput``, a tuple or a tensor."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, (tuple, list)):
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"the model returned {type(output).__name__}, which has no logits")
    return logits


def negative_log_likelihood(model: nn.Module, windows: torch.Tensor,
                            batch_size: int = DEFAULT_BATCH_SIZE) -> tuple[float, int]:
    """``(summed NLL in nats, predicted tokens)`` of ``windows`` ``[n, window]``, in eval mode, no grad."""
    if windows.dim() != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must be [n_windows, window >= 2], not {list(windows.shape)}")
    device = _device(model)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, windows.shape[0], batch_size):
                batch = windows[start:start + batch_size].to(device)
                logits = _logits(model(input_ids=batch, use_cache=False))
                predicted = logits[:, :-1].float().reshape(-1, logits.shape[-1])
                targets = batch[:, 1:].reshape(-1)
                total += float(F.cross_entropy(predicted, targets, reduction="sum"))
                count += int(targets.numel())
    finally:
        model.train(was_training)
    return total, count


def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int = DEFAULT_BATCH_SIZE) -> float:
    """exp(mean next-token NLL) over all predicted tokens of all ``windows``."""
    total, count = negative_log_likelihood(model, windows, batch_size)
    return math.exp(total / count)


def perplexity_eval_fn(windows: torch.Tensor, batch_size: int = DEFAULT_BATCH_SIZE) -> Callable[[nn.Module], float]:
    """An evaluation function (model -> perplexity on ``windows``) for the search to call."""
    def evaluate(model: nn.Module) -> float:
        return perplexity(model, windows, batch_size)

    evaluate.__doc__ = f"Perplexity on {windows.shape[0]} windows of {windows.shape[1]} tokens (lower is better)."
    return evaluate
