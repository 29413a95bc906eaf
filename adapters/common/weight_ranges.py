"""Per-channel weight ranges for low-bit weights: min-max, or MSE-clipped (every built-in backend).

Each backend offers the choice as its ``weight_range`` option
(:data:`WEIGHT_RANGES`): ``minmax`` spans each output channel's extremes, so
no weight saturates; ``mse`` clips the range where that lowers the squared
error.  Brevitas also accepts its older ``clip_weights`` flag as an alias.
Every backend defaults to ``mse``: on the demo both values reach the same
median searched accuracy, on the peer workload ``mse`` is 3 to 6 points ahead
(``benchmarks/weight_range_default.py``, ``benchmarks/RESULTS.md`` section 11).

A min-max range spends the few levels of a 2- to 4-bit grid on a channel's
largest weights, which are rare: most weights then round to zero.  Clipping
the range to ``ratio * max|w|`` and saturating the outliers lowers the mean
squared error of the quantized weights.  :func:`mse_clip_ratios` tries a grid
of ratios for every output channel at once and keeps the one with the least
squared error.  Less squared error is not always more accuracy: a layer whose
few large weights carry the signal loses it when they saturate, which is why
the choice is an option and not a rule.

Where ``mse`` clips: at ``MSE_MAX_BITS`` (4) bits or fewer, on channels of at
least ``MSE_MIN_CHANNEL_SIZE`` (16) weights.  Measured on the demo model
(``benchmarks/weight_ranges.py``): the squared weight error falls by 72% at 2
bits, 40% at 3, 21% at 4 and 11% at 5.  Channels of fewer weights (a 3x3
depthwise kernel, a one-input 3x3 stem) give the search too few samples to
estimate a clip from, and keep their min-max range.
"""

from __future__ import annotations

from typing import Any

import torch

MSE_MAX_BITS = 4
MSE_MIN_CHANNEL_SIZE = 16
RATIOS = torch.linspace(0.2, 1.0, 41)
WEIGHT_RANGES = ("minmax", "mse")
#: Every per-channel backend's ``weight_range`` default (the measurement is in the module docstring).
DEFAULT_WEIGHT_RANGE = "mse"
WEIGHT_RANGE_HELP = ("Per-channel weight ranges: 'minmax' spans each output channel's extremes (no weight "
                     "saturates); 'mse' clips the range to the least squared error at 4 bits or fewer, on "
                     "channels of 16 or more weights (outliers saturate). mse is the default: it searched as "
                     "well as minmax on the demo and better on the peer workload (benchmarks/RESULTS.md "
                     "section 11); use minmax where a layer's few large weights carry its signal.")


def bits_of(quant_min: int, quant_max: int) -> int:
    """The bit width of an integer range ``[quant_min, quant_max]``."""
    return int(quant_max - quant_min + 1).bit_length() - 1


def clips(weight: torch.Tensor, quant_min: int, quant_max: int, ch_axis: int = 0) -> bool:
    """Whether a weight tensor of this shape at this range gets an MSE-clipped range."""
    if weight.dim() == 0 or weight.numel() == 0:
        return False
    per_channel = weight.numel() // max(1, weight.shape[ch_axis])
    return bits_of(quant_min, quant_max) <= MSE_MAX_BITS and per_channel >= MSE_MIN_CHANNEL_SIZE


def symmetric_scale(low: torch.Tensor, high: torch.Tensor, quant_min: int, quant_max: int) -> torch.Tensor:
    """The smallest per-channel scale that holds ``high`` at ``quant_max`` and ``low`` at ``quant_min``."""
    positive = torch.clamp(high, min=0) / float(quant_max)
    negative = torch.clamp(low, max=0) / float(quant_min)
    return torch.max(positive, negative).clamp(min=torch.finfo(torch.float32).eps)


def mse_clip_ratios(weight: torch.Tensor, quant_min: int, quant_max: int, ch_axis: int = 0) -> torch.Tensor:
    """Per output channel, the ratio of the min-max range whose quantization error is smallest."""
    rows = weight.detach().float().transpose(0, ch_axis).reshape(weight.shape[ch_axis], -1)
    scale = symmetric_scale(rows.amin(1), rows.amax(1), quant_min, quant_max)
    ratios = RATIOS.to(rows.device)
    scales = ratios[:, None, None] * scale[None, :, None]                       # (R, C, 1)
    quantized = torch.clamp(torch.round(rows[None] / scales), quant_min, quant_max) * scales
    errors = (quantized - rows[None]).pow(2).sum(-1)                              # (R, C)
    return ratios[errors.argmin(0)]


def clipped_extremes(weight: torch.Tensor, quant_min: int, quant_max: int,
                     ch_axis: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output channel, the minimum and maximum of ``weight`` scaled by its MSE clip ratio.

    What an observer stores as its statistics so that its usual scale formula
    gives the clipped range.
    """
    ratio = mse_clip_ratios(weight, quant_min, quant_max, ch_axis)
    rows = weight.detach().transpose(0, ch_axis).reshape(weight.shape[ch_axis], -1)
    return rows.amin(1) * ratio.to(rows.dtype), rows.amax(1) * ratio.to(rows.dtype)


def store_clipped_extremes(observer: Any, weight: torch.Tensor) -> bool:
    """Write ``weight``'s clipped extremes into a per-channel observer's ``min_val``/``max_val``.

    torch.ao's and torchao's per-channel observers share these attributes, so
    one function serves both.  Returns False, writing nothing, where the
    weight keeps its min-max range (see :func:`clips`).
    """
    quant_min, quant_max, ch_axis = int(observer.quant_min), int(observer.quant_max), observer.ch_axis
    if not clips(weight, quant_min, quant_max, ch_axis):
        return False
    low, high = clipped_extremes(weight, quant_min, quant_max, ch_axis)
    observer.min_val.resize_(low.shape).copy_(low)
    observer.max_val.resize_(high.shape).copy_(high)
    return True


def reconstruction_error(weight: torch.Tensor, scale: torch.Tensor, quant_min: int, quant_max: int,
                         ch_axis: int = 0) -> float:
    """Sum of squared differences between ``weight`` and its symmetric fake quantization at ``scale``."""
    shape = [1] * weight.dim()
    shape[ch_axis] = -1
    step = scale.reshape(shape)
    quantized = torch.clamp(torch.round(weight / step), quant_min, quant_max) * step
    return float((quantized - weight).pow(2).sum())
