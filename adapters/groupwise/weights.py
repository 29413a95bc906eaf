"""The float weights of the quantized layers and their rounded copies, rewritten per policy.

A language model's block linears hold about 10^8 weights, so a policy is
written into the model layer by layer, and only where its bits changed: an
episode that changes a few layers costs a few layers.  Rounded weights are
kept, most recently used first, up to ``cache_bytes``: a search revisits the
same (layer, width) pairs all the time, and a kept one is swapped in without
rounding again.  The float weights are read from the model the backend was
prepared on, which is never modified.

With GPTQ rounding (:mod:`.gptq`, ``hessians`` given) each (layer, width) below
8 bits is rounded once and its levels kept, one byte per weight: GPTQ costs far
more than rounding to nearest, while turning kept levels into weights costs one
multiply-add.  8 bits still round to nearest: their error is already a 255th of
each group's range, and the layer kept at 8 bits in a language model, ``lm_head``,
is often the token embedding too, which GPTQ would fit to ``lm_head``'s inputs only.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import torch

from haq_plugin.adapters.groupwise.gptq import GroupLevels, gptq_levels, inverse_factor
from haq_plugin.adapters.groupwise.grid import (GroupGrid, as_groups, float_grid_codes, float_grid_params,
                                                float_grid_values, integer_grid_values, mse_clip_ratios)


def rounded_weight(weight: torch.Tensor, bits: int, grid: GroupGrid, ratio: torch.Tensor | None = None,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """``weight`` on ``grid`` at ``bits`` (written into ``out`` if given), in ``weight``'s shape."""
    if grid.zero_point == "integer":
        values = integer_grid_values(weight, bits, grid.group_size)
        return values if out is None else out.copy_(values)
    groups, low, scale = float_grid_of(weight, bits, grid, ratio)
    target = None if out is None else as_groups(out, grid.group_size)
    return float_grid_values(groups, bits, low, scale, out=target).reshape(weight.shape)


def float_grid_of(weight: torch.Tensor, bits: int, grid: GroupGrid, ratio: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(groups, low, scale)`` of ``weight`` on the float grid: the one place its ranges are chosen.

    Shared by the rounding and by file writers that store the levels (GGUF), so both
    see the same ``low`` and ``scale`` per group.
    """
    groups = as_groups(weight.detach(), grid.group_size)
    if ratio is None and grid.weight_range == "mse":
        ratio = mse_clip_ratios(groups, bits)
    low, scale = float_grid_params(groups, bits, 1.0 if ratio is None else ratio)
    return groups, low, scale


def _inverse_factors(hessians: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """GPTQ's inverse factor per layer, computed once per Hessian (q, k and v share one, and their factor)."""
    shared: dict[int, torch.Tensor] = {}
    for hessian in hessians.values():
        if id(hessian) not in shared:
            shared[id(hessian)] = inverse_factor(hessian)
    return {name: shared[id(hessian)] for name, hessian in hessians.items()}


GPTQ_BELOW = 8  # widths from here up round to nearest even with rounding=gptq (see the module docstring)


class GroupQuantizedWeights:
    """Per layer: the float weight, the weight the model computes with, and the bits it holds now."""

    def __init__(self, weights: Mapping[str, tuple[torch.Tensor, torch.Tensor]], grid: GroupGrid,
                 cache_bytes: int = 0, hessians: Mapping[str, torch.Tensor] | None = None) -> None:
        """``weights`` maps a layer name to (its float weight, the parameter of the model to write into).

        ``hessians`` (layer -> input Hessian) switches the rounding to GPTQ.
        """
        self.grid, self.cache_bytes = grid, cache_bytes
        self._factors = None if hessians is None else _inverse_factors(hessians)
        self._levels: dict[tuple[str, int], GroupLevels] = {}
        self._kept: OrderedDict[tuple[str, int], torch.Tensor] = OrderedDict()
        self._kept_bytes = 0
        self._float = {name: pair[0].detach() for name, pair in weights.items()}
        self._target = {name: pair[1] for name, pair in weights.items()}
        self._current: dict[str, int] = {}
        self._ratios: dict[tuple[str, int], torch.Tensor] = {}

    def float_weight(self, name: str) -> torch.Tensor:
        """The layer's float weight, which every rounding (and a file export) starts from."""
        return self._float[name]

    @property
    def rounding(self) -> str:
        return "nearest" if self._factors is None else "gptq"

    def levels(self, name: str, bits: int) -> GroupLevels:
        """The layer's levels at ``bits`` on the float grid: what a file stores (GPTQ's are kept)."""
        if self._factors is None or bits >= GPTQ_BELOW:
            groups, low, scale = float_grid_of(self._float[name].to(torch.float32), bits, self.grid,
                                               self._ratio(name, bits))
            return GroupLevels(float_grid_codes(groups, bits, low, scale).to(torch.uint8), low, scale)
        key = (name, bits)
        if key not in self._levels:
            self._levels[key] = gptq_levels(self._float[name], self._factors[name], bits, self.grid)
        return self._levels[key]

    def apply(self, bits: Mapping[str, int]) -> None:
        """Round every layer of ``bits`` to its width, skipping layers already at that width."""
        with torch.no_grad():
            for name, width in bits.items():
                if self._current.get(name) == width:
                    continue
                self._target[name].data = self.rounded(name, width)
                self._current[name] = width

    def rounded(self, name: str, bits: int) -> torch.Tensor:
        """The layer's weight rounded at ``bits`` (what the search measures): kept, or rounded now (and kept if it fits)."""
        if self._factors is not None and bits < GPTQ_BELOW:
            weight = self._float[name]
            return self.levels(name, bits).values(weight.shape).to(weight.dtype)
        key = (name, bits)
        if key in self._kept:
            self._kept.move_to_end(key)
            return self._kept[key]
        rounded = rounded_weight(self._float[name], bits, self.grid, self._ratio(name, bits))
        size = rounded.numel() * rounded.element_size()
        if size <= self.cache_bytes:
            while self._kept and self._kept_bytes + size > self.cache_bytes:
                _, dropped = self._kept.popitem(last=False)
                self._kept_bytes -= dropped.numel() * dropped.element_size()
            self._kept[key] = rounded
            self._kept_bytes += size
        return rounded

    def _ratio(self, name: str, bits: int) -> torch.Tensor | None:
        """The MSE clip ratios of a layer at a width, found once and kept (they depend on nothing else)."""
        if self.grid.weight_range != "mse" or self.grid.zero_point != "float":
            return None
        key = (name, bits)
        if key not in self._ratios:
            self._ratios[key] = mse_clip_ratios(as_groups(self._float[name], self.grid.group_size), bits)
        return self._ratios[key]
