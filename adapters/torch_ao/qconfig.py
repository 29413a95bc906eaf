"""Bit widths as torch.ao fake-quantizers: the ranges, the constructors, in-place changes.

Weights are symmetric and per output channel: ``w`` bits give the signed
integer range ``[-2^(w-1), 2^(w-1) - 1]`` (``torch.qint8``,
``per_channel_symmetric``).  Activations are affine and per tensor: ``a``
bits give ``[0, 2^a - 1]`` (``torch.quint8``, ``per_tensor_affine``).  Affine
is what makes one unsigned type serve every activation: the observer picks the
zero point, so a tensor after ReLU gets zero point 0 and uses every level,
while a tensor that can be negative (the network input, a MobileNet-V2 linear
bottleneck) gets a zero point inside the range and keeps its negative values.
A signed activation type would not do: torch.ao's default backend config only
accepts ``quint8`` activations and silently leaves a layer with a ``qint8``
activation QConfig in floating point.

The weight observer is :class:`FullRangeSymmetricObserver` (option
``weight_range=mse``: MSE-clipped ranges at low bits) or its subclass
:class:`MinMaxSymmetricObserver` (``weight_range=minmax``), a
``PerChannelMinMaxObserver`` with one change: torch's symmetric formula
``scale = max|w| / ((quant_max - quant_min) / 2)`` maps the largest positive
weight to ``quant_max + 1/2``.  Fake quantization clamps that to ``quant_max``,
but ``convert_fx`` quantizes the weights again with the plain qint8 limits and
stores ``2^(w-1)``, a value ``w`` bits cannot hold.  Choosing the scale so that
the positive side ends at ``quant_max`` and the negative side at
``quant_min`` keeps every weight of the converted model inside the range.

Only 2 to 8 bits are offered.  ``quint8``/``qint8`` hold at most 8 bits, and
1 bit has no symmetric signed range: ``[-1, 0]`` cannot represent a single
positive weight.

Changing bits in place is sound because a ``FakeQuantize`` reads its range from
its observer on every forward pass;
:func:`~haq_plugin.adapters.common.integer_ranges.set_fake_quant_range` rewrites that range on both and forgets the old statistics, so the next observed batch
computes scale and zero point for the new range.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch.ao.quantization import FakeQuantize, QConfig
from torch.ao.quantization.observer import (
    MinMaxObserver, MovingAverageMinMaxObserver, PerChannelMinMaxObserver, PlaceholderObserver,
    check_min_max_valid)

from haq_plugin.api.bits import check_width
from haq_plugin.api.errors import HaqError

from haq_plugin.adapters.common.integer_ranges import act_range, weight_range
from haq_plugin.adapters.common.weight_ranges import (
    DEFAULT_WEIGHT_RANGE, WEIGHT_RANGES, store_clipped_extremes, symmetric_scale)

SUPPORTED_BITS = tuple(range(2, 9))
BITS_HELP = (
    "torch.ao fake quantization with quant_min/quant_max supports 2 to 8 bits: activations use quint8 and "
    "weights qint8, which hold at most 8 bits, and 1 bit has no symmetric signed weight range "
    "([-1, 0] cannot represent a positive weight)."
)

ACT_OBSERVERS: dict[str, type] = {
    "minmax": MinMaxObserver,
    "moving_average": MovingAverageMinMaxObserver,
}


class FullRangeSymmetricObserver(PerChannelMinMaxObserver):
    """Per-channel symmetric weights whose integers stay in ``[quant_min, quant_max]`` (see module docstring).

    The zero point is 0; the scale is the smallest that fits the channel's
    largest positive weight at ``quant_max`` and its most negative weight at
    ``quant_min``.
    """

    clamp_weights: bool = True
    #: Whether low-bit ranges are MSE-clipped; the class, not an argument, says so, so that the
    #: exported QConfigMapping (which names the observer class) reproduces the choice.
    mse_clip: bool = True

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        """Min-max statistics, or at low bits with ``mse_clip`` an MSE-clipped range (see ``weight_ranges``).

        A clipped range saturates the outlying weights.  Fake quantization
        clamps them anyway; with ``clamp_weights`` (the default) they are also
        clamped in place (``.data``: the forward value is unchanged), because
        ``convert_fx`` quantizes the weight tensor again with int8 limits, not
        the policy's.  The search backend turns this off on its own model, so
        that no episode changes the weights the next one starts from.
        """
        if not self.mse_clip or not store_clipped_extremes(self, x_orig):
            return super().forward(x_orig)
        scale, _ = self.calculate_qparams()
        shape = [1] * x_orig.dim()
        shape[self.ch_axis] = -1
        step = scale.to(x_orig.dtype).reshape(shape)
        if self.clamp_weights:
            x_orig.data.copy_(torch.max(torch.min(x_orig.data, step * self.quant_max), step * self.quant_min))
        return x_orig

    def _calculate_qparams(self, min_val: torch.Tensor, max_val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not check_min_max_valid(min_val, max_val):
            return super()._calculate_qparams(min_val, max_val)
        scale = torch.max(symmetric_scale(min_val, max_val, int(self.quant_min), int(self.quant_max)),
                          self.eps.to(min_val.device))
        return scale, torch.zeros(scale.shape, dtype=torch.int64, device=scale.device)


class MinMaxSymmetricObserver(FullRangeSymmetricObserver):
    """:class:`FullRangeSymmetricObserver` without clipping: every channel spans its smallest and largest weight."""

    mse_clip = False


#: ``weight_range`` option value -> weight observer class.
WEIGHT_OBSERVERS: dict[str, type] = {"mse": FullRangeSymmetricObserver, "minmax": MinMaxSymmetricObserver}


def check_bits(bits: int, what: str) -> int:
    """``bits`` as an int, or a :class:`HaqError` saying what is supported."""
    try:
        return check_width(bits, what, SUPPORTED_BITS, "by the torch.ao backend")
    except HaqError as exc:
        raise HaqError(f"torch.ao backend: {exc} {BITS_HELP}") from None


def weight_fake_quant(bits: int, ranges: str = DEFAULT_WEIGHT_RANGE) -> Any:
    """Constructor of a per-output-channel symmetric weight fake-quantizer (``ranges``: a ``weight_range``)."""
    lo, hi = weight_range(check_bits(bits, "a weight bit width"))
    if ranges not in WEIGHT_OBSERVERS:
        raise HaqError(f"torch.ao backend: weight_range {ranges!r} is unknown; use one of {', '.join(WEIGHT_RANGES)}.")
    return FakeQuantize.with_args(observer=WEIGHT_OBSERVERS[ranges], quant_min=lo, quant_max=hi,
                                  dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)


def act_fake_quant(bits: int, observer: str = "minmax") -> Any:
    """Constructor of a per-tensor affine unsigned activation fake-quantizer."""
    lo, hi = act_range(check_bits(bits, "an activation bit width"))
    if observer not in ACT_OBSERVERS:
        raise HaqError(f"torch.ao backend: activation observer {observer!r} is unknown; "
                       f"use one of {', '.join(ACT_OBSERVERS)}.")
    return FakeQuantize.with_args(observer=ACT_OBSERVERS[observer], quant_min=lo, quant_max=hi,
                                  dtype=torch.quint8, qscheme=torch.per_tensor_affine)


def make_qconfig(weight_bits: int, act_bits: int, observer: str = "minmax",
                 ranges: str = DEFAULT_WEIGHT_RANGE) -> QConfig:
    """One QConfig: weights at ``weight_bits`` with ``ranges``, the activation it observes at ``act_bits``."""
    return QConfig(activation=act_fake_quant(act_bits, observer), weight=weight_fake_quant(weight_bits, ranges))


def weight_only_qconfig(weight_bits: int, ranges: str = DEFAULT_WEIGHT_RANGE) -> QConfig:
    """Weights at ``weight_bits``, activations left in floating point (a float ``PlaceholderObserver``).

    torch's native backend config has no float-activation, int8-weight Conv or
    Linear, so apply it with :func:`~haq_plugin.adapters.torch_ao.fx_backend.backend_config`.
    """
    return QConfig(activation=PlaceholderObserver.with_args(dtype=torch.float32),
                   weight=weight_fake_quant(weight_bits, ranges))


def disable_fake_quants(fqs: list[tuple[FakeQuantize, Any]]) -> list[tuple[FakeQuantize, Any]]:
    """Let the activation fake-quantizers pass their input through, for good (weight-only quantization).

    Returns no handles: an episode has no activation range to set or calibrate.
    """
    for fq, _ in fqs:
        fq.disable_observer()
        fq.disable_fake_quant()
    return []


def leave_weights_unclamped(fqs: Iterable[FakeQuantize]) -> None:
    """Make weight observers of a search model read the weights without ever clamping them in place."""
    for fq in fqs:
        if isinstance(fq.activation_post_process, FullRangeSymmetricObserver):
            fq.activation_post_process.clamp_weights = False


def fake_quant_range(fq: FakeQuantize) -> tuple[int, int]:
    """The integer range ``fq`` quantizes to."""
    return int(fq.activation_post_process.quant_min), int(fq.activation_post_process.quant_max)
