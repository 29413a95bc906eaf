"""The ``torch.ao`` quantization backend: HAQ policies as torch.ao QConfigMappings.

A policy becomes one ``QConfig`` per layer, set by module name:

* weights: ``FakeQuantize`` with a ``PerChannelMinMaxObserver`` (subclass
  ``FullRangeSymmetricObserver``, whose scale keeps converted integer weights in
  range), ``torch.qint8``, ``per_channel_symmetric``, range
  ``[-2^(w-1), 2^(w-1) - 1]``;
* activations: ``FakeQuantize`` with ``MinMaxObserver`` (or
  ``MovingAverageMinMaxObserver``, option ``act_observer``), ``torch.quint8``,
  ``per_tensor_affine``, range ``[0, 2^a - 1]``.  Affine unsigned ranges also
  hold negative inputs (the observer moves the zero point), whereas signed
  activation QConfigs are silently ignored by torch.ao's default backend config.

In FX graph mode a QConfig's activation quantizes the node's *output*, so a
layer's activation bits go to the QConfig of whatever produces its input; see
:mod:`haq_plugin.adapters.torch_ao.plan` for how that producer is found, and
for the two cases where one observer serves several layers (the network input
shares the first layer's QConfig; a tensor read by several layers has one
observer): such observers take the smallest of those layers' bits.  Models that
FX cannot trace fall back to eager mode (:mod:`haq_plugin.adapters.torch_ao.eager`),
where every layer quantizes its own input.

Search loop costs: ``prepare`` copies the model once and traces it once
(``prepare_qat_fx``, 8 bits everywhere); ``set_policy`` rewrites
``quant_min``/``quant_max`` of the existing fake-quantizers and resets their
statistics; ``calibrate`` observes the calibration batches and freezes the
ranges; ``finetune`` trains a few steps and the next ``set_policy`` restores
the weights of ``prepare``, so episodes stay independent.

The export file, ``qconfig_mapping.json``, is described in
:mod:`haq_plugin.adapters.torch_ao.mapping_file`.  Option ``weight_range``
(``mse`` or ``minmax``) chooses the weight observer
(:mod:`haq_plugin.adapters.torch_ao.qconfig`); the file records it.

Apply an exported policy with :func:`backend_config` and :func:`convert_in_range` (see their docs)::

    mapping = load_qconfig_mapping("qconfig_mapping.json", model, example_input)
    qat_model = prepare_qat_fx(model.train(), mapping, (example_input,), backend_config=backend_config())
    ...train qat_model as usual...
    int_model = convert_in_range(qat_model)
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.ao.nn.intrinsic import qat as nniqat
from torch.ao.quantization import FakeQuantize, QConfigMapping

from haq_plugin.api.backend import QuantBackend, batch_inputs, layer_difference
from haq_plugin.api.inputs import call_model
from haq_plugin.api.errors import HaqError, one_line
from haq_plugin.api.hookspecs import hookimpl
from haq_plugin.api.layers import LayerSpec, extract_layers
from haq_plugin.api.options import Option
from haq_plugin.storage.files import write_text_atomic
from haq_plugin.api.policy import Policy, check_layer_shapes, fingerprint

from haq_plugin.adapters.torch_ao.eager import eager_handles, prepare_qat_eager
from haq_plugin.adapters.torch_ao.mapping_file import (
    export_document, read_export, stored_observer, stored_weight_range)
from haq_plugin.adapters.torch_ao.mapping_json import mapping_from_json
from haq_plugin.adapters.torch_ao.match import warn_unmatched_layers
from haq_plugin.adapters.torch_ao.plan import ActivationPlan, OwnerKey, check_traceable, prepare_probed
from haq_plugin.adapters.common.integer_ranges import act_range, set_fake_quant_range, weight_range
from haq_plugin.adapters.torch_ao.qconfig import ACT_OBSERVERS, BITS_HELP, DEFAULT_WEIGHT_RANGE, SUPPORTED_BITS
from haq_plugin.adapters.common.weight_ranges import WEIGHT_RANGE_HELP, WEIGHT_RANGES
from haq_plugin.adapters.torch_ao.convert import backend_config, convert_in_range
from haq_plugin.api.quantize_mode import QUANTIZE_MODES, QuantizeMode, check_quantize

__all__ = ["TorchAoFxBackend", "TorchAoBackend", "backend_config", "convert_in_range", "load_qconfig_mapping", "prepare_qat_eager",
           "qconfig_mapping_for", "SUPPORTED_BITS", "BITS_HELP"]

log = logging.getLogger(__name__)

BitMap = Mapping[str, tuple[int, int]]


def _check_other_bits(value: int) -> str | None:
    return None if value in SUPPORTED_BITS else BITS_HELP


def checked_bits(bits: BitMap, layers: list[str]) -> dict[str, tuple[int, int]]:
    """``bits`` in layer order, with every width checked; :class:`HaqError` otherwise."""
    return TorchAoFxBackend().check_bits(bits, layers)


def qconfig_mapping_for(bits: BitMap, model: nn.Module, example_input: Any, *, act_observer: str = "minmax",
                        other_act_bits: int = 8, quantize: str = QUANTIZE_MODES[0],
                        weight_range: str = DEFAULT_WEIGHT_RANGE,
                        layers: Sequence[LayerSpec] | None = None) -> QConfigMapping:
    """The QConfigMapping that makes ``prepare_qat_fx(model, mapping, ...)`` apply ``bits``.

    ``bits`` maps layer name -> (weight_bits, activation_bits of the layer's
    input); ``weight_range`` is the backend option of that name.  A copy of
    the model is traced once to find which QConfig builds the observer in
    front of each layer; ``model`` itself is left as it was.  ``layers``, the
    model's :func:`extract_layers` when the caller has them, saves a forward pass.
    """
    specs = extract_layers(model, example_input) if layers is None else layers
    names = [spec.name for spec in specs]
    checked = checked_bits(bits, names)
    try:
        check_traceable(model)
    except Exception as exc:
        raise HaqError(f"torch.fx cannot trace {type(model).__name__} ({one_line(exc)}), so no FX "
                       "QConfigMapping applies; use the torch.ao backend's eager mode and prepare_qat_eager.") from None
    # prepare_qat_fx writes .qconfig attributes into the modules it is given: trace a copy.
    _, plan, _ = prepare_probed(copy.deepcopy(model), example_input, names, act_observer, other_act_bits,
                                weight_range)
    plan.quantize = check_quantize(quantize, "qconfig_mapping_for")
    return plan.mapping(checked)


def load_qconfig_mapping(path: str | Path, model: nn.Module | None = None,
                         example_input: Any = None) -> QConfigMapping:
    """Rebuild the QConfigMapping of an exported ``qconfig_mapping.json``.

    Pass the model: ``load_qconfig_mapping(path, model, example_input)`` is the
    safe form.  With both, a model whose layers or layer shapes differ from the
    policy's is refused with a :class:`HaqError` naming them (a policy of an
    older, wider model has the same names and other shapes); for FX files the
    mapping is then recomputed from the file's bits by tracing the model, exact
    also for files whose ``graph`` is ``assumed-chain``.  With the model alone
    (or an eager-mode file) the stored mapping is returned, with a
    ``UserWarning`` naming the layers it has that the model lacks.  Without the
    model nothing can be checked: ``prepare_qat_fx`` ignores unknown names, and
    a renamed layer silently gets the global 8-bit QConfig.
    """
    data = read_export(Path(path))
    layers = None
    if model is not None and example_input is not None:
        stored = {str(entry["name"]): str(entry.get("shape", "")) for entry in data["layers"]}
        layers = extract_layers(model, example_input)
        check_layer_shapes(stored, layers)
    if model is None or example_input is None or data["mode"] == "eager":
        mapping = mapping_from_json(data["qconfig_mapping"], str(path))
        if model is not None:
            warn_unmatched_layers(mapping, model, path)
        return mapping
    bits = {entry["name"]: (int(entry["weight_bits"]), int(entry["activation_bits"])) for entry in data["layers"]}
    return qconfig_mapping_for(bits, model, example_input, act_observer=stored_observer(data),
                               other_act_bits=int(data.get("other_activation_bits", 8)),
                               quantize=data.get("quantize", QUANTIZE_MODES[0]),
                               weight_range=stored_weight_range(data), layers=layers)


def _bits_problem(bits: Any, names: Sequence[str]) -> str:
    """The first bad width of ``bits`` (whose layers are ``names``), in this backend's words."""
    if not isinstance(bits, Mapping):
        return f"bits must map layer names to pairs, got {type(bits).__name__}"
    for name in names:
        pair = tuple(bits[name]) if isinstance(bits[name], (tuple, list)) else (bits[name],)
        for kind, value in zip(("weight", "activation"), pair):
            if value not in SUPPORTED_BITS or isinstance(value, bool):
                return f"the {kind} bit width of layer '{name}' is {value!r}"
    return "the bits are malformed"


