"""Per-layer bit policies and their JSON file format.

A :class:`Policy` maps each quantizable layer (by module name) to a pair
``(weight_bits, activation_bits)``; the activation bits are those of the layer's
*input*, as in HAQ.  It carries the layer fingerprint (names and shapes of the
model it was searched on) so that applying it to a different model fails loudly,
and provenance (how and where it was found) so that a result can be reproduced.

File format (``schema_version`` 1)::

    {
      "schema_version": 1,
      "layers": [{"name": "features.0.0", "shape": "conv:3->32:...", "weight_bits": 8,
                  "activation_bits": 8}, ...],
      "provenance": {"haq_plugin_version": "...", "hardware": {...}, ...}
    }
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from haq_plugin.api.bits import (MAX_BITS, MIN_BITS, BitPair, check_bit_map, check_pair, check_width,
                                 difference_message, layer_differences)
from haq_plugin.api.errors import HaqError
from haq_plugin.storage.files import read_json, require_fields, write_text_atomic
from haq_plugin.api.layers import LayerSpec

SCHEMA_VERSION = 1
__all__ = ["MAX_BITS", "MIN_BITS", "SCHEMA_VERSION", "BitPair", "Policy", "check_layer_shapes", "fingerprint"]


@dataclass
class Policy:
    """Weight and activation bits per layer, with the fingerprint and provenance."""

    bits: dict[str, BitPair]
    layers: list[tuple[str, str]]
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [name for name, _ in self.layers]
        if list(self.bits) != names:
            missing = [n for n in names if n not in self.bits]
            extra = [n for n in self.bits if n not in names]
            raise HaqError(difference_message("Policy bits do not match its layers", missing, extra))
        self.bits = check_bit_map(self.bits, names, who="policy")

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_bits(cls, layers: Sequence[LayerSpec], bits: Mapping[str, BitPair] | Sequence[BitPair],
                  **provenance: Any) -> "Policy":
        """A policy for ``layers`` from a name->bits mapping or a list in layer order."""
        if isinstance(bits, Mapping):
            given = {name: check_pair(pair, f"layer '{name}'") for name, pair in bits.items()}
            ordered = {}
            for layer in layers:
                if layer.name not in given:
                    raise HaqError(f"Policy: no bits given for layer '{layer.name}'.")
                ordered[layer.name] = given.pop(layer.name)
            if given:
                raise HaqError(f"Policy: bits given for unknown layer(s) {', '.join(given)}.")
        else:
            if len(bits) != len(layers):
                raise HaqError(f"Policy: {len(bits)} bit pairs given for {len(layers)} layers.")
            ordered = {layer.name: check_pair(p, f"layer '{layer.name}'") for layer, p in zip(layers, bits)}
        return cls(bits=ordered, layers=fingerprint(layers), provenance=dict(provenance))

    @classmethod
    def uniform(cls, layers: Sequence[LayerSpec], weight_bits: int, act_bits: int,
                **provenance: Any) -> "Policy":
        """Every layer at the same bits."""
        return cls.from_bits(layers, [(weight_bits, act_bits)] * len(layers), **provenance)

    # -- checks -----------------------------------------------------------------------
    def check_layers(self, layers: Sequence[LayerSpec]) -> None:
        """Raise :class:`HaqError` listing every difference between the policy's layers and ``layers``."""
        check_layer_shapes(self.layers, layers, self._searched_on())

    def _searched_on(self) -> str:
        """`` (--model X)`` from the provenance, with the hint to pass it, or nothing when unrecorded."""
        task = self.provenance.get("task")
        model = task.get("model") if isinstance(task, dict) else None
        if not model:
            return ""
        shape = task.get("input_shape")
        flags = f"--model {model}" + (f" --input-shape {shape}" if shape else "")
        return f" ({flags}); pass {flags} to use it"

    def as_list(self) -> list[BitPair]:
        """Bits in layer order."""
        return [self.bits[name] for name, _ in self.layers]

    # -- serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "layers": [{"name": name, "shape": shape, "weight_bits": self.bits[name][0],
                        "activation_bits": self.bits[name][1]} for name, shape in self.layers],
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "policy") -> "Policy":
        if not isinstance(data, dict):
            raise HaqError(f"{source}: expected a JSON object at the top level.")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise HaqError(f"{source}: field 'schema_version' is {version!r}; this haq-plugin reads "
                           f"schema_version {SCHEMA_VERSION}.")
        entries = data.get("layers")
        if not isinstance(entries, list) or not entries:
            raise HaqError(f"{source}: field 'layers' must be a non-empty list.")
        bits: dict[str, BitPair] = {}
        layers: list[tuple[str, str]] = []
        for i, entry in enumerate(entries):
            where = f"{source}: layers[{i}]"
            require_fields(entry, ("name", "shape", "weight_bits", "activation_bits"), where)
            name = str(entry["name"])
            if name in bits:
                raise HaqError(f"{where}: layer '{name}' appears twice.")
            bits[name] = (check_width(entry["weight_bits"], f"{where}.weight_bits"),
                          check_width(entry["activation_bits"], f"{where}.activation_bits"))
            layers.append((name, str(entry["shape"])))
        provenance = data.get("provenance", {})
        if not isinstance(provenance, dict):
            raise HaqError(f"{source}: field 'provenance' must be an object.")
        return cls(bits=bits, layers=layers, provenance=provenance)

    def save(self, path: str | Path) -> Path:
        """Write the policy as JSON, atomically (a crash never leaves half a file)."""
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Policy":
        return cls.from_dict(read_json(path, "Policy file"), source=str(path))


def fingerprint(layers: Iterable[LayerSpec]) -> list[tuple[str, str]]:
    """The (name, shape) list that identifies a model's quantizable layers."""
    return [(spec.name, spec.shape_key()) for spec in layers]



def check_layer_shapes(stored: Mapping[str, str] | Iterable[tuple[str, str]], layers: Sequence[LayerSpec],
                       searched_on: str = "") -> None:
    """Refuse a policy whose stored (name, shape key) layers are not exactly the model's ``layers``.

    Names alone are not enough: a policy of an older, wider version of a model
    has the same names and other shapes, and its bits were chosen (and costed)
    for layers this model does not have.  Every loader and ``export`` calls
    this, so the refusal reads the same everywhere.  A stored shape of ``""``
    (a file written from a bare bit map) was not recorded: only its name is
    compared.  ``searched_on`` is appended to say which model it came from.
    """
    mine = dict(stored)
    theirs = {spec.name: spec.shape_key() for spec in layers}
    missing = [name for name in theirs if name not in mine]
    unknown = [name for name in mine if name not in theirs]
    changed = [f"'{name}' (policy {shape}, model {theirs[name]})" for name, shape in mine.items()
               if shape and name in theirs and shape != theirs[name]]
    if missing or unknown or changed:
        hint = searched_on or "; load it with that model, or search again on this one"
        differences = layer_differences(missing, unknown, changed)
        raise HaqError(f"The policy's layers do not match the model's ({differences}): it was searched on a "
                       f"different model{hint}.")
