"""Brevitas quantizers of the ``brevitas`` backend: build, re-bit, calibrate.

The model is converted once with Brevitas' own
:func:`brevitas.graph.quantize.layerwise_quantize`, whose layer map accepts
lambdas ``(old_module, name) -> value``: that is how each layer gets its own
bit widths and input-quantizer sign without tracing the model.

Quantizers (all stock Brevitas 0.13):

* weights: ``Int8WeightPerChannelFloat`` with ``weight_bit_width`` overridden:
  signed, narrow range (``2**w - 1`` levels), one float scale per output
  channel, computed from the weights' absolute maximum at every forward pass;
  with ``weight_range="mse"`` (alias ``clip_weights``), MSE-clipped at 4 bits or fewer (subclass
  ``ClippedInt8WeightPerChannelFloat``, :mod:`haq_plugin.adapters.brevitas.clipped_scales`);
* layer inputs: ``Uint8ActPerTensorFloat`` where every calibration input of the
  layer was non-negative (after ReLU/ReLU6, or a non-negative network input),
  ``Int8ActPerTensorFloat`` otherwise (linear bottleneck outputs, residual
  sums, signed network inputs), with ``input_bit_width`` overridden; one float
  scale per tensor, initialised on the calibration data and learnable
  afterwards.  The range is either a high percentile of the inputs (fast, the
  same for every bit width) or, with ``act_range='mse'``, the MSE-optimal range
  for the current bit width (their ``...MSE`` variants: a grid search per
  calibration batch, slower, better at 3-4 bits);
* biases stay in floating point (``bias_quant=None``), as in HAQ.

Why changing the bit width in place is enough: both quantizers hold their bit
width in a ``BitWidthConst`` module (``msb_clamp_bit_width_impl``) whose value is
a tensor buffer read at every forward pass.  The scale is computed as
``threshold / int_scaling(bit_width)`` at run time, where the threshold (weight
max, or the calibrated activation range) does not depend on the bit width, so
writing a new value into that buffer changes the number of levels and the step
size together, with no re-tracing and no new modules.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
from torch import nn

import brevitas.nn as qnn
from brevitas.core.bit_width import BitWidthConst
from brevitas.core.scaling.standalone import ParameterFromRuntimeStatsScaling
from brevitas.quant import (
    Int8ActPerTensorFloat, Int8ActPerTensorFloatMSE, Int8WeightPerChannelFloat, Uint8ActPerTensorFloat,
    Uint8ActPerTensorFloatMSE)

from haq_plugin.api.errors import HaqError
from haq_plugin.api.layers import evaluating

from haq_plugin.adapters.brevitas.clipped_scales import CLIPPED_WEIGHT_QUANT, attach_bit_width
from haq_plugin.adapters.brevitas.settings import ACT_RANGES, LayerQuant, QuantSettings  # noqa: F401 (re-exported)

with warnings.catch_warnings():
    # Importing brevitas.graph warns that the optional fast_hadamard_transform CUDA
    # package is absent and that brevitas.fx (which it imports) is deprecated;
    # neither is used here: layerwise_quantize needs no tracing.
    warnings.filterwarnings("ignore", message=".*fast_hadamard_transform.*")
    warnings.filterwarnings("ignore", message=".*brevitas.fx is deprecated.*", category=DeprecationWarning)
    from brevitas.graph.calibrate import calibration_mode
    from brevitas.graph.quantize import layerwise_quantize

QUANT_LAYER_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: qnn.QuantConv1d,
    nn.Conv2d: qnn.QuantConv2d,
    nn.Linear: qnn.QuantLinear,
}
WEIGHT_QUANT = Int8WeightPerChannelFloat
INPUT_QUANTS = {  # act_range -> (signed, unsigned) input quantizer
    "percentile": (Int8ActPerTensorFloat, Uint8ActPerTensorFloat),
    "mse": (Int8ActPerTensorFloatMSE, Uint8ActPerTensorFloatMSE),
}


def weight_quant(settings: QuantSettings) -> type:
    """The Brevitas weight quantizer of ``settings`` (MSE-clipped scales when ``weight_range`` is ``mse``)."""
    return CLIPPED_WEIGHT_QUANT if settings.clip_weights else WEIGHT_QUANT


def input_quant(settings: QuantSettings, signed: bool) -> type | None:
    """The Brevitas input quantizer of ``settings`` for a signed or unsigned input; None when weight-only."""
    if settings.weights_only:
        return None
    signed_quant, unsigned_quant = INPUT_QUANTS[settings.act_range]
    return signed_quant if signed else unsigned_quant


@dataclass
class LayerHandles:
    """The tensors and modules of one quant layer that an episode changes.

    ``weight_bit_width`` and ``input_bit_width`` are the buffers Brevitas reads
    the bit widths from; ``input_scaling`` is the input quantizer's
    statistics-initialised scale, reset before each calibration.  Both input
    handles are ``None`` for weight-only quantization (no input quantizer).
    """

    layer: nn.Module
    weight_bit_width: torch.Tensor
    input_bit_width: torch.Tensor | None
    input_scaling: ParameterFromRuntimeStatsScaling | None


def quantize_layers(model: nn.Module, plan: Mapping[str, LayerQuant], settings: QuantSettings) -> nn.Module:
    """Replace the layers named in ``plan`` by Brevitas quant layers, in place.

    Conv1d/Conv2d/Linear modules that are not in ``plan`` (e.g. never called in
    the forward pass) are left in floating point through ``name_blacklist``.
    """
    unplanned = [name for name, module in model.named_modules()
                 if type(module) in QUANT_LAYER_CLASSES and name not in plan]
    # Brevitas calls each lambda with the original module and its full name.
    overrides: dict[str, Any] = {
        "weight_quant": weight_quant(settings),
        "weight_bit_width": lambda module, name: plan[name].weight_bits,
        "input_quant": lambda module, name: input_quant(settings, plan[name].input_signed),
        "input_bit_width": lambda module, name: plan[name].input_bits,
        "bias_quant": None,
        "return_quant_tensor": False,
    }
    if settings.act_range == "percentile" and not settings.weights_only:
        overrides["input_high_percentile_q"] = settings.act_percentile
    layer_map = {float_cls: (quant_cls, overrides) for float_cls, quant_cls in QUANT_LAYER_CLASSES.items()}
    return layerwise_quantize(model, compute_layer_map=layer_map, name_blacklist=unplanned or None)


def find_handles(model: nn.Module, names: Iterable[str]) -> dict[str, LayerHandles]:
    """Locate, for each named quant layer, its bit-width buffers and input scaling."""
    modules = dict(model.named_modules())
    handles: dict[str, LayerHandles] = {}
    for name in names:
        layer = modules.get(name)
        if not isinstance(layer, tuple(QUANT_LAYER_CLASSES.values())):
            raise HaqError(f"Layer '{name}' was not converted to a Brevitas quant layer "
                           f"(found {type(layer).__name__}); only exact nn.Conv1d, nn.Conv2d and "
                           "nn.Linear modules are converted.")
        quantized_input = layer.input_quant.is_quant_enabled
        weight_bit_width = _bit_width_buffer(layer.weight_quant, name, "weight")
        attach_bit_width(layer.weight_quant, weight_bit_width)
        handles[name] = LayerHandles(
            layer=layer,
            weight_bit_width=weight_bit_width,
            input_bit_width=_bit_width_buffer(layer.input_quant, name, "input") if quantized_input else None,
            input_scaling=(_single(layer.input_quant, ParameterFromRuntimeStatsScaling, name, "input scaling")
                           if quantized_input else None),
        )
    return handles


def _single(proxy: nn.Module, cls: type, layer: str, what: str) -> Any:
    found = [m for m in proxy.modules() if isinstance(m, cls)]
    if len(found) != 1:
        raise HaqError(f"Layer '{layer}': expected one {cls.__name__} in its {what} quantizer, found "
                       f"{len(found)}; this Brevitas version stores quantizer state differently.")
    return found[0]


def _bit_width_buffer(proxy: nn.Module, layer: str, what: str) -> torch.Tensor:
    impl = _single(proxy, BitWidthConst, layer, f"{what} bit-width")
    return impl.bit_width.value


def set_bit_widths(handles: LayerHandles, weight_bits: int, input_bits: int) -> None:
    """Write new bit widths into the quantizers' buffers (takes effect at the next forward)."""
    handles.weight_bit_width.fill_(float(weight_bits))
    if handles.input_bit_width is not None:
        handles.input_bit_width.fill_(float(input_bits))


