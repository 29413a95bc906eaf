"""The Brevitas backend's plain settings, importable without importing Brevitas.

Listing plugins, reading options and checking a policy need only these; the
quantizer classes they name are looked up in
:mod:`haq_plugin.adapters.brevitas.quantizers` (which imports Brevitas, a
matter of seconds) when a model is actually quantized.
"""

from __future__ import annotations

from dataclasses import dataclass

from haq_plugin.api.errors import HaqError
from haq_plugin.api.quantize_mode import WEIGHTS_AND_ACTIVATIONS, WEIGHTS_ONLY, check_quantize

ACT_RANGES = ("percentile", "mse")


@dataclass(frozen=True)
class QuantSettings:
    """How activation ranges are found (the same for every layer).

    ``act_percentile`` applies to ``act_range='percentile'``: the range is that
    percentile of the calibration inputs (of their absolute values when signed),
    averaged over batches.
    """

    act_range: str = "percentile"
    act_percentile: float = 99.99
    quantize: str = WEIGHTS_AND_ACTIVATIONS
    clip_weights: bool = False

    def __post_init__(self) -> None:
        if self.act_range not in ACT_RANGES:
            raise HaqError(f"act_range must be one of {', '.join(ACT_RANGES)}; got {self.act_range!r}.")
        if not 0.0 < self.act_percentile <= 100.0:
            raise HaqError(f"act_percentile must be in (0, 100]; got {self.act_percentile!r}.")
        check_quantize(self.quantize, "Brevitas quantizers")

    @property
    def weights_only(self) -> bool:
        """No input quantizer: activations stay float, only the weight bits apply."""
        return self.quantize == WEIGHTS_ONLY



@dataclass(frozen=True)
class LayerQuant:
    """What one layer is quantized to: weight bits, input bits and input sign."""

    weight_bits: int
    input_bits: int
    input_signed: bool
