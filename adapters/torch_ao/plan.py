"""Which QConfigMapping entry builds the activation observer in front of each layer (FX mode).

HAQ gives every layer the bit width of its *input*.  torch.ao FX has no
per-input setting: a node's QConfig activation quantizes that node's *output*,
and the next op reuses that observer as its input observer.  So the
activation bits of layer ``k`` must go to the QConfig of whatever produces
layer ``k``'s input: the previous layer, a residual ``add``, a ReLU that was
not fused, ...  Ops that share their input's observer (pooling, flatten,
ReLU6, dropout) are looked through.

Rather than re-implementing FX's rules for which QConfig a node gets, the
model is prepared once with a *probe* mapping: every module name (and the
global entry) gets its own QConfig whose fake-quantizers remember the entry's
name (:class:`OwnedFakeQuantize`).  After ``prepare_qat_fx`` each observer
then says which entry built it.  Observers built for a function call (e.g. the
``add`` of a residual block, which FX configures through the enclosing
module) are pinned to that one call with a ``module_name_object_type_order``
entry, so that two adds in one block can carry different bits.

One QConfig serves several inputs in two cases, and FX cannot separate them:

* the network input: graph inputs have no QConfig, so FX builds their observer
  from the QConfig of the first layer, which also builds that layer's output
  observer (the input of the second layer);
* a tensor read by several layers (a ResNet block input feeds ``conv1`` and the
  ``downsample`` conv) has one observer.

Such an entry gets the *smallest* activation width of the layers it feeds, so
that no layer runs with more bits than the policy pays for in the cost model,
with one exception: a layer whose input is kept at 8 bits (``KEPT_BITS``, the
first layer by default) is never lowered, and its group then runs at 8 bits.
The model that is evaluated is exactly the one the exported mapping builds.

Clamping activations (ReLU, ReLU6, Hardtanh, ``clamp``) that FX does not fuse
into the layer before them get their own observer
(:mod:`haq_plugin.adapters.torch_ao.fx_backend`), so a layer reading a
ReLU6 output is quantized on the range it reads.  The observer in front of
that clamp (the pre-activation) belongs to the producing layer's QConfig; it
feeds no layer and takes ``other_act_bits``, except after the first layer,
whose QConfig also builds the network input's observer.
:meth:`ActivationPlan.shared` lists these groups and :meth:`ActivationPlan.effective_act_bits`
the bits each layer's input really gets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import fx, nn
from torch.ao.quantization import FakeQuantize, QConfig, QConfigMapping
from torch.ao.quantization.quantize_fx import prepare_qat_fx

from haq_plugin.api.errors import HaqError
from haq_plugin.api.inputs import as_positional

from haq_plugin.api.quantize_mode import QUANTIZE_MODES, WEIGHTS_ONLY
from haq_plugin.adapters.torch_ao.fx_backend import backend_config
from haq_plugin.adapters.common.integer_ranges import act_range
from haq_plugin.adapters.torch_ao.qconfig import (
    ACT_OBSERVERS, DEFAULT_WEIGHT_RANGE, disable_fake_quants, leave_weights_unclamped, make_qconfig,
    weight_fake_quant, weight_only_qconfig)
from haq_plugin.adapters.torch_ao.quiet import quiet_torch_ao

BitMap = Mapping[str, tuple[int, int]]
PROBE_BITS = 8
KEPT_BITS = 8


class OwnedFakeQuantize(FakeQuantize):
    """A FakeQuantize that remembers which QConfigMapping entry built it (``owner``).

    Behaves exactly like :class:`FakeQuantize`; the extra attribute is how the
    probe learns FX's choice of QConfig for every observer it inserts.
    """

    def __init__(self, *args: Any, owner: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owner = owner


@dataclass(frozen=True)
class OwnerKey:
    """A QConfigMapping entry: ``global``, ``module_name`` or ``module_name_object_type_order``."""

    kind: str
    module_name: str = ""
    object_type: Callable | None = None
    index: int = 0


GLOBAL = OwnerKey("global")


def _group_bits(widths: list[int], default: int) -> int:
    """One observer for several layer inputs: the smallest width, unless one of them is kept at 8."""
    if not widths:
        return default
    return KEPT_BITS if KEPT_BITS in widths else min(widths)


@dataclass
class ActivationPlan:
    """Which QConfigMapping entry quantizes each layer's input, independent of the bit widths.

    ``input_key[layer]`` is the entry whose QConfig builds the observer in front
    of ``layer``; ``owners`` lists every entry that builds an activation
    observer (in graph order), and ``feeds[key]`` the layers those observers feed.
    """

    layers: list[str]
    input_key: dict[str, OwnerKey]
    owners: list[OwnerKey]
    feeds: dict[OwnerKey, list[str]] = field(default_factory=dict)
    other_act_bits: int = 8
    observer: str = "minmax"
    mode: str = "fx"
    quantize: str = QUANTIZE_MODES[0]
    weight_range: str = DEFAULT_WEIGHT_RANGE

    def act_bits_by_key(self, bits: BitMap) -> dict[OwnerKey, int]:
        """Activation bits of each entry: the smallest of the layers it feeds (8 if one of them keeps 8
        bits), else ``other_act_bits``."""
        return {key: _group_bits([bits[layer][1] for layer in self.feeds.get(key, [])], self.other_act_bits)
                for key in self.owners}

    def effective_act_bits(self, bits: BitMap) -> dict[str, int]:
        """The activation bits each layer's input really gets."""
        by_key = self.act_bits_by_key(bits)
        return {layer: by_key[self.input_key[layer]] for layer in self.layers}

    def shared(self) -> list[list[str]]:
        """Groups of layers whose inputs are quantized by observers of one QConfig."""
        return [list(layers) for layers in self.feeds.values() if len(layers) > 1]

    def mapping(self, bits: BitMap) -> QConfigMapping:
        """The QConfigMapping that builds this plan with ``bits``.

        FX mode: ``prepare_qat_fx`` turns it into this plan.  Eager mode: one
        QConfig per layer whose activation is the layer's input (applied by
        :func:`~haq_plugin.adapters.torch_ao.eager.prepare_qat_eager`).
        """
        if self.quantize == WEIGHTS_ONLY:
            return self._weight_only_mapping(bits)
        if self.mode == "eager":
            mapping = QConfigMapping()
            for layer in self.layers:
                mapping.set_module_name(layer, self._qconfig(bits[layer][0], bits[layer][1]))
            return mapping
        by_key = self.act_bits_by_key(bits)
        act_of = lambda key: by_key.get(key, self.other_act_bits)  # noqa: E731
        mapping = QConfigMapping().set_global(self._qconfig(PROBE_BITS, act_of(GLOBAL)))
        for layer in self.layers:
            key = OwnerKey("module_name", layer)
            mapping.set_module_name(layer, self._qconfig(bits[layer][0], act_of(key)))
        for key in self.owners:
            qconfig = self._qconfig(PROBE_BITS, act_of(key))
            if key.kind == "module_name" and key.module_name not in bits:
                mapping.set_module_name(key.module_name, qconfig)
            elif key.kind == "module_name_object_type_order":
                mapping.set_module_name_object_type_order(key.module_name, key.object_type, key.index, qconfig)
        return mapping

    def _qconfig(self, weight_bits: int, act_bits: int) -> QConfig:
        return make_qconfig(weight_bits, act_bits, self.observer, self.weight_range)

    def apply_quantize(self, quantize: str, activations: list[tuple[FakeQuantize, OwnerKey]]
                       ) -> list[tuple[FakeQuantize, OwnerKey]]:
        """Record ``quantize``; for weight-only, turn the activation fake-quantizers off for good.

        Returns the activation handles an episode still sets: none for weight-only.
        """
        self.quantize = quantize
        return disable_fake_quants(activations) if quantize == WEIGHTS_ONLY else activations

    def _weight_only_mapping(self, bits: BitMap) -> QConfigMapping:
        """Only the layers have a QConfig, with float activations: nothing else is observed."""
        mapping = QConfigMapping()
        for layer in self.layers:
            mapping.set_module_name(layer, weight_only_qconfig(bits[layer][0], self.weight_range))
        return mapping

    @classmethod
    def chain(cls, layers: list[str], observer: str = "minmax", other_act_bits: int = 8) -> "ActivationPlan":
        """FX mode for a plain chain: each layer reads the previous layer's output.

        Only for exporting a policy without its model; a traced plan replaces it
        whenever the model is at hand.
        """
        keys = [OwnerKey("module_name", name) for name in layers]
        input_key = {layers[0]: keys[0], **{layer: keys[i] for i, layer in enumerate(layers[1:])}}
        return cls._from_inputs(layers, input_key, keys + [GLOBAL], observer, other_act_bits, "fx")

    @classmethod
    def eager(cls, layers: list[str], observer: str = "minmax", other_act_bits: int = 8) -> "ActivationPlan":
        """Eager mode: every layer quantizes its own input."""
        input_key = {name: OwnerKey("module_name", name) for name in layers}
        return cls._from_inputs(layers, input_key, list(input_key.values()), observer, other_act_bits, "eager")

    @classmethod
    def _from_inputs(cls, layers: list[str], input_key: dict[str, OwnerKey], owners: list[OwnerKey],
                     observer: str, other_act_bits: int, mode: str) -> "ActivationPlan":
        feeds: dict[OwnerKey, list[str]] = {}
        for layer in layers:
            feeds.setdefault(input_key[layer], []).append(layer)
        return cls(layers=list(layers), input_key=input_key, owners=owners, feeds=feeds,
                   other_act_bits=other_act_bits, observer=observer, mode=mode)


