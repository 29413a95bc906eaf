"""``convert_fx`` whose converted model keeps the policy: weight and activation integers inside its ranges.

Weights.  ``convert_fx`` quantizes each weight again from the float weight and
the scale its fake-quantizer last computed, and clamps to the limits of
``torch.qint8`` (-128..127), not to the layer's ``quant_min``/``quant_max``.
Two cases then leave the range:

* observers frozen for the last QAT epochs (the usual practice): the weights
  keep moving, the scale does not, and a weight that grew past the frozen
  range becomes ``quant_max + 1`` or more;
* a clipped weight range (MSE clipping at low bits), whose outliers lie beyond
  the range by design.

Fake quantization clamps those weights during training, so the QAT model
computed with the clamped values all along; :func:`convert_in_range` clamps
the converted integers the same way, which makes the integer model compute
what the QAT model computed.  Weight-only layers become reference modules,
whose stored weights are put on the same grid
(:mod:`~haq_plugin.adapters.torch_ao.reference_weights`).

Activations.  The lowering drops the observer after ReLU/ReLU6/Hardtanh/clamp
and quantized kernels saturate at 0..255, not at ``2^a - 1``; the observers'
grids are put back into the converted graph
(:mod:`~haq_plugin.adapters.torch_ao.activation_grids`), so every quantized
layer reads its input on the grid of the observer the prepared model had in
front of it, with integers in ``[quant_min, quant_max]`` for any input.
"""

from __future__ import annotations

__all__ = ["backend_config", "clamp_weight_integers", "convert_in_range", "weight_ranges"]

import logging
from typing import Any

import torch
from torch import fx, nn
from torch.ao.quantization import FakeQuantize
from torch.ao.quantization.quantize_fx import convert_fx

from haq_plugin.adapters.torch_ao.activation_grids import hold_grids, read_grids
from haq_plugin.adapters.torch_ao.fx_backend import backend_config
from haq_plugin.adapters.torch_ao.qconfig import fake_quant_range
from haq_plugin.adapters.torch_ao.quiet import quiet_torch_ao
from haq_plugin.adapters.torch_ao.reference_weights import snap_reference_weights

LOG = logging.getLogger(__name__)


def weight_ranges(qat_model: nn.Module) -> dict[str, tuple[int, int]]:
    """Module name -> integer range of its weight fake-quantizer."""
    return {name: fake_quant_range(module.weight_fake_quant) for name, module in qat_model.named_modules()
            if isinstance(getattr(module, "weight_fake_quant", None), FakeQuantize)}


def _clamped(weight: torch.Tensor, low: int, high: int) -> torch.Tensor:
    ints = weight.int_repr().clamp(low, high)
    if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        return torch._make_per_channel_quantized_tensor(
            ints, weight.q_per_channel_scales(), weight.q_per_channel_zero_points(), weight.q_per_channel_axis())
    return torch._make_per_tensor_quantized_tensor(ints, weight.q_scale(), weight.q_zero_point())


def clamp_weight_integers(int_model: nn.Module, ranges: dict[str, tuple[int, int]]) -> list[str]:
    """Clamp the packed weights of converted layers into ``ranges``; the names of layers that changed."""
    changed = []
    modules = dict(int_model.named_modules())
    for name, (low, high) in ranges.items():
        module = modules.get(name)
        if module is None or not hasattr(module, "set_weight_bias") or not callable(getattr(module, "weight", None)):
            continue
        weight = module.weight()
        ints = weight.int_repr()
        if int(ints.min()) >= low and int(ints.max()) <= high:
            continue
        bias = module.bias() if callable(getattr(module, "bias", None)) else getattr(module, "bias", None)
        module.set_weight_bias(_clamped(weight, low, high), bias)
        changed.append(name)
    return changed


def convert_in_range(qat_model: nn.Module, **convert_kwargs: Any) -> fx.GraphModule:
    """``convert_fx(qat_model.eval(), backend_config=backend_config())`` with every integer held in range.

    For a model from ``prepare_qat_fx`` or ``prepare_fx`` (which ``convert_fx``
    changes in place).  Every converted Conv/Linear stores weight integers
    inside its policy's ``[-2^(w-1), 2^(w-1) - 1]``, whether the observers were
    frozen or not; weight-only layers are reference modules whose stored weights
    are those integers times their scale; and every quantized layer reads input
    integers inside ``[0, 2^a - 1]`` on the grid it was trained with (see the
    module docstring).
    """
    ranges = weight_ranges(qat_model)
    grids = read_grids(qat_model)
    convert_kwargs.setdefault("backend_config", backend_config())
    with quiet_torch_ao():
        int_model = convert_fx(qat_model.eval(), **convert_kwargs)
    clamp_weight_integers(int_model, ranges)
    snap_reference_weights(int_model)
    hold_grids(int_model, grids)
    warn_if_kernels_saturate(ranges)
    return int_model


def warn_if_kernels_saturate(ranges: dict[str, tuple[int, int]]) -> bool:
    """Warn (and return True) when this CPU's default integer kernels would not compute what was measured.

    torch's ``x86``/``fbgemm`` engine on a CPU without VNNI (AVX2 only)
    multiplies unsigned 8-bit inputs by signed 8-bit weights in pairs summed
    into 16 bits, which saturates for full-range 8-bit inputs and weights
    (2 x 255 x 127 > 32767): on such a machine the demo's w8/a8 stem cost a
    post-training model 4 points.  Narrower layers cannot overflow.  The
    ``onednn`` engine computes exactly, so the warning names it.
    """
    engine = torch.backends.quantized.engine
    if engine not in ("x86", "fbgemm") or "VNNI" in torch.backends.cpu.get_cpu_capability():
        return False
    wide = [name for name, (low, high) in ranges.items() if high - low >= 255]
    if wide:
        LOG.warning("convert_in_range: torch's '%s' engine on this CPU (%s, no VNNI) can saturate 16-bit sums in "
                    "the 8-bit layers %s; set torch.backends.quantized.engine = 'onednn' before "
                    "convert_in_range (weights are packed for the engine then) to compute exactly what was measured.", engine,
                    torch.backends.cpu.get_cpu_capability(), ", ".join(wide[:4]) + (" ..." if len(wide) > 4 else ""))
    return bool(wide)
