"""Quantizable layers of a network, as plain data.

:class:`LayerSpec` describes one Conv1d/Conv2d/Linear layer with everything a
hardware model or the search needs (shapes, MACs, parameters), independent of the
batch size.  :func:`extract_layers` finds them in any ``nn.Module`` with a single
forward pass and forward hooks, so the order is the execution order (what HAQ's
agent walks), not the registration order.

A ``LayerSpec`` can also be written by hand, e.g. to cost one layer::

    LayerSpec(name="conv1", kind="conv", in_channels=3, out_channels=32,
              kernel_size=3, stride=2, groups=1, in_size=224, out_size=112,
              reads_network_input=True)
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from haq_plugin.api.errors import HaqError
from haq_plugin.api.inputs import call_model

Pair = tuple[int, int]

QUANTIZABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _pair(value: int | Sequence[int], what: str) -> Pair:
    if isinstance(value, int):
        return (value, value)
    values = tuple(int(v) for v in value)
    if len(values) == 1:
        return (values[0], 1)
    if len(values) != 2:
        raise HaqError(f"LayerSpec: {what} must be an int or a pair, got {value!r}.")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class LayerSpec:
    """One quantizable layer.

    Sizes are (height, width) pairs; an int means a square.  Conv1d layers use
    (length, 1).  Linear layers have kernel, stride and spatial sizes of 1.
    ``macs`` and ``params`` count one sample and the weight tensor only (the bias
    stays in full precision and is not counted as quantized storage).
    """

    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel_size: Pair = (1, 1)
    stride: Pair = (1, 1)
    padding: Pair | None = None
    dilation: Pair = (1, 1)
    groups: int = 1
    in_size: Pair = (1, 1)
    out_size: Pair | None = None
    reads_network_input: bool = False
    macs: int = field(init=False)
    params: int = field(init=False)
    is_depthwise: bool = field(init=False)

    def __post_init__(self) -> None:
        if self.kind not in ("conv", "linear"):
            raise HaqError(f"LayerSpec {self.name!r}: kind must be 'conv' or 'linear', got {self.kind!r}.")
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        for key in ("kernel_size", "stride", "dilation", "in_size"):
            set_(key, _pair(getattr(self, key), key))
        if self.out_size is not None:
            set_("out_size", _pair(self.out_size, "out_size"))
        if self.padding is not None:
            set_("padding", _pair(self.padding, "padding"))
        for key in ("in_channels", "out_channels", "groups"):
            if int(getattr(self, key)) < 1:
                raise HaqError(f"LayerSpec {self.name!r}: {key} must be >= 1, got {getattr(self, key)}.")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise HaqError(
                f"LayerSpec {self.name!r}: groups={self.groups} must divide in_channels={self.in_channels} "
                f"and out_channels={self.out_channels}."
            )
        if self.kind == "linear":
            set_("kernel_size", (1, 1))
            set_("stride", (1, 1))
            set_("in_size", (1, 1))
            set_("out_size", (1, 1))
            set_("padding", (0, 0))
        if self.padding is None:
            set_("padding", self._implied_padding())
        if self.out_size is None:
            set_("out_size", self._implied_out_size())
        kh, kw = self.kernel_size
        oh, ow = self.out_size  # type: ignore[misc]
        per_output = (self.in_channels // self.groups) * kh * kw
        set_("params", self.out_channels * per_output)
        set_("macs", self.out_channels * per_output * oh * ow)
        set_("is_depthwise", self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels)

    def _implied_out_size(self) -> Pair:
        pad = self.padding or (0, 0)
        return tuple(  # type: ignore[return-value]
            (i + 2 * p - d * (k - 1) - 1) // s + 1
            for i, p, d, k, s in zip(self.in_size, pad, self.dilation, self.kernel_size, self.stride)
        )

    def _implied_padding(self) -> Pair:
        if self.out_size is None:
            return (0, 0)
        return tuple(  # type: ignore[return-value]
            max(0, math.ceil(((o - 1) * s + d * (k - 1) + 1 - i) / 2))
            for i, o, d, k, s in zip(self.in_size, self.out_size, self.dilation, self.kernel_size, self.stride)
        )

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the weight tensor, as PyTorch stores it."""
        if self.kind == "linear":
            return (self.out_channels, self.in_channels)
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @property
    def in_activations(self) -> int:
        """Number of input activation values per sample."""
        return self.in_channels * self.in_size[0] * self.in_size[1]

    @property
    def out_activations(self) -> int:
        """Number of output activation values per sample."""
        return self.out_channels * self.out_size[0] * self.out_size[1]  # type: ignore[index]

    def shape_key(self) -> str:
        """Compact text of the shape, used in fingerprints and cache keys."""
        return (
            f"{self.kind}:{self.in_channels}->{self.out_channels}:k{self.kernel_size}:s{self.stride}"
            f":p{self.padding}:d{self.dilation}:g{self.groups}:in{self.in_size}:out{self.out_size}"
            f":first{int(self.reads_network_input)}"
        ).replace(" ", "")

    def describe(self) -> str:
        """Short human-readable shape, e.g. ``conv 3x3/2 32->64 @112x112``."""
        if self.kind == "linear":
            return f"linear {self.in_channels}->{self.out_channels}"
        kh, kw = self.kernel_size
        dw = " dw" if self.is_depthwise else (f" g{self.groups}" if self.groups > 1 else "")
        return (f"conv {kh}x{kw}/{self.stride[0]}{dw} {self.in_channels}->{self.out_channels} "
                f"@{self.in_size[0]}x{self.in_size[1]}")


