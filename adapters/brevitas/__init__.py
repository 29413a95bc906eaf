"""The ``brevitas`` quantization backend and :func:`apply_policy`.

A HAQ policy becomes a model whose Conv1d/Conv2d/Linear layers are Brevitas
``QuantConv1d``/``QuantConv2d``/``QuantLinear`` layers, converted by Brevitas'
own ``layerwise_quantize`` with per-layer ``weight_bit_width`` and
``input_bit_width`` (see :mod:`haq_plugin.adapters.brevitas.quantizers` for
the quantizers and why changing bits in place is sound).  Every converted layer
has an input quantizer of its own, even where layers read one tensor, so each
input gets exactly its policy's bits (the default ``effective_bits`` holds).

Search loop costs: ``prepare`` copies the model once and quantizes it once;
``set_policy`` only writes bit widths into existing quantizer buffers;
``calibrate`` re-runs Brevitas' ``calibration_mode`` over the calibration
batches after resetting the previous activation statistics, unless the ranges
it would find are already known: with no input quantizers (weight-only) there
is nothing to calibrate, and while the weights are those of ``prepare`` the
ranges collected before are restored (exact; see
:mod:`haq_plugin.adapters.brevitas.calibration`).

A user applies a searched policy to their own float model with::

    from haq_plugin.adapters.brevitas import apply_policy
    qmodel = apply_policy(model, "brevitas_policy.json", calibration_data=batches)

and then trains, evaluates or exports ``qmodel`` like any Brevitas model.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch
from torch import nn

from haq_plugin.api.backend import QuantBackend, batch_inputs
from haq_plugin.api.inputs import require_one_tensor
from haq_plugin.engine.device import model_device
from haq_plugin.api.errors import HaqError
from haq_plugin.api.hookspecs import hookimpl
from haq_plugin.api.layers import LayerSpec, extract_layers
from haq_plugin.api.options import Option
from haq_plugin.api.policy import Policy

from haq_plugin.api.quantize_mode import QuantizeMode
from haq_plugin.adapters.brevitas.settings import ACT_RANGES, LayerQuant, QuantSettings, alias_weight_range
from haq_plugin.adapters.common.weight_ranges import DEFAULT_WEIGHT_RANGE, WEIGHT_RANGE_HELP, WEIGHT_RANGES

if TYPE_CHECKING:
    from haq_plugin.adapters.brevitas.calibration import InputRangeCache
    from haq_plugin.adapters.brevitas.quantizers import LayerHandles

# Brevitas itself (seconds to import) is imported inside the methods that quantize, so that listing
# plugins or running another backend never pays for it.

SUPPORTED_BITS = tuple(range(2, 9))
BITS_HELP = (
    "The brevitas backend quantizes with 2 to 8 bits. 1 bit is refused: a narrow-range signed 1-bit integer "
    "has no level besides zero, so Brevitas' integer weight quantizer gets an infinite scale and NaN weights "
    "(binary networks need Brevitas' separate binary quantizers, another scheme than HAQ's linear one). More "
    "than 8 bits is refused: 2..8 is the space the search explores and the hardware models cost, and 8 bits "
    "already keeps float accuracy."
)


def _check_percentile(value: float) -> str | None:
    return None if 0.0 < value <= 100.0 else "must be in (0, 100]"


class BrevitasBackend(QuantizeMode, QuantBackend):
    """Fake quantization with Brevitas quant layers.

    Weights: signed, narrow range, per output channel.  Layer inputs: per
    tensor, unsigned where the calibration data shows the input is never
    negative, signed otherwise.  Biases and BatchNorm stay in floating point.
    ``finetune`` trains with Adam and cross-entropy on ``(inputs, targets)``
    batches; every ``set_policy`` after a finetune first restores the weights
    of ``prepare``, so episodes are independent.
    """

    name = "brevitas"
    description = ("Brevitas quant layers via layerwise_quantize: per-channel weights, per-tensor signed or "
                   "unsigned inputs, bit widths changed in place")
    export_filename = "brevitas_policy.json"
    supported_bits = SUPPORTED_BITS
    bits_help = BITS_HELP
    options = (
        Option("act_range", str, "percentile", choices=ACT_RANGES,
               help="How input (activation) ranges are calibrated: 'percentile' of the calibration inputs "
                    "(fast, bit-width independent) or 'mse' (MSE-optimal range for the current bit width; "
                    "more accurate at 3-4 bits, several times slower to calibrate)."),
        Option("act_percentile", float, 99.99, check=_check_percentile,
               help="Percentile of the absolute calibration inputs used as range (act_range=percentile)."),
        Option("weight_range", str, DEFAULT_WEIGHT_RANGE, WEIGHT_RANGE_HELP, choices=WEIGHT_RANGES),
        Option("clip_weights", bool, None, "The older name of weight_range: true is weight_range=mse, false "
               "minmax (stored as weight_range)."),
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        given = self.config["weight_range"] if "weight_range" in options else None
        # The alias is resolved once, here: the stored config (policy.json, workers) holds weight_range only.
        self.config["weight_range"] = alias_weight_range(self.config["clip_weights"], given) or \
            self.config["weight_range"]
        self.config["clip_weights"] = None
        self._settings = QuantSettings(act_range=self.config["act_range"],
                                       act_percentile=self.config["act_percentile"],
                                       weight_range=self.config["weight_range"])
        self._model: nn.Module | None = None
        self._handles: dict[str, LayerHandles] = {}
        self._signs: dict[str, bool] = {}
        self._bits: dict[str, tuple[int, int]] = {}
        self._calibration: list[Any] = []
        self._example_shape: tuple[int, ...] = ()
        self._ranges: InputRangeCache | None = None

    @property
    def clip_weights(self) -> bool:
        """Whether weight ranges are MSE-clipped: the older name of option ``weight_range`` (set before prepare)."""
        return self.config["weight_range"] == "mse"

    @clip_weights.setter
    def clip_weights(self, value: bool) -> None:
        self.config["weight_range"] = alias_weight_range(bool(value), None)

    # -- search loop ----------------------------------------------------------------------
    def prepare(self, model: nn.Module, example_input: torch.Tensor, calibration_data: Iterable[Any],
                layers: Sequence[LayerSpec] | None = None) -> None:
        """Copy ``model`` once, convert it to Brevitas quant layers (8 bits) and calibrate it."""
        require_one_tensor(example_input, self.name, "its policy file records one input shape")
        batches = [batch_inputs(batch) for batch in calibration_data]
        if not batches:
            raise HaqError("backend 'brevitas': calibration_data is empty; give at least one input batch so "
                           "that activation ranges and input signs can be measured.")
        from haq_plugin.adapters.brevitas.calibration import InputRangeCache
        from haq_plugin.adapters.brevitas.quantizers import detect_input_signs, find_handles, quantize_layers

        names = [layer.name for layer in self.use_layers(model, example_input, layers)]
        qmodel = copy.deepcopy(model)
        self._settings = dataclasses.replace(self._settings, quantize=self.quantize,
                                             weight_range=self.config["weight_range"])
        self._signs = detect_input_signs(qmodel, names, batches)
        self._bits = {name: (8, 8) for name in names}
        quantize_layers(qmodel, self._plan(), self._settings)
        qmodel.to(model_device(model)).eval()  # new quantizers on the model's device, before handles to them
        self._model, self._calibration = qmodel, batches
        self._handles = find_handles(qmodel, names)
        self._example_shape = tuple(example_input.shape)
        self._ranges = InputRangeCache(bit_dependent=self._settings.act_range == "mse")
        self.mark_prepared()
        self.calibrate()

    def _apply_policy(self, bits: dict[str, tuple[int, int]]) -> None:
        """Write every layer's (weight, input) bit widths into its existing quantizers."""
        from haq_plugin.adapters.brevitas.quantizers import set_bit_widths

        for name, (weight_bits, input_bits) in bits.items():
            set_bit_widths(self._handles[name], weight_bits, input_bits)

    def _calibrate(self) -> None:
        """Reset the input quantizers' ranges and re-collect them with ``calibration_mode`` (or restore them)."""
        from haq_plugin.adapters.brevitas.quantizers import calibrate_inputs, reset_input_scaling

        model = self._require_prepared()
        assert self._ranges is not None  # made by prepare
        quantized = {name: h for name, h in self._handles.items() if h.input_scaling is not None}
        known = not self._weights_changed  # ranges found on the prepared weights still hold
        if quantized and not (known and self._ranges.restore(quantized, self._bits)):
            reset_input_scaling(quantized.values())
            calibrate_inputs(model, self._calibration)
            if known:
                self._ranges.store(quantized, self._bits)

    def _finetune(self, train_data: Iterable[Any], steps: int, lr: float) -> None:
        """Train the quantized model for ``steps`` batches (cycling over ``train_data``)."""
        self.train_steps(self._require_prepared(), train_data, steps, lr)

    @property
    def model(self) -> nn.Module:
        return self._require_prepared()

    @property
    def input_signs(self) -> dict[str, bool]:
        """Whether each layer's input quantizer is signed (found on the calibration data)."""
        return dict(self._signs)

    def export(self, policy: Policy, path: str | Path) -> Path:
        """Write ``brevitas_policy.json`` (into ``path`` if it is a directory); see the file format module."""
        from haq_plugin.adapters.brevitas.policy_file import policy_file_dict, write_policy_file

        model = self._require_prepared()
        if not isinstance(policy, Policy):
            raise HaqError("backend 'brevitas': export needs a haq_plugin.api.policy.Policy, got "
                           f"{type(policy).__name__}.")
        self.policy_bits(policy)
        plan = {name: LayerQuant(w, a, self._signs[name]) for name, (w, a) in policy.bits.items()}
        modules = dict(model.named_modules())
        quant_layer_names = {name: type(modules[name]).__name__ for name in plan}
        path = self.export_path(path)
        data = policy_file_dict(policy, plan, self._settings, quant_layer_names, self._example_shape)
        return write_policy_file(path, data)

    # -- internals ------------------------------------------------------------------------
    def _plan(self) -> dict[str, LayerQuant]:
        return {name: LayerQuant(w, a, self._signs[name]) for name, (w, a) in self._bits.items()}

    def _require_prepared(self) -> nn.Module:
        self.require_prepared()
        assert self._model is not None
        return self._model


