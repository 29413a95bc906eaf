"""``simple-fq``: every Conv/Linear weight fake-quantized per output channel, every layer input per tensor.

Written with the template hooks of ``haq_plugin.QuantBackend`` only: the base class
checks the bits, undoes the last finetune, keeps the calibrated flag and guards every
per-episode method against use before ``prepare``.

* weights: symmetric, integer range ``[-2**(b-1), 2**(b-1) - 1]``, one scale per output
  channel (``max |w| / (2**(b-1) - 1)``), applied by a parametrization, so finetuning
  trains the float weights through the straight-through estimator;
* inputs: affine, ``[0, 2**b - 1]``, one scale and zero point per layer from the range
  observed on the calibration data by a forward pre-hook (``input_range``: the min/max,
  or the 0.1/99.9 percentiles).  In ``--quantize weights`` mode inputs stay float.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from haq_plugin import WEIGHTS_AND_ACTIVATIONS, WEIGHTS_ONLY, HaqError, Option, QuantBackend
from haq_plugin.api.backend import batch_inputs


class PerChannelWeightFQ(nn.Module):
    """A parametrization: the weight, fake-quantized per output channel at ``bits`` (symmetric)."""

    def __init__(self) -> None:
        super().__init__()
        self.bits = 8

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        qmax = 2 ** (self.bits - 1) - 1
        scale = (weight.detach().abs().flatten(1).amax(dim=1) / qmax).clamp(min=1e-8).float()
        zero = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -qmax - 1, qmax)


class SimpleFQBackend(QuantBackend):
    name = "simple-fq"
    description = "per-channel weights, per-tensor inputs, with torch's fake_quantize ops"
    export_filename = "simple_fq.json"
    supported_bits = tuple(range(2, 9))
    quantize_modes = (WEIGHTS_AND_ACTIVATIONS, WEIGHTS_ONLY)
    options = (Option("input_range", str, "minmax", choices=("minmax", "percentile"),
                      help="input range from calibration: min/max, or the 0.1/99.9 percentiles"),)

    def prepare(self, model, example_input, calibration_data, layers=None) -> None:
        self.use_layers(model, example_input, layers)
        self._model = copy.deepcopy(model).eval()
        modules = dict(self._model.named_modules())
        self._weight_fq: dict[str, PerChannelWeightFQ] = {}
        for name in self.layer_names:
            if not isinstance(modules[name], (nn.Conv2d, nn.Linear)):
                raise HaqError(f"backend '{self.name}': layer {name!r} is a {type(modules[name]).__name__}; "
                               "only Conv2d and Linear layers are supported.")
            self._weight_fq[name] = PerChannelWeightFQ()
            parametrize.register_parametrization(modules[name], "weight", self._weight_fq[name])
            modules[name].register_forward_pre_hook(self._input_hook(name))
        self._calibration = [batch_inputs(batch) for batch in calibration_data]
        self._input_bits: dict[str, int] = {}
        self._ranges: dict[str, tuple[float, float]] = {}
        self._observing = False

    def _input_hook(self, name: str):
        def hook(module: nn.Module, args: tuple[Any, ...]):
            x = args[0]
            if self.weights_only:
                return None
            if self._observing:
                lo, hi = self._observed(x.detach())
                old = self._ranges.get(name, (lo, hi))
                self._ranges[name] = (min(old[0], lo, 0.0), max(old[1], hi, 0.0))
                return None
            lo, hi = self._ranges[name]
            qmax = 2 ** self._input_bits[name] - 1
            scale = max(hi - lo, 1e-8) / qmax
            zero = min(max(round(-lo / scale), 0), qmax)
            return (torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, qmax), *args[1:])
        return hook

    def _observed(self, x: torch.Tensor) -> tuple[float, float]:
        if self.config["input_range"] == "minmax":
            return x.min().item(), x.max().item()
        flat = x.flatten().float()[: 1 << 24]  # torch.quantile's input limit
        return torch.quantile(flat, 0.001).item(), torch.quantile(flat, 0.999).item()

    # -- the template hooks ---------------------------------------------------------------
    def _apply_policy(self, bits) -> None:
        for name, (weight_bits, input_bits) in bits.items():
            self._weight_fq[name].bits = weight_bits
            self._input_bits[name] = input_bits

    def _calibrate(self) -> None:
        self._ranges, self._observing = {}, True
        try:
            with torch.no_grad():
                for x in self._calibration:
                    self._model(x)
        finally:
            self._observing = False

    def _finetune(self, train_data, steps, lr) -> None:
        self.train_steps(self._model, train_data, steps, lr)

    @property
    def model(self) -> nn.Module:
        self.require_prepared()
        return self._model

    def export(self, policy, path) -> Path:
        """Write ``{"format", "quantize", "input_range", "layers": {name: bits and input range}}`` as JSON."""
        self.require_prepared()
        bits = self.policy_bits(policy)
        self.set_policy(bits)
        self.calibrate()
        layers = {}
        for name, (weight_bits, input_bits) in bits.items():
            entry: dict[str, Any] = {"weight_bits": weight_bits, "weight_scheme": "symmetric per-channel"}
            if not self.weights_only:
                entry.update(input_bits=input_bits, input_scheme="affine per-tensor", input_range=self._ranges[name])
            layers[name] = entry
        path = Path(path)
        path.write_text(json.dumps({"format": "simple-fq/1", "quantize": self.quantize,
                                    "input_range": self.config["input_range"], "layers": layers}, indent=2) + "\n")
        return path
