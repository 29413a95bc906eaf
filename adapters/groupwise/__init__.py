"""The ``groupwise`` backend: weight-only quantization with a scale and zero point per group of weights.

This is how language models are quantized for CPUs and laptops (llama.cpp's
Q4_1 and K-quants, torchao's ``IntxWeightOnlyConfig``, GPTQ/AWQ checkpoints):
activations stay in floating point, and every weight row is cut into groups of
32 or 64 weights, each with its own range.  The policy's weight bits pick the
integer width per layer; its activation bits are not used.  The grid is
described in :mod:`haq_plugin.adapters.groupwise.grid`.

Exports (``haq-plugin export --backend groupwise``) are ``groupwise_policy.json``,
the per-tensor bits with the grid (:mod:`haq_plugin.adapters.groupwise.policy_file`);
:func:`load_quantize_config` turns that file into torchao's ``FqnToConfig`` recipe
and :func:`apply_policy` writes the fake-quantized weights into a model.  With
``--format gguf`` the export is a GGUF file for llama.cpp and its ``llama-quantize``
recipe (:mod:`haq_plugin.adapters.groupwise.gguf_export`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar, Iterable, Sequence

from torch import nn

from haq_plugin import WEIGHTS_ONLY, HaqError, LayerSpec, Option, Policy, QuantBackend, hookimpl
from haq_plugin.adapters.groupwise.gptq import ROUNDINGS
from haq_plugin.adapters.groupwise.hessians import gptq_hessians
from haq_plugin.adapters.groupwise.grid import GROUP_SIZES, WEIGHT_RANGES, ZERO_POINTS, GroupGrid
from haq_plugin.adapters.groupwise.policy_file import apply_policy, load_quantize_config, write_policy_file
from haq_plugin.adapters.groupwise.weights import GroupQuantizedWeights

GGUF_TYPES = ("exact", "k")  # export_gguf's type families: the gguf package's exact types, or llama.cpp's K types

__all__ = ["GroupwiseBackend", "apply_policy", "load_quantize_config"]



class GroupwiseBackend(QuantBackend):
    """Weight-only, group-wise, round-to-nearest fake quantization of every layer's weight matrix."""

    name: ClassVar[str] = "groupwise"
    description: ClassVar[str] = ("Weight-only group-wise quantization (a float16 scale and zero point per group of "
                                  "32/64 weights), as llama.cpp and torchao quantize language models")
    export_filename: ClassVar[str] = "groupwise_policy.json"
    bits_help: ClassVar[str] = "The groupwise backend quantizes weights to 2 to 8 bits."
    #: weights only: activations stay in floating point (a latency search runs weight-only, with a note)
    quantize_modes: ClassVar[tuple[str, ...]] = (WEIGHTS_ONLY,)
    options: ClassVar[tuple[Option, ...]] = (
        Option("group_size", int, 64, "weights per scale group along each row (32 and 64 are llama.cpp's and "
               "torchao's usual sizes; 0: one group per output channel)", choices=GROUP_SIZES),
        Option("zero_point", str, "float", "'float': float16 minimum per group (llama.cpp Q4_1); 'integer': "
               "torchao's int8 zero point (what its IntxWeightOnlyConfig computes)", choices=ZERO_POINTS),
        Option("cache_mb", int, 1024, "rounded weights kept for reuse, in MiB (a search revisits the same layer "
               "and width often; 0 rounds every time)", minimum=0),
        Option("weight_range", str, "minmax", "'minmax': each group's full range; 'mse': the range narrowed to the "
               "smallest squared error (float zero point only)", choices=WEIGHT_RANGES),
        Option("rounding", str, "nearest", "'nearest': each weight to its nearest level; 'gptq': GPTQ, each "
               "column's error moved onto the next ones by the layer's calibration inputs (linear layers, float "
               "zero point, widths below 8; computed once per layer and width)", choices=ROUNDINGS),
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.config["weight_range"] == "mse" and self.config["zero_point"] == "integer":
            raise HaqError("backend 'groupwise': weight_range=mse needs zero_point=float (torchao's integer grid "
                           "chooses its own ranges); drop one of the two options.")
        if self.config["rounding"] == "gptq" and self.config["zero_point"] == "integer":
            raise HaqError("backend 'groupwise': rounding=gptq needs zero_point=float (torchao's integer grid rounds "
                           "to nearest inside torchao); drop one of the two options.")
        self.grid = GroupGrid(self.config["group_size"], self.config["zero_point"], self.config["weight_range"])
        self._model: nn.Module | None = None
        self._weights: GroupQuantizedWeights | None = None

    def weight_storage_bits(self, layer: LayerSpec, bits: int) -> int:
        """Stored bits of ``layer``'s weights: the integers plus one float16 scale and zero per group."""
        return self.grid.storage_bits(layer.out_channels, layer.params // layer.out_channels, bits)

    def check_layers(self, layers: Sequence[LayerSpec]) -> None:
        """Refuse a group size that does not divide every layer's row length, naming sizes that would."""
        rows = {layer.name: layer.params // layer.out_channels for layer in layers}
        bad = [name for name, length in rows.items() if not self.grid.divides(length)]
        if not bad:
            return
        fits = [g for g in (16, 32, 64, 128, 256) if all(length % g == 0 for length in rows.values())]
        hint = f"group sizes that divide every layer: {', '.join(map(str, fits))}, or 0" if fits else \
            "no group size divides every layer: use group_size=0 (one group per output channel)"
        raise HaqError(f"backend 'groupwise': group_size={self.grid.group_size} does not divide the row length of "
                       f"{len(bad)} of {len(rows)} layers (e.g. '{bad[0]}', {rows[bad[0]]} weights per row); {hint}.")

    # -- the search's calls ----------------------------------------------------------
    def prepare(self, model: nn.Module, example_input: Any, calibration_data: Iterable[Any],
                layers: Sequence[LayerSpec] | None = None) -> None:
        """Copy ``model`` and keep its float weights; every later policy is written into the copy."""
        layers = self.use_layers(model, example_input, layers)
        self.check_layers(layers)
        self._model = copy.deepcopy(model).eval()
        originals = dict(model.named_modules())
        copies = dict(self._model.named_modules())
        hessians = None
        if self.config["rounding"] == "gptq":
            hessians = gptq_hessians(self._model, [layer.name for layer in layers], calibration_data)
        self._weights = GroupQuantizedWeights(
            {layer.name: (originals[layer.name].weight, copies[layer.name].weight) for layer in layers}, self.grid,
            cache_bytes=self.config["cache_mb"] * 2 ** 20, hessians=hessians)
        self.mark_prepared()
        self.set_policy({layer.name: (8, 8) for layer in layers})

    def _apply_policy(self, bits: dict[str, tuple[int, int]]) -> None:
        """Write each layer's weights, rounded at its weight bits (only layers whose bits changed)."""
        assert self._weights is not None
        self._weights.apply({name: pair[0] for name, pair in bits.items()})

    def _calibrate(self) -> None:
        """Nothing to observe: weight ranges come from the weights, and activations stay float."""

    @property
    def model(self) -> nn.Module:
        self.require_prepared()
        assert self._model is not None
        return self._model

    def export(self, policy: Policy | Any, path: str | Path) -> Path:
        """Write ``groupwise_policy.json``: every layer's bits and shape, and the grid."""
        bits = self.policy_bits(policy)
        shapes = {layer.name: (layer.out_channels, layer.params // layer.out_channels) for layer in self.layers}
        return write_policy_file(self.export_path(path), {name: pair[0] for name, pair in bits.items()}, shapes,
                                 self.grid, self.config["rounding"])

    def export_gguf(self, policy: Policy | Any, path: str | Path, source: str | Path, types: str = "exact",
                    threads: int = 1) -> Path:
        """Write the policy as a GGUF for llama.cpp, from the GGUF ``source`` the model was loaded from.

        ``types="exact"``: the types the ``gguf`` package writes, holding the searched
        weights bit for bit (:mod:`haq_plugin.adapters.groupwise.gguf_export`);
        ``types="k"``: llama.cpp's K types, written by its quantizer on ``threads``
        threads (:mod:`haq_plugin.adapters.groupwise.gguf_k_types`).  Also writes
        ``<path>.tensor-types.txt``, the recipe for ``llama-quantize``.
        """
        self.require_prepared()
        assert self._weights is not None
        bits = {name: pair[0] for name, pair in self.policy_bits(policy).items()}
        if types not in GGUF_TYPES:
            raise HaqError(f"--gguf-types {types!r}: choose one of {', '.join(GGUF_TYPES)}.")
        if types == "k":
            from haq_plugin.adapters.groupwise.gguf_k_types import write_k_gguf  # deferred: imports llama_cpp

            searched = {name: self._weights.rounded(name, width) for name, width in bits.items()}
            return write_k_gguf(Path(path), Path(source), searched, bits, threads)
        from haq_plugin.adapters.groupwise.gguf_export import write_gguf  # deferred: imports gguf

        weights = {name: self._weights.float_weight(name) for name in bits}
        levels = None
        if self._weights.rounding == "gptq":
            levels = {name: self._weights.levels(name, width) for name, width in bits.items()}
        return write_gguf(Path(path), Path(source), weights, bits, self.grid, levels)


@hookimpl
def haq_quant_backends() -> list[type[QuantBackend]]:
    return [GroupwiseBackend]
