"""Weight-only layers of a converted model: reference modules whose stored weights lie on the policy's grid.

``convert_fx`` turns a layer with a weight-only QConfig (float activations)
into a torch.ao *reference* quantized module (``torch.ao.nn.quantized.reference``
``Conv2d``/``Linear``, inside ``ConvReLU2d`` & co. when a ReLU was fused).  It
records the policy, ``weight_scale``, ``weight_zero_point`` and
``weight_quant_min``/``weight_quant_max``, but keeps the float weight of the
training run, and its forward and ``get_quantized_weight()`` quantize that
weight with the plain ``qint8`` limits: ``weight_quant_min``/``max`` are only
read on the decomposed path.  A weight that grew past a frozen observer's
range (or an MSE-clipped outlier) therefore gives integers beyond the policy's
range, and the converted layer computes with a weight the QAT model clamped.

:func:`snap_reference_weights` replaces each reference module's float weight
by its fake-quantized value within ``[weight_quant_min, weight_quant_max]``:
the stored weight is then exactly ``(integer - zero_point) * scale``, with at
most ``2^w`` values per channel, ``get_quantized_weight().int_repr()`` gives
the policy's integers, and the forward computes what the QAT model computed.
"""

from __future__ import annotations

__all__ = ["snap_reference_weights", "weight_on_grid"]

import torch
from torch import nn
from torch.ao.nn.quantized.reference.modules.utils import ReferenceQuantizedModule

INTEGER_WEIGHTS = {torch.qint8: (-128, 127), torch.quint8: (0, 255)}


def _limits(module: ReferenceQuantizedModule) -> tuple[int, int]:
    low, high = INTEGER_WEIGHTS[module.weight_dtype]
    if module.weight_quant_min is not None and module.weight_quant_max is not None:
        return int(module.weight_quant_min), int(module.weight_quant_max)
    return low, high


def weight_on_grid(module: ReferenceQuantizedModule) -> torch.Tensor:
    """The module's weight quantized and dequantized with its scale, zero point and range."""
    low, high = _limits(module)
    weight = module.weight.detach()
    if module.weight_qscheme == torch.per_tensor_affine:
        return torch.fake_quantize_per_tensor_affine(
            weight, float(module.weight_scale), int(module.weight_zero_point), low, high)
    return torch.fake_quantize_per_channel_affine(
        weight, module.weight_scale.float(), module.weight_zero_point.to(torch.int32), module.weight_axis_int,
        low, high)


def _integer_weights(module: nn.Module) -> bool:
    return (isinstance(module, ReferenceQuantizedModule) and module.weight_dtype in INTEGER_WEIGHTS
            and module.weight_qscheme in (torch.per_tensor_affine, torch.per_channel_affine))


def snap_reference_weights(model: nn.Module) -> list[str]:
    """Put every reference module's stored weight on its grid; the names of modules whose weight changed."""
    changed = []
    for name, module in model.named_modules():
        if not _integer_weights(module):
            continue
        snapped = weight_on_grid(module)
        if not torch.equal(snapped, module.weight.detach()):
            with torch.no_grad():
                module.weight.copy_(snapped)
            changed.append(name)
    return changed