def detect_input_signs(model: nn.Module, names: Iterable[str], batches: list[Any]) -> dict[str, bool]:
    """Whether each named layer ever sees a negative input on the calibration data.

    Reading the sign from data rather than from the graph works for functional
    activations (``torch.relu``), inplace ReLU6 and models that cannot be traced.
    """
    wanted = set(names)
    minima: dict[str, float] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            low = float(args[0].detach().min())
            minima[name] = min(low, minima.get(name, low))
        return hook

    hooks = [module.register_forward_pre_hook(make_hook(name))
             for name, module in model.named_modules() if name in wanted]
    try:
        with evaluating(model):
            for batch in batches:
                model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    unseen = sorted(wanted - set(minima))
    if unseen:
        raise HaqError(f"Layer(s) {', '.join(unseen)} did not run on the calibration data, so their input "
                       "sign is unknown; give calibration batches that exercise every layer.")
    return {name: minima[name] < 0.0 for name in names}


def reset_input_scaling(handles: Iterable[LayerHandles]) -> None:
    """Forget calibrated activation ranges, as a freshly built quantizer would be.

    ``ParameterFromRuntimeStatsScaling`` accumulates statistics into ``buffer``
    while ``counter`` is below its collection steps, then multiplies ``value``
    by ``buffer`` once; both start at one.
    """
    for handle in handles:
        scaling = handle.input_scaling
        if scaling is None:
            continue
        scaling.counter = 0
        with torch.no_grad():
            scaling.buffer.fill_(1.0)
            scaling.value.fill_(1.0)


def calibrate_inputs(model: nn.Module, batches: list[Any]) -> None:
    """Run Brevitas' ``calibration_mode`` (float forward, statistics collected) over ``batches``."""
    with evaluating(model), calibration_mode(model):
        for batch in batches:
            model(batch)
