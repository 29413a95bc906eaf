"""Calibrated input ranges of the ``brevitas`` backend, collected once and reused.

Why a cache is exact: Brevitas' ``calibration_mode`` runs the model with every
quantizer disabled, so each layer's input quantizer collects statistics on the
float activations of the float model.  What it stores (the
``ParameterFromRuntimeStatsScaling`` ``buffer``, ``value`` and ``counter``)
therefore depends only on the float weights, the calibration batches and, for
``act_range='mse'``, that layer's own input bit width (the MSE search is run on
its grid); with ``act_range='percentile'`` it does not depend on any bit width.
While the weights are those of ``prepare`` (no finetune since), restoring the
stored values gives bit for bit what a new calibration would.

Why it is worth it: on the 12-layer peer workload (``benchmarks/peer_workload.py``)
a calibration costs more than the evaluation itself, most of it in
``calibration_mode`` walking every submodule of every quantizer on entry and exit
and in the percentile (``torch.kthvalue``) over the 256 calibration images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from haq_plugin.adapters.brevitas.quantizers import LayerHandles


@dataclass(frozen=True)
class CalibratedRange:
    """The state one calibration leaves in an input quantizer's scaling module."""

    buffer: torch.Tensor
    value: torch.Tensor
    counter: int


class InputRangeCache:
    """Calibrated ranges keyed by layer (and by input bits where the range depends on them)."""

    def __init__(self, bit_dependent: bool) -> None:
        self.bit_dependent = bit_dependent
        self._ranges: dict[tuple[str, int | None], CalibratedRange] = {}

    def _key(self, name: str, input_bits: int) -> tuple[str, int | None]:
        return (name, input_bits if self.bit_dependent else None)

    def restore(self, handles: Mapping[str, LayerHandles], bits: Mapping[str, tuple[int, int]]) -> bool:
        """Write the stored ranges of every layer into its quantizer; False (nothing written) if one is missing."""
        keys = {name: self._key(name, bits[name][1]) for name in handles}
        if not all(key in self._ranges for key in keys.values()):
            return False
        with torch.no_grad():
            for name, handle in handles.items():
                stored, scaling = self._ranges[keys[name]], handle.input_scaling
                assert scaling is not None
                scaling.buffer.copy_(stored.buffer)
                scaling.value.copy_(stored.value)
                scaling.counter = stored.counter
        return True

    def store(self, handles: Mapping[str, LayerHandles], bits: Mapping[str, tuple[int, int]]) -> None:
        """Remember the ranges just calibrated."""
        for name, handle in handles.items():
            scaling = handle.input_scaling
            assert scaling is not None
            self._ranges[self._key(name, bits[name][1])] = CalibratedRange(
                scaling.buffer.detach().clone(), scaling.value.detach().clone(), int(scaling.counter))

    def clear(self) -> None:
        self._ranges.clear()
