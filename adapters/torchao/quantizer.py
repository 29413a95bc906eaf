"""Per-layer bit widths as a torchao PT2E ``Quantizer``, and the fake quantizers it creates.

:class:`LayerBitsQuantizer` annotates each conv/linear node of an exported
graph by the name of the module that called it (the innermost entry of the
node's ``nn_module_stack``, the same name ``model.named_modules()`` gives).
Each annotation quantizes the node's *inputs*, which is HAQ's definition of a
layer's bits:

* weight: ``torch.int8`` holding ``[-2^(w-1), 2^(w-1) - 1]``,
  ``per_channel_symmetric`` over output channels (axis 0), each channel's
  range its min-max (:class:`FullRangeWeightObserver`) or, with
  ``weight_range="mse"``, MSE-clipped at low bits (:class:`MseClippedWeightObserver`);
* input activation: ``torch.uint8`` holding ``[0, 2^a - 1]``,
  ``per_tensor_affine`` (the zero point lets one unsigned type hold inputs
  that can be negative); left in floating point for weight-only policies
  (activation bits ``None``).

After ``prepare_qat_pt2e`` or ``prepare_pt2e`` every annotated edge has its
own fake quantizer (or observer); :func:`layer_fake_quants` finds them again
by walking from each layer node to the quantizer that feeds it, which is
what lets the backend change ranges in place
(:func:`~haq_plugin.adapters.common.integer_ranges.set_fake_quant_range`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import fx

from haq_plugin.api.bits import layer_differences
from haq_plugin.api.errors import HaqError

from haq_plugin.adapters.common.integer_ranges import act_range, weight_range
from haq_plugin.adapters.common.weight_ranges import DEFAULT_WEIGHT_RANGE, store_clipped_extremes
from haq_plugin.adapters.torchao.quiet import quiet_torchao_import

with quiet_torchao_import():
    from torchao.quantization import FqnToConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerAxis
    from torchao.quantization.pt2e import FakeQuantize, MinMaxObserver, ObserverBase, PerChannelMinMaxObserver
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, QuantizationSpec, Quantizer

LAYER_OPS = frozenset({torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default,
                       torch.ops.aten.linear.default})
LayerBits = Mapping[str, tuple[int, int | None]]


class FullRangeWeightObserver(PerChannelMinMaxObserver):
    """Per-channel symmetric weights whose scale puts each channel's extremes exactly on the range's ends.

    torch's symmetric formula divides ``max|w|`` by ``(quant_max - quant_min) / 2``,
    half a level more than ``quant_max``, so the largest positive weight is
    clipped by half a step.  Here the scale is the smallest that maps the
    largest positive weight to ``quant_max`` and the most negative one to
    ``quant_min``, with zero point 0.
    """

    def _calculate_qparams(self, min_val: torch.Tensor, max_val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if min_val.numel() == 0 or max_val.numel() == 0:
            return super()._calculate_qparams(min_val, max_val)
        positive = torch.clamp(max_val, min=0) / float(self.quant_max)
        negative = torch.clamp(min_val, max=0) / float(self.quant_min)
        scale = torch.max(torch.max(positive, negative), self.eps.to(min_val.device))
        return scale, torch.zeros(scale.shape, dtype=torch.int64, device=scale.device)


class MseClippedWeightObserver(FullRangeWeightObserver):
    """:class:`FullRangeWeightObserver` whose low-bit ranges are MSE-clipped (option ``weight_range=mse``).

    Each observed weight replaces the statistics (a weight has one value at a
    time, not a running range).  The clipped weights need no clamping in
    place: ``convert_pt2e`` quantizes with the spec's own ``quant_min`` and
    ``quant_max``, so outliers saturate there as they did in fake quantization.
    """

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        if not store_clipped_extremes(self, x_orig):
            return super().forward(x_orig)
        return x_orig


#: ``weight_range`` option value -> weight observer class.
WEIGHT_OBSERVERS: dict[str, type] = {"minmax": FullRangeWeightObserver, "mse": MseClippedWeightObserver}


@dataclass(frozen=True)
class SpecFields:
    """The fields of one ``QuantizationSpec``, as written in the export file."""

    dtype: str
    quant_min: int
    quant_max: int
    qscheme: str
    ch_axis: int | None = None

    @classmethod
    def weight(cls, bits: int) -> "SpecFields":
        return cls("int8", *weight_range(bits), "per_channel_symmetric", 0)

    @classmethod
    def activation(cls, bits: int) -> "SpecFields":
        return cls("uint8", *act_range(bits), "per_tensor_affine")

    def spec(self, for_training: bool, ranges: str = DEFAULT_WEIGHT_RANGE) -> QuantizationSpec:
        """The torchao spec: fake quantizers for QAT, plain observers for post-training prepare.

        ``ranges`` (a ``weight_range``) chooses the observer of a weight spec.
        """
        observer = WEIGHT_OBSERVERS[ranges] if self.ch_axis is not None else MinMaxObserver
        maker = FakeQuantize.with_args(observer=observer) if for_training else observer.with_args()
        return QuantizationSpec(dtype=getattr(torch, self.dtype), quant_min=self.quant_min,
                                quant_max=self.quant_max, qscheme=getattr(torch, self.qscheme),
                                ch_axis=self.ch_axis, observer_or_fake_quant_ctr=maker)


def layer_name(node: fx.Node) -> str | None:
    """The module name of a conv/linear node (innermost ``nn_module_stack`` entry), else None."""
    if node.op != "call_function" or node.target not in LAYER_OPS:
        return None
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else None


def layer_nodes(graph_module: fx.GraphModule) -> dict[str, list[fx.Node]]:
    """Layer name -> its conv/linear nodes (several when a module is called more than once)."""
    nodes: dict[str, list[fx.Node]] = {}
    for node in graph_module.graph.nodes:
        name = layer_name(node)
        if name is not None:
            nodes.setdefault(name, []).append(node)
    return nodes


class LayerBitsQuantizer(Quantizer):
    """Annotates each named layer with its (weight, input) bits; see the module docstring.

    ``for_training`` chooses fake quantizers (``prepare_qat_pt2e``) or
    observers (``prepare_pt2e``); both preparations accept either, so the
    default follows what the model is prepared with.  ``weight_range`` is the
    backend option of that name (``minmax`` or ``mse``).
    """

    def __init__(self, bits: LayerBits, for_training: bool = True, weight_range: str = DEFAULT_WEIGHT_RANGE) -> None:
        super().__init__()
        if weight_range not in WEIGHT_OBSERVERS:
            raise HaqError(f"torchao quantizer: weight_range {weight_range!r} is unknown; use one of "
                           f"{', '.join(WEIGHT_OBSERVERS)}.")
        self.bits = dict(bits)
        self.for_training = for_training
        self.weight_range = weight_range

    def annotate(self, model: fx.GraphModule) -> fx.GraphModule:
        nodes = layer_nodes(model)
        missing = [name for name in nodes if name not in self.bits]
        unknown = [name for name in self.bits if name not in nodes]
        if missing or unknown:
            raise HaqError(f"The torchao quantizer's layers do not match the model's conv/linear modules "
                           f"({layer_differences(missing, unknown)}): was the policy searched on this model, "
                           "with the same module names?")
        for name, (weight_bits, act_bits) in self.bits.items():
            for node in nodes[name]:
                # Input first, weight second: torchao's QAT conv-BN fusion reads the map in this order.
                # A weight-only layer keeps the input key with no spec, which PT2E leaves unobserved.
                act = None if act_bits is None else SpecFields.activation(act_bits).spec(self.for_training)
                weight = SpecFields.weight(weight_bits).spec(self.for_training, self.weight_range)
                specs = {node.args[0]: act, node.args[1]: weight}
                node.meta["quantization_annotation"] = QuantizationAnnotation(input_qspec_map=specs,
                                                                              _annotated=True)
        return model

    def validate(self, model: fx.GraphModule) -> None:
        """Nothing to check beyond :meth:`annotate`'s layer match."""


