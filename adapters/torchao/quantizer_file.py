"""The ``torchao_quantizer.json`` file: writing it and reading it back (format in ``torchao.py``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from haq_plugin.api.bits import check_width
from haq_plugin.api.errors import HaqError
from haq_plugin.storage.files import read_versioned_json, require_fields, write_text_atomic
from haq_plugin.api.quantize_mode import QUANTIZE_MODES, WEIGHTS_AND_ACTIVATIONS
from haq_plugin.adapters.common.weight_ranges import WEIGHT_RANGES

FORMAT = "haq-plugin torchao PT2E quantizer"
SCHEMA_VERSION = 1
SUPPORTED_BITS = tuple(range(2, 9))
#: What files without a ``weight_range`` field were measured with (the backend had no clipping then).
UNRECORDED_WEIGHT_RANGE = "minmax"


def export_document(bits: Mapping[str, tuple[int, int]], shapes: Mapping[str, str], quantize: str,
                    weight_range: str) -> dict:
    """The JSON document for ``bits``; activation bits are ``null`` when only weights are quantized.

    ``weight_range`` is the backend option the policy was measured with; the loader rebuilds it.
    """
    from haq_plugin.adapters.torchao.quantizer import SpecFields  # imports torchao: only when writing

    layers = []
    for name, (weight_bits, act_bits) in bits.items():
        act = act_bits if quantize != "weights" else None
        layers.append({"name": name, "shape": shapes.get(name, ""), "weight_bits": weight_bits,
                       "activation_bits": act, "weight": asdict(SpecFields.weight(weight_bits)),
                       "activation": None if act is None else asdict(SpecFields.activation(act))})
    return {"format": FORMAT, "schema_version": SCHEMA_VERSION, "quantize": quantize, "weight_range": weight_range,
            "layers": layers}


def write_document(path: str | Path, data: dict) -> Path:
    return write_text_atomic(Path(path), json.dumps(data, indent=2) + "\n")


@dataclass(frozen=True)
class QuantizerFile:
    """What a ``torchao_quantizer.json`` holds: per-layer bits (activation None: float), shapes, mode, ranges."""

    bits: dict[str, tuple[int, int | None]]
    shapes: dict[str, str]
    quantize: str
    weight_range: str = UNRECORDED_WEIGHT_RANGE


def read_quantizer_file(path: str | Path) -> QuantizerFile:
    """Read and check an exported file; :class:`HaqError` says what is wrong with it."""
    data = read_versioned_json(Path(path), "torchao quantizer file", "torchao quantizer file", FORMAT,
                               SCHEMA_VERSION)
    quantize = data.get("quantize", WEIGHTS_AND_ACTIVATIONS)
    if quantize not in QUANTIZE_MODES:
        raise HaqError(f"{path}: quantize {quantize!r} is unknown; use one of {', '.join(QUANTIZE_MODES)}.")
    weight_range = data.get("weight_range", UNRECORDED_WEIGHT_RANGE)
    if weight_range not in WEIGHT_RANGES:
        raise HaqError(f"{path}: weight_range {weight_range!r} is unknown; use one of {', '.join(WEIGHT_RANGES)}.")
    if not isinstance(data.get("layers"), list) or not data["layers"]:
        raise HaqError(f"{path}: 'layers' must be a non-empty list.")
    bits = {_entry_name(entry, path): _entry_bits(entry, path, quantize) for entry in data["layers"]}
    shapes = {str(entry["name"]): str(entry.get("shape", "")) for entry in data["layers"]}
    return QuantizerFile(bits, shapes, quantize, weight_range)


def _entry_name(entry: Any, path: str | Path) -> str:
    require_fields(entry, ("name", "weight_bits", "activation_bits"), f"{path}: layer entry")
    return str(entry["name"])


def _entry_bits(entry: Mapping[str, Any], path: str | Path, quantize: str) -> tuple[int, int | None]:
    where = f"{path}: layer '{entry['name']}'"
    weight = check_width(entry["weight_bits"], f"{where} weight_bits", SUPPORTED_BITS, "by backend 'torchao'")
    if quantize == "weights" or entry["activation_bits"] is None:
        return weight, None
    return weight, check_width(entry["activation_bits"], f"{where} activation_bits", SUPPORTED_BITS,
                               "by backend 'torchao'")
