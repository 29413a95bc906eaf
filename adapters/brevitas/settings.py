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
from haq_plugin.adapters.common.weight_ranges import DEFAULT_WEIGHT_RANGE, WEIGHT_RANGES

ACT_RANGES = ("percentile", "mse")


@dataclass(frozen=True)
class QuantSettings:
    """How weight and activation ranges are found (the same for every layer).

    ``act_percentile`` applies to ``act_range='percentile'``: the range is that
    percentile of the calibration inputs (of their absolute values when signed),
    averaged over batches.  ``weight_range`` is ``minmax`` (each channel's
    absolute maximum) or ``mse`` (MSE-clipped at low bits).
    """

    act_range: str = "percentile"
    act_percentile: float = 99.99
    quantize: str = WEIGHTS_AND_ACTIVATIONS
    weight_range: str = DEFAULT_WEIGHT_RANGE

    def __post_init__(self) -> None:
        if self.act_range not in ACT_RANGES:
            raise HaqError(f"act_range must be one of {', '.join(ACT_RANGES)}; got {self.act_range!r}.")
        if not 0.0 < self.act_percentile <= 100.0:
            raise HaqError(f"act_percentile must be in (0, 100]; got {self.act_percentile!r}.")
        check_quantize(self.quantize, "Brevitas quantizers")
        if self.weight_range not in WEIGHT_RANGES:
            raise HaqError(f"weight_range must be one of {', '.join(WEIGHT_RANGES)}; got {self.weight_range!r}.")

    @property
    def clip_weights(self) -> bool:
        """The older name of ``weight_range == 'mse'``."""
        return self.weight_range == "mse"

    @property
    def weights_only(self) -> bool:
        """No input quantizer: activations stay float, only the weight bits apply."""
        return self.quantize == WEIGHTS_ONLY


def alias_weight_range(clip_weights: bool | None, weight_range: str | None) -> str | None:
    """The ``weight_range`` that ``clip_weights`` (its alias) and ``weight_range`` ask for together.

    ``clip_weights=True`` is ``mse`` and ``False`` is ``minmax``; None where
    neither is given.  A contradiction is a :class:`HaqError` naming both.
    """
    if clip_weights is None:
        return weight_range
    implied = "mse" if clip_weights else "minmax"
    if weight_range is not None and weight_range != implied:
        raise HaqError(f"backend 'brevitas': clip_weights={clip_weights} means weight_range={implied}, which "
                       f"contradicts weight_range={weight_range}; give only weight_range (clip_weights is its alias).")
    return implied


@dataclass(frozen=True)
class LayerQuant:
    """What one layer is quantized to: weight bits, input bits and input sign."""

    weight_bits: int
    input_bits: int
    input_signed: bool
