"""The ``brevitas_policy.json`` file: a HAQ policy in Brevitas' own terms.

Plain JSON, no pickles.  Schema (``format_version`` 1)::

    {
      "format": "haq_plugin.brevitas_policy",
      "format_version": 1,
      "brevitas_version": "0.13.4",
      "example_input_shape": [1, 1, 8, 8],      # input used for the layer fingerprint
      "quantizers": {                             # Brevitas quantizer classes (import paths)
        "weight": "haq_plugin.adapters.brevitas.clipped_scales.ClippedInt8WeightPerChannelFloat",
        "weight_range": "mse",                    # or "minmax" (then brevitas.quant.Int8WeightPerChannelFloat);
                                                  # absent in older files: clip_weights says, else minmax
        "clip_weights": true,                     # weight_range == "mse", for older readers
        "signed_input": "brevitas.quant.scaled_int.Int8ActPerTensorFloat",
        "unsigned_input": "brevitas.quant.scaled_int.Uint8ActPerTensorFloat",
        "bias": null,                             # biases stay in floating point
        "act_range": "percentile",                # or "mse" (then the ...MSE input quantizers)
        "act_percentile": 99.99
      },
      "layers": [                                 # one per quantized layer, execution order
        {"name": "features.0.0", "quant_layer": "QuantConv2d",
         "weight_bit_width": 4, "input_bit_width": 8, "input_signed": false}, ...
      ],
      "policy": { ... haq_plugin.api.policy.Policy.to_dict() ... }
    }

``layers`` repeats the policy's bits under Brevitas' keyword names
(``weight_bit_width``, ``input_bit_width``) and adds what the policy does not
carry: the input quantizer's sign, found on the calibration data during the
search.  Reading checks that both agree, so a hand edit of one but not the
other is caught.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import brevitas

from haq_plugin.api.errors import HaqError
from haq_plugin.storage.files import read_json, require_fields, write_text_atomic
from haq_plugin.api.policy import Policy

from haq_plugin.adapters.brevitas.quantizers import QUANT_LAYER_CLASSES, input_quant, weight_quant
from haq_plugin.adapters.brevitas.settings import LayerQuant, QuantSettings, alias_weight_range

FORMAT = "haq_plugin.brevitas_policy"
FORMAT_VERSION = 1


@dataclass
class BrevitasPolicyFile:
    """The parsed contents of a ``brevitas_policy.json``."""

    policy: Policy
    plan: dict[str, LayerQuant]
    settings: QuantSettings
    example_input_shape: tuple[int, ...]


def _class_path(cls: type | None) -> str | None:
    return None if cls is None else f"{cls.__module__}.{cls.__qualname__}"


def policy_file_dict(policy: Policy, plan: Mapping[str, LayerQuant], settings: QuantSettings,
                     quant_layer_names: Mapping[str, str], example_input_shape: Sequence[int]) -> dict[str, Any]:
    """The JSON object written by ``BrevitasBackend.export``."""
    layers = [{"name": name, "quant_layer": quant_layer_names[name],
               "weight_bit_width": plan[name].weight_bits, "input_bit_width": plan[name].input_bits,
               "input_signed": plan[name].input_signed} for name, _ in policy.layers]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "brevitas_version": brevitas.__version__,
        "example_input_shape": [int(s) for s in example_input_shape],
        "quantizers": {"weight": _class_path(weight_quant(settings)), "weight_range": settings.weight_range,
                       "clip_weights": settings.clip_weights,
                       "signed_input": _class_path(input_quant(settings, signed=True)),
                       "unsigned_input": _class_path(input_quant(settings, signed=False)),
                       "bias": None, "act_range": settings.act_range, "act_percentile": settings.act_percentile,
                       "quantize": settings.quantize},
        "layers": layers,
        "policy": policy.to_dict(),
    }


def write_policy_file(path: Path, data: dict[str, Any]) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def read_policy_file(path: str | Path) -> BrevitasPolicyFile:
    """Parse and cross-check a ``brevitas_policy.json``; every problem is a :class:`HaqError`."""
    path = Path(path)
    data = read_json(path, "Brevitas policy file")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise HaqError(f"{path} is not a Brevitas policy file (field 'format' must be {FORMAT!r}); "
                       "write one with the brevitas backend's export().")
    if data.get("format_version") != FORMAT_VERSION:
        raise HaqError(f"{path}: format_version {data.get('format_version')!r} is not supported; this "
                       f"haq-plugin reads format_version {FORMAT_VERSION}.")
    policy = Policy.from_dict(data.get("policy"), source=f"{path} (field 'policy')")
    plan = _read_layers(path, data.get("layers"), policy)
    settings = _read_settings(path, data.get("quantizers"))
    shape = data.get("example_input_shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(s, int) and s > 0 for s in shape):
        raise HaqError(f"{path}: 'example_input_shape' must be a list of positive integers, got {shape!r}.")
    return BrevitasPolicyFile(policy=policy, plan=plan, settings=settings, example_input_shape=tuple(shape))


def _read_settings(path: Path, quantizers: Any) -> QuantSettings:
    if not isinstance(quantizers, dict) or "act_range" not in quantizers:
        raise HaqError(f"{path}: field 'quantizers' must be an object with 'act_range'.")
    percentile = quantizers.get("act_percentile", QuantSettings.act_percentile)
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)):
        raise HaqError(f"{path}: 'quantizers.act_percentile' must be a number, got {percentile!r}.")
    try:
        return QuantSettings(act_range=quantizers["act_range"], act_percentile=float(percentile),
                             quantize=quantizers.get("quantize", QuantSettings.quantize),
                             weight_range=_stored_weight_range(quantizers))
    except HaqError as exc:
        raise HaqError(f"{path}: field 'quantizers': {exc}") from None


def _stored_weight_range(quantizers: Mapping[str, Any]) -> str:
    """``weight_range``, or what an older file's ``clip_weights`` says (minmax when it says nothing)."""
    clip = quantizers.get("clip_weights")
    if clip is not None and not isinstance(clip, bool):
        raise HaqError(f"'clip_weights' must be true or false, got {clip!r}.")
    return alias_weight_range(clip, quantizers.get("weight_range")) or "minmax"


