"""The ``groupwise_policy.json`` file, and applying it: in torchao's terms or as rounded weights.

The file holds, per layer, the weight bits and the weight matrix's shape
(``[out, in]``, a convolution's inputs flattened), and once the grid
(``group_size``, ``zero_point``, ``weight_range``) and the average bits per
weight, scales included::

    {"format": "haq-plugin groupwise policy", "schema_version": 1,
     "grid": {"group_size": 64, "zero_point": "float", "weight_range": "minmax", "scale_bits": 32},
     "rounding": "nearest", "bits_per_weight": 3.5,
     "layers": [{"name": "model.layers.0.self_attn.q_proj", "shape": [576, 576], "weight_bits": 3}, ...]}

:func:`load_quantize_config` gives torchao's recipe for ``quantize_``;
:func:`apply_policy` writes the searched weights into a model (the exact
values the search evaluated, for either grid).  ``"rounding": "gptq"`` weights
depend on calibration inputs as well, so applying them takes the calibration
batches; files written before the field existed were rounded to nearest.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from haq_plugin import HaqError
from haq_plugin.adapters.groupwise.gptq import ROUNDINGS, gptq_levels, inverse_factor
from haq_plugin.adapters.groupwise.grid import GROUP_SIZES, SCALE_BITS, WEIGHT_RANGES, ZERO_POINTS, GroupGrid
from haq_plugin.adapters.groupwise.hessians import gptq_hessians
from haq_plugin.adapters.groupwise.weights import GPTQ_BELOW, rounded_weight
from haq_plugin.storage.files import read_versioned_json, require_fields, write_text_atomic

FORMAT = "haq-plugin groupwise policy"
SCHEMA_VERSION = 1
SUPPORTED_BITS = tuple(range(2, 9))
log = logging.getLogger("haq_plugin.adapters.groupwise")


@dataclass(frozen=True)
class GroupwisePolicy:
    """What a ``groupwise_policy.json`` holds: the grid, and per layer its weight bits and shape."""

    grid: GroupGrid
    bits: dict[str, int]
    shapes: dict[str, tuple[int, int]]
    rounding: str = "nearest"

    def bits_per_weight(self) -> float:
        """Stored bits over weights, scales and zero points included."""
        stored = sum(self.grid.storage_bits(out, inp, self.bits[name]) for name, (out, inp) in self.shapes.items())
        return stored / sum(out * inp for out, inp in self.shapes.values())


def write_policy_file(path: Path, bits: Mapping[str, int], shapes: Mapping[str, tuple[int, int]],
                      grid: GroupGrid, rounding: str = "nearest") -> Path:
    """Write the file for ``bits`` (layer -> weight bits) atomically; returns its path."""
    policy = GroupwisePolicy(grid, dict(bits), {name: tuple(shapes[name]) for name in bits})  # type: ignore[misc]
    document = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION,
        "grid": {**asdict(grid), "scale_bits": SCALE_BITS}, "rounding": rounding,
        "bits_per_weight": round(policy.bits_per_weight(), 6),
        "layers": [{"name": name, "shape": list(policy.shapes[name]), "weight_bits": int(b)}
                   for name, b in bits.items()],
    }
    return write_text_atomic(path, json.dumps(document, indent=2) + "\n")


def read_policy_file(path: str | Path) -> GroupwisePolicy:
    """Read and check a file written by :func:`write_policy_file`; :class:`HaqError` says what is wrong."""
    data = read_versioned_json(Path(path), "groupwise policy file", "groupwise policy file", FORMAT, SCHEMA_VERSION)
    require_fields(data, ("grid", "layers"), f"{path}")
    grid_data = data["grid"]
    require_fields(grid_data, ("group_size", "zero_point", "weight_range"), f"{path}: grid")
    checks = (("group_size", GROUP_SIZES), ("zero_point", ZERO_POINTS), ("weight_range", WEIGHT_RANGES))
    for key, allowed in checks:
        if grid_data[key] not in allowed:
            raise HaqError(f"{path}: grid {key} {grid_data[key]!r} is not one of {', '.join(map(str, allowed))}.")
    grid = GroupGrid(int(grid_data["group_size"]), str(grid_data["zero_point"]), str(grid_data["weight_range"]))
    rounding = data.get("rounding", "nearest")
    if rounding not in ROUNDINGS:
        raise HaqError(f"{path}: rounding {rounding!r} is not one of {', '.join(ROUNDINGS)}.")
    if not isinstance(data["layers"], list) or not data["layers"]:
        raise HaqError(f"{path}: 'layers' must be a non-empty list of layer entries.")
    bits, shapes = {}, {}
    for entry in data["layers"]:
        require_fields(entry, ("name", "shape", "weight_bits"), f"{path}: layer entry")
        name, width = str(entry["name"]), entry["weight_bits"]
        if isinstance(width, bool) or width not in SUPPORTED_BITS:
            raise HaqError(f"{path}: layer '{name}' has weight_bits {width!r}; the groupwise backend takes "
                           f"{SUPPORTED_BITS[0]} to {SUPPORTED_BITS[-1]}.")
        bits[name], shapes[name] = int(width), _shape(entry["shape"], name, path)
    return GroupwisePolicy(grid, bits, shapes, str(rounding))


def _shape(value: Any, name: str, path: str | Path) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)):
        raise HaqError(f"{path}: layer '{name}' shape must be [out, in] positive integers, got {value!r}.")
    return int(value[0]), int(value[1])


def _layers_of(model: nn.Module, policy: GroupwisePolicy, path: str | Path) -> dict[str, nn.Module]:
    """The model's module for every layer of the file; refuses missing layers and other shapes."""
    modules = dict(model.named_modules())
    missing = [name for name in policy.bits if name not in modules or not hasattr(modules[name], "weight")]
    if missing:
        raise HaqError(f"{path}: the model has no layer '{missing[0]}' with a weight ({len(missing)} of "
                       f"{len(policy.bits)} layers of the file are missing from the model).")
    for name, (out, inp) in policy.shapes.items():
        weight = modules[name].weight
        if (weight.shape[0], weight[0].numel()) != (out, inp):
            raise HaqError(f"{path}: layer '{name}' is [{out}, {inp}] in the file but "
                           f"[{weight.shape[0]}, {weight[0].numel()}] in the model; export the policy again "
                           "from a search on this model.")
    return {name: modules[name] for name in policy.bits}


