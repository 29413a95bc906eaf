"""The input Hessians ``H = sum x x^T`` of linear layers over calibration data, for GPTQ.

One forward pass of the float model per calibration batch, a hook on each
layer adding its inputs' outer products.  Layers that read the very same tensor
(a Llama block's q, k and v projections read one normed hidden state; gate and
up read another) share one Hessian: computed once, kept once.  That halves the
memory of a language model's Hessians (the largest, ``down_proj``'s, is
``1536 x 1536`` floats per block).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import nn

from haq_plugin.api.backend import batch_inputs
from haq_plugin.api.errors import HaqError
from haq_plugin.api.inputs import call_model


class _Accumulator:
    """The running sums of one forward pass's hooks, and which layers share an input."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.owner: dict[str, str] = {}  # layer -> the layer whose sum it shares
        self._seen: list[tuple[torch.Tensor, str]] = []  # this batch's inputs, kept alive so ids stay unique

    def add(self, name: str, inputs: torch.Tensor) -> None:
        for tensor, first in self._seen:
            if tensor is inputs:
                self.owner.setdefault(name, first)
                return
        self._seen.append((inputs, name))
        self.owner.setdefault(name, name)
        rows = inputs.detach().reshape(-1, inputs.shape[-1]).to(torch.float32)
        total = self.sums.get(name)
        product = rows.T @ rows
        self.sums[name] = product if total is None else total.add_(product)

    def end_batch(self) -> None:
        self._seen.clear()


def input_hessians(model: nn.Module, names: Sequence[str], batches: Iterable[Any]) -> dict[str, torch.Tensor]:
    """``{layer: H}`` for the linear layers ``names`` of ``model`` over ``batches`` (shared tensors shared)."""
    modules = dict(model.named_modules())
    accumulator = _Accumulator()
    handles = [modules[name].register_forward_pre_hook(
        lambda module, args, name=name: accumulator.add(name, args[0])) for name in names]
    try:
        with torch.no_grad():
            for batch in batches:
                call_model(model, batch_inputs(batch))
                accumulator.end_batch()
    finally:
        for handle in handles:
            handle.remove()
    return {name: accumulator.sums[accumulator.owner[name]] for name in names if name in accumulator.owner}


def gptq_hessians(model: nn.Module, names: Sequence[str], calibration_data: Iterable[Any]
                  ) -> dict[str, torch.Tensor]:
    """The Hessians GPTQ needs for the layers ``names`` of ``model``; :class:`HaqError` for what it cannot round.

    GPTQ's update is derived for ``y = W x``: every layer must be an ``nn.Linear``,
    and the calibration data must reach every one of them.
    """
    modules = dict(model.named_modules())
    other = [name for name in names if not isinstance(modules[name], nn.Linear)]
    if other:
        raise HaqError(f"backend 'groupwise': rounding=gptq rounds nn.Linear layers only; '{other[0]}' is a "
                       f"{type(modules[other[0]]).__name__} ({len(other)} of {len(names)} layers are not linear): "
                       "use rounding=nearest for this model.")
    hessians = input_hessians(model, names, calibration_data)
    unseen = [name for name in names if name not in hessians]
    if unseen:
        raise HaqError(f"backend 'groupwise': rounding=gptq needs calibration inputs for every layer, but the "
                       f"calibration data never reached '{unseen[0]}' ({len(unseen)} layers); give calibration "
                       "batches that run the whole model.")
    return hessians