def _spec_from_module(name: str, module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> LayerSpec:
    if isinstance(module, nn.Linear):
        return LayerSpec(name=name, kind="linear", in_channels=module.in_features,
                         out_channels=module.out_features)
    conv1d = isinstance(module, nn.Conv1d)
    spatial = lambda t: (t.shape[-1], 1) if conv1d else (t.shape[-2], t.shape[-1])  # noqa: E731
    if isinstance(module.padding, str):
        raise HaqError(f"Layer {name!r}: string padding {module.padding!r} is not supported; use numbers.")
    return LayerSpec(
        name=name, kind="conv", in_channels=module.in_channels, out_channels=module.out_channels,
        kernel_size=module.kernel_size, stride=module.stride, padding=module.padding,
        dilation=module.dilation, groups=module.groups, in_size=spatial(inp), out_size=spatial(out),
    )


def extract_layers(model: nn.Module, example_input: Any) -> list[LayerSpec]:
    """Return the quantizable layers of ``model`` in execution order.

    One forward pass (no gradients, model in eval mode, state restored after)
    with forward hooks on every Conv1d/Conv2d/Linear.  The first layer executed
    is marked ``reads_network_input``.  A module called twice in one pass has no
    single shape and no single bit width, so it is rejected.
    """
    if not isinstance(model, nn.Module):
        raise HaqError(f"The model must be a torch nn.Module, got {type(model).__name__}; pass the network "
                       "itself (e.g. an nn.Sequential), not its state dict or a factory function.")
    calls: dict[str, int] = {}
    specs: list[LayerSpec] = []
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            calls[name] = calls.get(name, 0) + 1
            if calls[name] == 1:
                specs.append(_spec_from_module(name, module, args[0], output))
        return hook

    for name, module in model.named_modules():
        if type(module) in QUANTIZABLE_TYPES:
            handles.append(module.register_forward_hook(make_hook(name)))
    if not handles:
        raise HaqError(
            f"{type(model).__name__} has no quantizable layer: haq-plugin quantizes nn.Conv1d, nn.Conv2d "
            "and nn.Linear modules, and this model has none."
        )
    try:
        with evaluating(model):
            run_forward(model, example_input, "the example input", EXAMPLE_INPUT_HINT)
    finally:
        for handle in handles:
            handle.remove()
    repeated = sorted(name for name, n in calls.items() if n > 1)
    if repeated:
        raise HaqError(
            f"Module(s) {', '.join(repeated)} are called more than once per forward pass. A shared layer has no "
            "single per-layer bit width; give each use its own module."
        )
    if not specs:
        raise HaqError(f"No quantizable layer of {type(model).__name__} ran during the forward pass.")
    first = specs[0]
    specs[0] = dataclasses.replace(first, reads_network_input=True)
    return specs


def describe_input(value: Any) -> str:
    """Shape of a tensor (``1x3x224x224``), or of each tensor in a tuple, list or dict, for messages."""
    if isinstance(value, torch.Tensor):
        return "x".join(map(str, value.shape)) or "scalar"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(describe_input(v) for v in value) + ")"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key}: {describe_input(v)}" for key, v in value.items()) + "}"
    return type(value).__name__


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode and without gradients inside the block; its train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


EXAMPLE_INPUT_HINT = "give an --input-shape the model accepts (or fix the example input its callable returns)"
DATA_HINT = "give --data batches of the shape and type the model accepts"


def run_forward(model: nn.Module, inputs: Any, what: str, hint: str = DATA_HINT) -> Any:
    """``model(inputs)`` without gradients; a failure of the model itself becomes one-line :class:`HaqError`.

    A user's model that does not accept an input (a channel or matmul mismatch, a
    bug in its ``forward``) otherwise ends in a deep traceback from inside torch;
    the message names the input's shape and gives the model's own error.
    """
    try:
        with torch.no_grad():
            return call_model(model, inputs)
    except HaqError:
        raise
    except Exception as exc:
        own = " ".join(str(exc).split()) or "(no message)"
        raise HaqError(f"The model's forward pass failed on {what} (shape {describe_input(inputs)}): "
                       f"{type(exc).__name__}: {_cut(own)}. If the input does not fit the model, {hint}.") from None


def _cut(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