def _read_layers(path: Path, entries: Any, policy: Policy) -> dict[str, LayerQuant]:
    if not isinstance(entries, list):
        raise HaqError(f"{path}: field 'layers' must be a list.")
    known_layers = {cls.__name__ for cls in QUANT_LAYER_CLASSES.values()}
    plan: dict[str, LayerQuant] = {}
    for i, entry in enumerate(entries):
        where = f"{path}: layers[{i}]"
        require_fields(entry, ("name", "weight_bit_width", "input_bit_width", "input_signed"), where)
        name = entry["name"]
        if name not in policy.bits:
            raise HaqError(f"{where}: layer '{name}' is not in the file's policy.")
        if "quant_layer" in entry and entry["quant_layer"] not in known_layers:
            raise HaqError(f"{where}: quant_layer {entry['quant_layer']!r} is not one of "
                           f"{', '.join(sorted(known_layers))}.")
        if not isinstance(entry["input_signed"], bool):
            raise HaqError(f"{where}: 'input_signed' must be true or false.")
        pair = (entry["weight_bit_width"], entry["input_bit_width"])
        if pair != policy.bits[name]:
            raise HaqError(f"{where}: bit widths {pair} differ from the policy's {policy.bits[name]} for layer "
                           f"'{name}'; the file was edited inconsistently.")
        plan[name] = LayerQuant(weight_bits=pair[0], input_bits=pair[1], input_signed=entry["input_signed"])
    missing = [name for name in policy.bits if name not in plan]
    if missing:
        raise HaqError(f"{path}: field 'layers' lacks layer(s) {', '.join(missing)} of the policy.")
    return plan