@dataclass
class FxHandles:
    """The fake-quantizers of a prepared model that a policy sets in place."""

    weights: dict[str, FakeQuantize]
    activations: list[tuple[FakeQuantize, OwnerKey]]


def _owned_act(owner: str, observer: str) -> Any:
    lo, hi = act_range(PROBE_BITS)
    return OwnedFakeQuantize.with_args(observer=ACT_OBSERVERS[observer], quant_min=lo, quant_max=hi,
                                       dtype=torch.quint8, qscheme=torch.per_tensor_affine, owner=owner)


def probe_mapping(model: nn.Module, observer: str, weight_range: str = DEFAULT_WEIGHT_RANGE) -> QConfigMapping:
    """A mapping with one named, 8-bit QConfig per module (and one global)."""
    weight = weight_fake_quant(PROBE_BITS, weight_range)
    mapping = QConfigMapping().set_global(QConfig(activation=_owned_act("", observer), weight=weight))
    for name, _ in model.named_modules():
        if name:
            mapping.set_module_name(name, QConfig(activation=_owned_act(name, observer), weight=weight))
    return mapping


def check_traceable(model: nn.Module) -> None:
    """Raise whatever FX raises when it cannot trace ``model`` (data-dependent control flow, ...)."""
    from torch.ao.quantization.fx.tracer import QuantizationTracer

    QuantizationTracer([], []).trace(model)


