"""MSE-clipped per-channel weight scales for Brevitas, at the bit widths where they help.

Brevitas' ``Int8WeightPerChannelFloat`` takes each output channel's absolute
maximum as the threshold (``scaling_stats_impl = AbsMax``) and divides it by
``2^(w-1) - 1`` at every forward pass.  :class:`ClippedInt8WeightPerChannelFloat`
replaces that statistic with :class:`MseClippedAbsMax`: the same maximum, or at
``MSE_MAX_BITS`` bits or fewer the MSE-optimal fraction of it
(:mod:`haq_plugin.adapters.common.weight_ranges`, the rule shared with torch.ao).
The statistic reads the layer's weight bit-width buffer at each forward pass,
so a policy written into the buffer in place switches clipping on and off with
no new modules.  Brevitas' narrow range means the grid is ``[-(2^(w-1) - 1),
2^(w-1) - 1]``, and the clip is searched on that grid.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from brevitas.quant import Int8WeightPerChannelFloat

from haq_plugin.adapters.common.weight_ranges import clips, mse_clip_ratios


class MseClippedAbsMax(nn.Module):
    """Per-channel absolute maximum, times the MSE-optimal clip ratio at low bit widths.

    ``bit_width`` is the weight quantizer's bit-width buffer, attached by
    :func:`attach_bit_width` once the layer is built; until then the plain
    maximum is returned.
    """

    def __init__(self, stats_reduce_dim: Optional[int] = None, keepdim: bool = False) -> None:
        super().__init__()
        self.stats_reduce_dim = stats_reduce_dim
        self.keepdim = keepdim
        self.bit_width: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stats_reduce_dim is None:
            return x.abs().max()
        amax = x.abs().amax(dim=self.stats_reduce_dim, keepdim=self.keepdim)
        if self.bit_width is None or x.dim() != 2:
            return amax
        level = 2 ** (int(self.bit_width) - 1) - 1
        if level < 1 or not clips(x, -level, level):
            return amax
        ratio = mse_clip_ratios(x.detach(), -level, level)
        return amax * ratio.reshape(amax.shape).to(amax.dtype)


class ClippedInt8WeightPerChannelFloat(Int8WeightPerChannelFloat):
    """``Int8WeightPerChannelFloat`` with :class:`MseClippedAbsMax` as its scaling statistic."""

    scaling_stats_impl = MseClippedAbsMax


CLIPPED_WEIGHT_QUANT = ClippedInt8WeightPerChannelFloat


def attach_bit_width(weight_quant: nn.Module, bit_width: torch.Tensor) -> None:
    """Let the clipped statistic of a built weight quantizer read its bit width."""
    for module in weight_quant.modules():
        if isinstance(module, MseClippedAbsMax):
            module.bit_width = bit_width
