"""A converted model's activations on the grids the prepared model trained with, inside the policy's ranges.

``convert_fx`` loses two things the prepared (fake-quantized) model had:

* the observer after an op that the conversion leaves as it is.  ReLU, ReLU6,
  Hardtanh and ``clamp`` have their own output observer
  (:mod:`~haq_plugin.adapters.torch_ao.fx_backend`), and so has a dropout in
  front of a layer; but the lowering to quantized kernels runs these ops
  directly on the quantized tensor of the op before them and drops the
  ``quantize`` after them, so their output keeps the grid of their input.  A
  layer fed by a ReLU6 then reads the integers of the tensor before the ReLU6
  (at 3 bits: zero point 131 and integers 131..255, where the prepared model
  had 0..7);
* the range.  Quantized kernels saturate at the limits of ``quint8``
  (0..255), not at ``quant_min``/``quant_max``, so inputs beyond the range
  the observers saw give integers beyond ``2^a - 1``, where fake quantization
  clamped them.

:func:`read_grids` reads, before the conversion, the grid (scale, zero point,
range) of every observer that follows an observed op and of the observer in
front of every layer; :func:`hold_grids` puts them back into the converted
graph: the output of an op that the conversion left running on the quantized
tensor it reads (ReLU6, dropout, ...; found by name) is requantized onto its observer's grid
(``dequantize``, ``clamp`` to the range, ``quantize_per_tensor``: what the
fake-quantizer computed), and a quantized layer's input is clamped to its
range in the quantized domain (``torch.clamp`` on a quantized tensor keeps its
scale and zero point).  Ops the conversion replaced by quantized kernels
(Conv, Linear, ``add``, ...) already requantize with their observer's scale
and zero point.  Everything inserted is a plain torch op, so
``print(converted.code)`` shows it and the converted model needs nothing of
this package.
"""

from __future__ import annotations

__all__ = ["ActivationGrids", "Grid", "hold_grids", "read_grids"]

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import fx, nn
from torch.ao.quantization.fake_quantize import FakeQuantizeBase
from torch.ao.quantization.observer import ObserverBase

QUANTIZED_ACTIVATIONS = {torch.quint8: (0, 255), torch.qint8: (-128, 127)}


@dataclass(frozen=True)
class Grid:
    """One activation observer's quantization: ``real = (integer - zero_point) * scale``, integers in range."""

    scale: float
    zero_point: int
    quant_min: int
    quant_max: int
    dtype: torch.dtype

    @property
    def bounds(self) -> tuple[float, float]:
        """The real values of ``quant_min`` and ``quant_max``: clamping to them clamps the integers."""
        return ((self.quant_min - self.zero_point) * self.scale, (self.quant_max - self.zero_point) * self.scale)

    @property
    def full(self) -> bool:
        """Whether the range is the dtype's whole range, which quantized kernels hold by themselves."""
        return (self.quant_min, self.quant_max) == QUANTIZED_ACTIVATIONS[self.dtype]


@dataclass
class ActivationGrids:
    """The grids :func:`hold_grids` restores, read from a prepared model.

    ``after_op`` maps the name of a node between two observers of different
    grids to ``(what the node runs, grid of its output observer)``;
    ``layer_input`` maps a module's name to the grid of the observer in front
    of it.
    """

    after_op: dict[str, tuple[tuple[str, Any], Grid]] = field(default_factory=dict)
    layer_input: dict[str, Grid] = field(default_factory=dict)


def grid_of(observer: nn.Module) -> Grid | None:
    """The grid of an activation observer or fake-quantizer; ``None`` when it quantizes nothing (float)."""
    if not isinstance(observer, (ObserverBase, FakeQuantizeBase)):
        return None
    dtype = getattr(observer, "dtype", None)
    if dtype not in QUANTIZED_ACTIVATIONS:
        return None
    scale, zero_point = observer.calculate_qparams()
    if scale.numel() != 1:
        return None
    limits = getattr(observer, "activation_post_process", observer)
    return Grid(float(scale), int(zero_point), int(limits.quant_min), int(limits.quant_max), dtype)