def prepare_probed(model: nn.Module, example_input: Any, layers: list[str], observer: str = "minmax",
                   other_act_bits: int = 8, weight_range: str = DEFAULT_WEIGHT_RANGE
                   ) -> tuple[fx.GraphModule, ActivationPlan, FxHandles]:
    """``prepare_qat_fx`` with the probe mapping, and the plan read from the result.

    Pass a copy: the prepared model shares the parameters of ``model``, and
    ``prepare_qat_fx`` leaves ``.qconfig`` attributes on its modules, which a
    later ``prepare_qat_fx`` of the same modules would pick up.
    """
    example = as_positional(model, example_input)
    was_training = model.training
    model.train()
    try:
        with quiet_torch_ao():
            prepared = prepare_qat_fx(model, probe_mapping(model, observer, weight_range), example,
                                      backend_config=backend_config())
    finally:
        model.train(was_training)
    plan, handles = _read_plan(prepared, layers, observer, other_act_bits)
    plan.weight_range = weight_range
    return prepared, plan, handles


def _call_indices(graph: fx.Graph, scopes: Mapping[str, tuple[str, Any]]) -> dict[str, int]:
    """For each call_function node, its index among calls of the same function in the same module."""
    seen: dict[tuple[str, Any], int] = {}
    indices: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_function":
            key = (scopes.get(node.name, ("", None))[0], node.target)
            indices[node.name] = seen.get(key, 0)
            seen[key] = indices[node.name] + 1
    return indices