def apply_policy(model: nn.Module, path: str | Path, calibration_data: Iterable[Any] | None = None) -> nn.Module:
    """Round ``model``'s weights in place to the file's bits and grid: the weights the search evaluated.

    A ``rounding: gptq`` file needs ``calibration_data`` (batches of model inputs):
    the search's own calibration batches give the very weights it measured.
    """
    policy = read_policy_file(path)
    layers = _layers_of(model, policy, path)
    hessians = _gptq_hessians(model, policy, path, calibration_data) if policy.rounding == "gptq" else None
    with torch.no_grad():
        for name, module in layers.items():
            weight = module.weight
            if hessians is None or policy.bits[name] >= GPTQ_BELOW:
                rounded = rounded_weight(weight.data.clone(), policy.bits[name], policy.grid)
            else:
                upper = inverse_factor(hessians[name])
                rounded = gptq_levels(weight.data, upper, policy.bits[name], policy.grid).values(weight.shape)
            weight.data.copy_(rounded)
    return model


def _gptq_hessians(model: nn.Module, policy: GroupwisePolicy, path: str | Path,
                   calibration_data: Iterable[Any] | None) -> dict[str, torch.Tensor]:
    if calibration_data is None:
        raise HaqError(f"{path} was searched with rounding=gptq, whose weights depend on calibration inputs: pass "
                       "calibration_data= (the search's calibration batches give the searched weights).")
    return gptq_hessians(model, list(policy.bits), calibration_data)


def load_quantize_config(path: str | Path, model: nn.Module | None = None) -> Any:
    """torchao's ``FqnToConfig``: ``IntxWeightOnlyConfig(torch.intN, PerGroup(g), ASYMMETRIC)`` per layer.

    Apply it with ``torchao.quantization.quantize_(model, config, filter_fn=None)``.
    torchao's grid has an integer zero point: a policy searched with
    ``zero_point=integer`` gives exactly the searched weights; one searched with
    the float zero point (the default) gives torchao's rounding of the same bits,
    which this function says in a warning.  With ``model`` the layer names and
    shapes are checked first, and a module that shares a layer's weight (an
    embedding tied to ``lm_head``) gets the layer's config too: the search
    rounded that one tensor for both.
    """
    from torchao.quantization import FqnToConfig, IntxWeightOnlyConfig, PerAxis, PerGroup
    from torchao.quantization.quant_primitives import MappingType

    policy = read_policy_file(path)
    tied = _tied_modules(model, _layers_of(model, policy, path)) if model is not None else {}
    if policy.grid.zero_point != "integer":
        log.warning("%s was searched with float zero points (llama.cpp's grid); torchao's IntxWeightOnlyConfig "
                    "uses integer zero points, so its weights differ from the searched ones. Search with "
                    "--backend-option zero_point=integer for an exact torchao recipe.", path)
    if policy.rounding == "gptq":
        log.warning("%s was searched with GPTQ rounding; torchao's IntxWeightOnlyConfig rounds to nearest, so its "
                    "weights differ from the searched ones (apply_policy with calibration_data, or --format gguf, "
                    "keeps them).", path)
    if policy.grid.weight_range != "minmax":
        log.warning("%s was searched with MSE-clipped ranges; torchao's recipe uses each group's full range.", path)
    granularity = PerAxis(0) if policy.grid.group_size == 0 else PerGroup(policy.grid.group_size)
    configs = {name: IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{bits}"), granularity=granularity,
                                          mapping_type=MappingType.ASYMMETRIC)
               for name, bits in policy.bits.items()}
    configs.update({other: configs[name] for other, name in tied.items() if other not in configs})
    return FqnToConfig(fqn_to_config=configs)


def _tied_modules(model: nn.Module, layers: Mapping[str, nn.Module]) -> dict[str, str]:
    """``{module: layer}`` for each module outside ``layers`` whose weight is a layer's weight."""
    owner = {id(module.weight): name for name, module in layers.items()}
    return {name: owner[id(module.weight)] for name, module in model.named_modules()
            if name not in layers and isinstance(getattr(module, "weight", None), torch.Tensor)
            and id(module.weight) in owner}