def _observer_grid(node: Any, modules: Mapping[str, nn.Module]) -> Grid | None:
    if isinstance(node, fx.Node) and node.op == "call_module":
        return grid_of(modules.get(node.target))
    return None


def _own_grid(module: nn.Module | None) -> bool:
    """Whether a converted module requantizes its output itself (quantized Conv, Hardswish, ...)."""
    return hasattr(module, "scale") and hasattr(module, "zero_point")


def read_grids(prepared: fx.GraphModule) -> ActivationGrids:
    """The grids of a model from ``prepare_qat_fx`` or ``prepare_fx``; call it before ``convert_fx``,
    which changes the model it is given."""
    modules = dict(prepared.named_modules(remove_duplicate=False))
    grids = ActivationGrids()
    for node in prepared.graph.nodes:
        before = _observer_grid(node.args[0], modules) if node.args else None
        if before is None:
            continue
        if node.op == "call_module":
            grids.layer_input[node.target] = before
        after = [grid for grid in (_observer_grid(user, modules) for user in node.users) if grid is not None]
        if after and after[0] != before:
            grids.after_op[node.name] = ((node.op, node.target), after[0])
    return grids


def _keeps_input_grid(node: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    """Whether converted ``node`` runs on the quantized tensor it reads and returns it on the same grid.

    Not so for a module that requantizes its output itself, nor for an op the
    conversion left between a ``dequantize`` and a ``quantize`` (whose grid is kept).
    """
    if node.op == "call_module" and _own_grid(modules.get(node.target)):
        return False
    return not any(user.op == "call_function" and user.target is torch.quantize_per_tensor for user in node.users)


def _requantize_after(graph: fx.Graph, node: fx.Node, grid: Grid) -> fx.Node:
    """Every user of ``node`` reads it requantized onto ``grid``, clamped to the range."""
    with graph.inserting_after(node):
        real = graph.call_method("dequantize", (node,))
    with graph.inserting_after(real):
        clamped = graph.call_function(torch.clamp, (real, *grid.bounds))
    with graph.inserting_after(clamped):
        held = graph.call_function(torch.quantize_per_tensor, (clamped, grid.scale, grid.zero_point, grid.dtype))
    node.replace_all_uses_with(held, delete_user_cb=lambda user: user is not real)
    return held


def _clamp_input(graph: fx.Graph, layer: fx.Node, grid: Grid) -> None:
    source = layer.args[0]
    with graph.inserting_before(layer):
        clamped = graph.call_function(torch.clamp, (source, *grid.bounds))
    layer.replace_input_with(source, clamped)


def _is_quantized_layer(module: nn.Module | None) -> bool:
    """A converted Conv/Linear with integer weights, whose input is a quantized tensor."""
    return callable(getattr(module, "weight", None)) and hasattr(module, "scale")


def hold_grids(converted: fx.GraphModule, grids: ActivationGrids) -> list[str]:
    """Restore ``grids`` in the graph of ``convert_fx``; the names of the ops and layers it changed."""
    graph = converted.graph
    modules = dict(converted.named_modules(remove_duplicate=False))
    held: dict[fx.Node, Grid] = {}
    changed: list[str] = []
    for node in list(graph.nodes):
        signature, grid = grids.after_op.get(node.name, (None, None))
        if grid is not None and (node.op, node.target) == signature and _keeps_input_grid(node, modules):
            held[_requantize_after(graph, node, grid)] = grid
            changed.append(node.name)
    for node in list(graph.nodes):
        grid = grids.layer_input.get(node.target) if node.op == "call_module" else None
        if grid is None or grid.full or not _is_quantized_layer(modules.get(node.target)):
            continue
        if held.get(node.args[0]) != grid:
            _clamp_input(graph, node, grid)
            changed.append(node.name)
    graph.lint()
    converted.recompile()
    return changed