def _owner_key(fq: OwnedFakeQuantize, producer: Any, scopes: Mapping[str, tuple[str, Any]],
               indices: Mapping[str, int]) -> OwnerKey:
    if isinstance(producer, fx.Node) and producer.op == "call_function":
        scope = scopes.get(producer.name, ("", None))[0]
        if fq.owner == scope:
            return OwnerKey("module_name_object_type_order", scope, producer.target, indices[producer.name])
    return OwnerKey("module_name", fq.owner) if fq.owner else GLOBAL


def _read_plan(prepared: fx.GraphModule, layers: list[str], observer: str,
               other_act_bits: int) -> tuple[ActivationPlan, FxHandles]:
    modules = dict(prepared.named_modules(remove_duplicate=False))
    scopes = prepared.meta["_observed_graph_module_attrs"].node_name_to_scope
    indices = _call_indices(prepared.graph, scopes)
    keys: dict[int, OwnerKey] = {}
    instances: dict[int, FakeQuantize] = {}
    for node in prepared.graph.nodes:
        module = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(module, OwnedFakeQuantize) and id(module) not in keys:
            keys[id(module)] = _owner_key(module, node.args[0], scopes, indices)
            instances[id(module)] = module
    input_key, weights = _layer_inputs(prepared, modules, layers, keys)
    leave_weights_unclamped(weights.values())
    plan = ActivationPlan._from_inputs(layers, input_key, list(dict.fromkeys(keys.values())), observer,
                                       other_act_bits, "fx")
    handles = FxHandles(weights=weights, activations=[(instances[i], key) for i, key in keys.items()])
    return plan, handles


def _layer_inputs(prepared: fx.GraphModule, modules: Mapping[str, nn.Module], layers: list[str],
                  keys: Mapping[int, OwnerKey]) -> tuple[dict[str, OwnerKey], dict[str, FakeQuantize]]:
    nodes = {node.target: node for node in prepared.graph.nodes if node.op == "call_module"}
    input_key: dict[str, OwnerKey] = {}
    weights: dict[str, FakeQuantize] = {}
    for layer in layers:
        node = nodes.get(layer)
        weight_fq = getattr(modules.get(layer), "weight_fake_quant", None)
        if node is None or not isinstance(weight_fq, FakeQuantize):
            kind = type(modules.get(layer)).__name__
            raise HaqError(
                f"torch.ao FX did not quantize layer '{layer}' ({kind}): it has no weight fake-quantizer after "
                "prepare_qat_fx. FX quantization-aware training covers Conv2d, Conv3d and Linear (and Conv1d "
                "fused with BatchNorm); use --backend-option mode=eager or another backend for this model.")
        arg = node.args[0] if node.args else None
        source = modules.get(arg.target) if isinstance(arg, fx.Node) and arg.op == "call_module" else None
        if id(source) not in keys:
            raise HaqError(f"torch.ao FX left the input of layer '{layer}' unquantized, so its activation bits "
                           "cannot be applied; use --backend-option mode=eager for this model.")
        input_key[layer] = keys[id(source)]
        weights[layer] = weight_fq
    return input_key, weights