@dataclass
class LayerFakeQuants:
    """The fake quantizers in front of one layer: weight and (unless weight-only) input."""

    weights: list[FakeQuantize]
    inputs: list[FakeQuantize]


def layer_fake_quants(model: fx.GraphModule) -> dict[str, LayerFakeQuants]:
    """Layer name -> the fake quantizers ``prepare_qat_pt2e`` put in front of it."""
    modules = dict(model.named_modules())
    found: dict[str, LayerFakeQuants] = {}
    for name, nodes in layer_nodes(model).items():
        entry = found.setdefault(name, LayerFakeQuants([], []))
        for node in nodes:
            entry.weights += _feeding_quantizer(node.args[1], modules, walk=True)
            entry.inputs += _feeding_quantizer(node.args[0], modules, walk=False)
    return found


def _feeding_quantizer(arg: Any, modules: Mapping[str, torch.nn.Module], walk: bool) -> list[FakeQuantize]:
    """The fake quantizer that produces ``arg``; with ``walk``, the nearest one upstream.

    Weights may reach their quantizer through BN-folding ops, so they walk; an
    input either comes straight from its quantizer or has none (weight-only),
    and walking would find the previous layer's quantizer instead.
    """
    frontier, seen = [arg], set()
    while frontier:
        node = frontier.pop(0)
        if not isinstance(node, fx.Node) or node in seen:
            continue
        seen.add(node)
        if node.op == "call_module" and isinstance(modules.get(str(node.target)), (FakeQuantize, ObserverBase)):
            return [modules[str(node.target)]]
        if walk and node.op == "call_function":
            frontier += [a for a in node.args if isinstance(a, fx.Node)]
    return []