def apply_policy(model: nn.Module, path: str | Path, calibration_data: Iterable[Any] | None = None,
                 example_input: torch.Tensor | None = None) -> nn.Module:
    """The Brevitas-quantized counterpart of ``model`` under the policy in ``path``.

    ``model`` is left unchanged; the returned copy has Brevitas quant layers with
    the policy's bit widths and the input signs recorded at export.  The layers
    are checked against the policy's fingerprint on ``example_input`` (by default
    zeros of the shape recorded in the file).  With ``calibration_data`` the
    input quantizers are calibrated on it; without, Brevitas initialises them
    itself from the first training-mode forward passes (its QAT behaviour), so
    calibrate before evaluating an untrained model.
    """
    from haq_plugin.adapters.brevitas.policy_file import read_policy_file
    from haq_plugin.adapters.brevitas.quantizers import calibrate_inputs, find_handles, quantize_layers

    contents = read_policy_file(path)
    BrevitasBackend().check_bits(contents.policy.bits, list(contents.policy.bits))
    if example_input is None:
        example_input = torch.zeros(contents.example_input_shape)
    contents.policy.check_layers(extract_layers(model, example_input))
    qmodel = quantize_layers(copy.deepcopy(model), contents.plan, contents.settings)
    find_handles(qmodel, contents.plan)  # every policy layer must now be a Brevitas quant layer
    if calibration_data is not None:
        batches = [batch_inputs(batch) for batch in calibration_data]
        if not batches:
            raise HaqError("apply_policy: calibration_data is empty; pass None to skip calibration.")
        calibrate_inputs(qmodel, batches)
    qmodel.train(model.training)
    return qmodel


@hookimpl
def haq_quant_backends() -> list[type[QuantBackend]]:
    return [BrevitasBackend]
