"""Eager-mode fake quantization for models that torch.fx cannot trace.

A forward pass with data-dependent control flow (``if x.sum() > 0``) cannot be
traced symbolically, so FX graph mode does not apply.  Eager mode works on the
module tree instead:

1. Conv + BatchNorm (+ ReLU) and Linear + ReLU that are adjacent children of an
   ``nn.Sequential`` are fused (``fuse_modules_qat``); inside a Sequential
   the data flow is known without tracing.  The fused module keeps the conv's
   name, so the policy's layer names still apply.
2. Each layer gets its per-module ``.qconfig`` and is swapped for its QAT
   module (``from_float``), which fake-quantizes its weight with
   ``qconfig.weight``.
3. Each layer gets an ``input_fake_quant`` child built from
   ``qconfig.activation`` and applied by a forward pre-hook.

Step 3 differs from torch.ao's own eager flow, which hangs observers on module
*outputs* and needs QuantStubs placed by hand.  Quantizing each layer's input is
HAQ's definition of the activation bits, and it needs no knowledge of the data
flow between layers, so every layer gets exactly its policy's activation bits.
In this mode the QConfig of a layer therefore describes its *input*.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn
from torch.ao.quantization import FakeQuantize, QConfigMapping, fuse_modules_qat
from torch.ao.quantization.quantization_mappings import get_default_qat_module_mappings

from haq_plugin.api.errors import HaqError

from haq_plugin.adapters.torch_ao.match import has_submodule
from haq_plugin.adapters.torch_ao.qconfig import leave_weights_unclamped
from haq_plugin.adapters.torch_ao.quiet import quiet_torch_ao

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _fusable_run(children: list[tuple[str, nn.Module]], i: int) -> int:
    """How many children starting at ``i`` fuse into one module (1 = none)."""
    first = children[i][1]
    kinds = [type(m) for _, m in children[i + 1:i + 3]]
    if isinstance(first, _CONVS):
        if kinds[:1] and issubclass(kinds[0], _BNS):
            return 3 if len(kinds) > 1 and kinds[1] is nn.ReLU else 2
        return 2 if kinds[:1] == [nn.ReLU] and isinstance(first, (nn.Conv2d, nn.Conv3d)) else 1
    if isinstance(first, nn.Linear):
        return 2 if kinds[:1] == [nn.ReLU] else 1
    return 1


def fusable_groups(model: nn.Module, layers: set[str]) -> list[list[str]]:
    """Names of Conv-BN(-ReLU), Conv-ReLU and Linear-ReLU runs inside ``nn.Sequential`` containers."""
    groups: list[list[str]] = []
    for prefix, container in model.named_modules():
        if not isinstance(container, nn.Sequential):
            continue
        children = list(container.named_children())
        i = 0
        while i < len(children):
            size = _fusable_run(children, i)
            names = [f"{prefix}.{name}" if prefix else name for name, _ in children[i:i + size]]
            if size > 1 and names[0] in layers:
                groups.append(names)
            i += size
    return groups


def _quantize_input(module: nn.Module, args: tuple) -> tuple:
    return (module.input_fake_quant(args[0]),) + tuple(args[1:])


def _swap_layer(model: nn.Module, name: str, qconfig: Any) -> nn.Module:
    module = model.get_submodule(name)
    qat_class = get_default_qat_module_mappings().get(type(module))
    if qat_class is None:
        raise HaqError(f"Layer '{name}' ({type(module).__name__}) has no torch.ao quantization-aware-training "
                       "module, so eager mode cannot fake-quantize it (supported: Conv2d, Conv3d, Linear, and "
                       "Conv1d fused with BatchNorm).")
    module.qconfig = qconfig
    qat = qat_class.from_float(module)
    qat.add_module("input_fake_quant", qconfig.activation())
    qat.register_forward_pre_hook(_quantize_input)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, qat)
    return qat


def prepare_qat_eager(model: nn.Module, mapping: QConfigMapping, inplace: bool = False) -> nn.Module:
    """Fuse and fake-quantize the layers named in ``mapping.module_name_qconfigs`` (see module docstring).

    Use it for models FX cannot trace, with the mapping that the ``torch.ao``
    backend exported in eager mode.  The result trains like any QAT model.
    """
    if not inplace:
        model = copy.deepcopy(model)
    layers = dict(mapping.module_name_qconfigs)
    missing = [name for name in layers if not has_submodule(model, name)]
    if missing:
        raise HaqError(f"The QConfigMapping names layer(s) this model lacks: {', '.join(missing)}.")
    model.train()
    with quiet_torch_ao():
        groups = fusable_groups(model, set(layers))
        if groups:
            fuse_modules_qat(model, groups, inplace=True)
        for name, qconfig in layers.items():
            _swap_layer(model, name, qconfig)
    return model


def eager_handles(model: nn.Module, layers: list[str]) -> tuple[dict[str, FakeQuantize], dict[str, FakeQuantize]]:
    """The weight and input fake-quantizers of each layer of a :func:`prepare_qat_eager` model."""
    weights = {name: model.get_submodule(name).weight_fake_quant for name in layers}
    leave_weights_unclamped(weights.values())
    inputs = {name: model.get_submodule(name).input_fake_quant for name in layers}
    return weights, inputs
