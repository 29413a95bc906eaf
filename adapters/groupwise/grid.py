"""Group-wise weight grids: integers with one scale and one zero point per group of weights.

A weight matrix ``[out, in]`` (a convolution's is flattened to ``[out, in * k * k]``)
is cut along its input dimension into groups of ``group_size`` consecutive
weights; ``group_size=0`` means one group per output channel.  Each group is
rounded to ``2**bits`` levels between its own low and high end:

* ``zero_point="float"`` (the default): the levels are ``low + q * scale``,
  ``q`` in ``[0, 2**bits - 1]``, with ``low`` the group's minimum and ``scale``
  its range over ``2**bits - 1``, both stored as float16.  This is llama.cpp's
  Q4_1 format (a float16 scale and minimum per block of 32), so a model whose
  weights are already on that grid is reproduced exactly at 4 bits, groups of 32.
* ``zero_point="integer"``: torchao's affine asymmetric grid (the range widened
  to include 0, an int8 zero point), computed by torchao itself, so that the
  recipe of :func:`haq_plugin.adapters.groupwise.load_quantize_config` applied
  with ``quantize_`` gives the very weights the search evaluated.

``weight_range="mse"`` narrows each group's range about its midpoint by the
ratio (of :data:`CLIP_RATIOS`) that minimises the group's squared error; it
helps at 2 and 3 bits, where one outlier otherwise spends most of the levels.
Only the float grid supports it (torchao chooses its own ranges).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from haq_plugin.adapters.common.weight_ranges import WEIGHT_RANGES  # noqa: F401 (the values every backend accepts)

GROUP_SIZES = (0, 16, 32, 64, 128, 256)
ZERO_POINTS = ("float", "integer")
CLIP_RATIOS = tuple(1.0 - 0.05 * k for k in range(10))  # 1.0, 0.95, ..., 0.55
SCALE_BITS = 32  # a float16 scale and a float16 zero point (or minimum) per group
_SMALLEST_SCALE = 2.0 ** -24  # float16's smallest subnormal: a constant group keeps a usable scale


@dataclass(frozen=True)
class GroupGrid:
    """How one weight matrix is quantized, apart from its bit width."""

    group_size: int = 64
    zero_point: str = "float"
    weight_range: str = "minmax"

    def groups(self, in_features: int) -> int:
        """Groups per output channel of a matrix with ``in_features`` inputs."""
        return 1 if self.group_size == 0 else in_features // self.group_size

    def storage_bits(self, out_features: int, in_features: int, bits: int) -> int:
        """Bits this matrix takes stored: its integers plus each group's scale and zero point."""
        return out_features * in_features * bits + out_features * self.groups(in_features) * SCALE_BITS

    def divides(self, in_features: int) -> bool:
        return self.group_size == 0 or in_features % self.group_size == 0


def as_groups(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """A ``[out, n_groups, group]`` view of ``weight`` (which must be contiguous)."""
    rows = weight.reshape(weight.shape[0], -1)
    size = rows.shape[1] if group_size == 0 else group_size
    return rows.reshape(rows.shape[0], rows.shape[1] // size, size)


def _half(values: torch.Tensor) -> torch.Tensor:
    """``values`` rounded to float16 and back: the precision the scales are stored and counted in."""
    return values.to(torch.float16).to(values.dtype)


def float_grid_params(groups: torch.Tensor, bits: int, ratio: torch.Tensor | float = 1.0
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The float16 ``(low, scale)`` of each group, its range narrowed about the midpoint by ``ratio``."""
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    if not (isinstance(ratio, float) and ratio == 1.0):
        middle, half_range = (low + high) / 2, (high - low) / 2 * ratio
        low, high = middle - half_range, middle + half_range
    low = _half(low)
    scale = _half((high - low) / (2 ** bits - 1)).clamp_min(_SMALLEST_SCALE)
    return low, scale


def float_grid_codes(groups: torch.Tensor, bits: int, low: torch.Tensor, scale: torch.Tensor,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """Each weight's level ``q`` in ``[0, 2**bits - 1]`` (as floats): what a file stores beside ``low``, ``scale``."""
    out = torch.empty_like(groups) if out is None else out
    return torch.sub(groups, low, out=out).div_(scale).round_().clamp_(0, 2 ** bits - 1)


def float_grid_values(groups: torch.Tensor, bits: int, low: torch.Tensor, scale: torch.Tensor,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """Each weight rounded to the nearest level ``low + q * scale``, ``q`` in ``[0, 2**bits - 1]``."""
    return float_grid_codes(groups, bits, low, scale, out=out).mul_(scale).add_(low)


def mse_clip_ratios(groups: torch.Tensor, bits: int) -> torch.Tensor:
    """Per group, the ratio of :data:`CLIP_RATIOS` with the smallest squared rounding error."""
    best_error = torch.full(groups.shape[:-1] + (1,), float("inf"), dtype=groups.dtype, device=groups.device)
    best_ratio = torch.ones_like(best_error)
    scratch = torch.empty_like(groups)
    for ratio in CLIP_RATIOS:
        low, scale = float_grid_params(groups, bits, ratio)
        error = float_grid_values(groups, bits, low, scale, out=scratch).sub_(groups).square_().sum(-1, keepdim=True)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    return best_ratio


def integer_grid_values(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """``weight`` through torchao's own asymmetric int-``bits`` group quantizer and back."""
    from torchao.quantization.quant_primitives import MappingType  # deferred: torchao imports in seconds
    from torchao.quantization.quantize_.workflows import IntxUnpackedToInt8Tensor

    rows = weight.reshape(weight.shape[0], -1)
    size = rows.shape[1] if group_size == 0 else group_size
    quantized = IntxUnpackedToInt8Tensor.from_hp(rows, (1, size), getattr(torch, f"int{bits}"),
                                                 mapping_type=MappingType.ASYMMETRIC)
    return quantized.dequantize().to(weight.dtype).reshape(weight.shape)