class TorchAoFxBackend(QuantizeMode, QuantBackend):
    """Fake quantization with torch.ao QConfigs, FX graph mode or eager mode (see module docstring)."""

    name = "torch.ao"
    description = ("torch.ao QAT fake quantization: a QConfig per layer (per-channel symmetric weights, "
                   "affine unsigned activations), FX graph mode with an eager fallback; exports a QConfigMapping")
    export_filename = "qconfig_mapping.json"
    supported_bits = SUPPORTED_BITS
    bits_help = BITS_HELP
    options = (
        Option("mode", str, "auto", "fx: FX graph mode; eager: per-module qconfig with input fake-quantizers; "
               "auto: FX when the model can be traced, else eager.", choices=("auto", "fx", "eager")),
        Option("act_observer", str, "minmax", "Activation observer: minmax (range of all calibration "
               "batches) or moving_average.", choices=tuple(ACT_OBSERVERS)),
        Option("other_act_bits", int, 8, "Bits of activation observers that feed no quantizable layer "
               "(e.g. a residual branch before its add, the network output).", check=_check_other_bits),
        Option("weight_range", str, DEFAULT_WEIGHT_RANGE, WEIGHT_RANGE_HELP, choices=WEIGHT_RANGES),
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._model: nn.Module | None = None
        self._plan: ActivationPlan | None = None
        self._weight_fqs: dict[str, FakeQuantize] = {}
        self._act_fqs: list[tuple[FakeQuantize, OwnerKey]] = []
        self._calibration: list[Any] = []
        self._bits: dict[str, tuple[int, int]] = {}

    # -- setup ----------------------------------------------------------------------
    def prepare(self, model: nn.Module, example_input: Any, calibration_data: Iterable[Any],
                layers: Sequence[LayerSpec] | None = None) -> None:
        names = [spec.name for spec in self.use_layers(model, example_input, layers)]
        work = copy.deepcopy(model)
        if self._use_fx(work):
            self._model, self._plan, handles = prepare_probed(
                work, example_input, names, self.config["act_observer"], self.config["other_act_bits"],
                self.config["weight_range"])
            self._weight_fqs, self._act_fqs = handles.weights, handles.activations
            for group in self._plan.shared():
                log.info("torch.ao: the inputs of layers %s are quantized by observers of one QConfig; they "
                         "share the smallest of their activation bit widths.", ", ".join(group))
        else:
            self._plan = ActivationPlan.eager(names, self.config["act_observer"], self.config["other_act_bits"])
            self._plan.weight_range = self.config["weight_range"]
            uniform = {name: (8, 8) for name in names}
            self._model = prepare_qat_eager(work, self._plan.mapping(uniform), inplace=True)
            self._weight_fqs, inputs = eager_handles(self._model, names)
            self._act_fqs = [(inputs[name], self._plan.input_key[name]) for name in names]
        self._act_fqs = self._plan.apply_quantize(self.quantize, self._act_fqs)
        self._calibration = list(calibration_data)
        self.mark_prepared()
        self.set_policy({name: (8, 8) for name in names})

    def _use_fx(self, model: nn.Module) -> bool:
        mode = self.config["mode"]
        if mode == "eager":
            return False
        try:
            check_traceable(model)
        except Exception as exc:
            if mode == "fx":
                raise HaqError(f"torch.ao backend (mode=fx): torch.fx cannot trace {type(model).__name__} "
                               f"({one_line(exc)}); use mode=eager or mode=auto.") from None
            log.warning("torch.ao: FX cannot trace %s (%s); using eager mode (per-layer qconfig, weight and "
                        "input fake-quantizers).", type(model).__name__, one_line(exc))
            return False
        return True

    def _require_prepared(self) -> tuple[nn.Module, ActivationPlan]:
        self.require_prepared()
        assert self._model is not None and self._plan is not None
        return self._model, self._plan

    def bits_refusal(self, message: str, bits: Any, names: Sequence[str]) -> str:
        """Says first which width is wrong, in this backend's words; layer mismatches read as everywhere."""
        refusal = super().bits_refusal(message, bits, names)
        if isinstance(bits, Mapping) and any(layer_difference(bits, names)):
            return refusal
        return f"torch.ao backend: {_bits_problem(bits, names)}. {refusal}"

    # -- per episode ----------------------------------------------------------------
    @property
    def mode(self) -> str:
        """``fx`` or ``eager``: how the prepared model was built."""
        return self._require_prepared()[1].mode

    @property
    def plan(self) -> ActivationPlan:
        """Which QConfig builds the observer in front of each layer."""
        return self._require_prepared()[1]

    def effective_act_bits(self, bits: BitMap | None = None) -> dict[str, int]:
        """Activation bits each layer's input really gets (see :meth:`ActivationPlan.shared`)."""
        plan = self._require_prepared()[1]
        return plan.effective_act_bits(self.check_bits(bits, plan.layers) if bits is not None else self._bits)

    def _apply_policy(self, bits: dict[str, tuple[int, int]]) -> None:
        plan = self._require_prepared()[1]
        for name, fq in self._weight_fqs.items():
            set_fake_quant_range(fq, *weight_range(bits[name][0]))
        act_bits = plan.act_bits_by_key(bits)
        for fq, key in self._act_fqs:
            set_fake_quant_range(fq, *act_range(act_bits[key]))

    def _fake_quants(self) -> list[FakeQuantize]:
        return list(self._weight_fqs.values()) + [fq for fq, _ in self._act_fqs]

    def _calibrate(self) -> None:
        model, _ = self._require_prepared()
        model.eval()
        for fq in self._fake_quants():
            fq.activation_post_process.reset_min_max_vals()
            fq.enable_observer()
            fq.enable_fake_quant()
        with torch.no_grad():
            for batch in self._calibration:
                call_model(model, batch_inputs(batch))
        for fq in self._fake_quants():
            fq.disable_observer()

    def _finetune(self, train_data: Iterable[Any], steps: int, lr: float) -> None:
        """``steps`` Adam steps with cross-entropy on ``(x, y)`` batches; activation ranges stay frozen.

        Weight ranges follow the weights, BatchNorm statistics are frozen, and the
        next :meth:`set_policy` restores the weights of :meth:`prepare`.
        """
        model, _ = self._require_prepared()
        model.apply(nniqat.freeze_bn_stats)
        for fq in self._weight_fqs.values():
            fq.enable_observer()
        try:
            self.train_steps(model, train_data, steps, lr)
        finally:
            for fq in self._weight_fqs.values():
                fq.disable_observer()
            model.apply(nniqat.update_bn_stats)
            model.eval()

    @property
    def model(self) -> nn.Module:
        return self._require_prepared()[0]

    # -- export ---------------------------------------------------------------------
    def export(self, policy: Policy | BitMap, path: str | Path) -> Path:
        """Write ``qconfig_mapping.json``; without :meth:`prepare` the layers are assumed to form a chain."""
        bits = dict(getattr(policy, "bits", policy))
        if isinstance(policy, Policy) and self.layers:
            policy.check_layers(self.layers)
        shapes = dict(getattr(policy, "layers", []) or fingerprint(self.layers))
        if self._plan is not None:
            plan, graph = self._plan, ("eager" if self._plan.mode == "eager" else "traced")
        else:
            plan = ActivationPlan.chain(list(bits), self.config["act_observer"], self.config["other_act_bits"])
            plan.quantize, plan.weight_range, graph = self.quantize, self.config["weight_range"], "assumed-chain"
            log.warning("torch.ao: exporting without the model, so each layer is assumed to read the previous "
                        "layer's output; pass the model to load_qconfig_mapping(path, model, example_input) to "
                        "rebuild the mapping exactly.")
        checked = self.check_bits(bits, plan.layers)
        data = export_document(plan, checked, shapes, graph)
        return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


#: The class's name before the adapters became one package each (kept for existing imports).
TorchAoBackend = TorchAoFxBackend


@hookimpl
def haq_quant_backends() -> list[type[QuantBackend]]:
    return [TorchAoFxBackend]
