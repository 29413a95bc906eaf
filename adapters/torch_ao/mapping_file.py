"""The ``qconfig_mapping.json`` file of the torch.ao backend: the document written, and read back.

Export file (``schema_version`` 1)::

    {
      "format": "haq-plugin torch.ao QConfigMapping",
      "schema_version": 1,
      "mode": "fx" | "eager",
      "graph": "traced" | "assumed-chain" | "eager",
      "activation_observer": "minmax" | "moving_average",
      "other_activation_bits": 8,
      "quantize": "weights+activations" | "weights",
      "weight_range": "mse" | "minmax",
      "layers": [{"name": "features.0.0", "shape": "conv:...", "weight_bits": 8,
                  "activation_bits": 8, "effective_activation_bits": 8}, ...],
      "shared_activation_observers": [["features.0.0", "features.1.conv.0.0"], ...],
      "qconfig_mapping": {
        "global": QCONFIG,
        "module_name": [{"name": "features.0.0", "qconfig": QCONFIG}, ...],
        "module_name_object_type_order": [{"module_name": "features.1", "object_type": "_operator.add",
                                           "index": 0, "qconfig": QCONFIG}, ...]
      }
    }

where ``QCONFIG`` is ``{"activation": CTOR, "weight": CTOR}`` and ``CTOR`` is
described in :mod:`haq_plugin.adapters.torch_ao.mapping_json`.  ``graph`` says how
the producers were found: ``traced`` from the model (exact); ``assumed-chain``
when the policy was exported without its model (each layer is assumed to read
the previous layer's output; give the model to ``load_qconfig_mapping`` to
rebuild it exactly); ``eager`` for eager mode, where each entry's activation
describes the layer's *input* and the file is applied with ``prepare_qat_eager``.

``weight_range`` is the backend option the policy was measured with; the
weight observer class in each ``QCONFIG`` says the same
(``FullRangeSymmetricObserver`` clips, ``MinMaxSymmetricObserver`` does not),
and a mapping rebuilt from the bits uses it.  Files written before the option
existed lack the field and were clipped: they read as ``mse``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from haq_plugin.api.errors import HaqError
from haq_plugin.storage.files import read_versioned_json

from haq_plugin.adapters.common.weight_ranges import WEIGHT_RANGES
from haq_plugin.adapters.torch_ao.mapping_json import mapping_to_json
from haq_plugin.adapters.torch_ao.plan import ActivationPlan
from haq_plugin.adapters.torch_ao.qconfig import ACT_OBSERVERS

FORMAT = "haq-plugin torch.ao QConfigMapping"
SCHEMA_VERSION = 1
#: What files without a ``weight_range`` field were measured with.
UNRECORDED_WEIGHT_RANGE = "mse"
BitMap = Mapping[str, tuple[int, int]]


def export_document(plan: ActivationPlan, bits: BitMap, shapes: Mapping[str, str], graph: str) -> dict[str, Any]:
    """The JSON document of the module docstring for ``plan`` and ``bits``."""
    mapping = plan.mapping(bits)
    effective = plan.effective_act_bits(bits)
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "mode": plan.mode,
        "graph": graph,
        "activation_observer": plan.observer,
        "other_activation_bits": plan.other_act_bits,
        "quantize": plan.quantize,
        "weight_range": plan.weight_range,
        "layers": [{"name": name, "shape": shapes.get(name, ""), "weight_bits": bits[name][0],
                    "activation_bits": bits[name][1], "effective_activation_bits": effective[name]}
                   for name in plan.layers],
        "shared_activation_observers": plan.shared(),
        "qconfig_mapping": mapping_to_json(mapping),
    }


def read_export(path: Path) -> dict[str, Any]:
    """The checked document of ``path``; :class:`HaqError` names a missing field."""
    data = read_versioned_json(path, "QConfigMapping file", "torch.ao QConfigMapping file", FORMAT, SCHEMA_VERSION)
    for key in ("mode", "layers", "qconfig_mapping"):
        if key not in data:
            raise HaqError(f"{path}: field '{key}' is missing.")
    return data


def stored_observer(data: Mapping[str, Any]) -> str:
    """The file's activation observer (``minmax`` when it names none)."""
    observer = data.get("activation_observer", "minmax")
    if observer not in ACT_OBSERVERS:
        raise HaqError(f"qconfig mapping file: activation_observer {observer!r} is unknown.")
    return observer


def stored_weight_range(data: Mapping[str, Any]) -> str:
    """The file's ``weight_range`` (``mse`` for files written before it was recorded)."""
    value = data.get("weight_range", UNRECORDED_WEIGHT_RANGE)
    if value not in WEIGHT_RANGES:
        raise HaqError(f"qconfig mapping file: weight_range {value!r} is unknown; use one of "
                       f"{', '.join(WEIGHT_RANGES)}.")
    return value
