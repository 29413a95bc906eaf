"""The search space: which bit widths each layer may take on this hardware with this backend.

These checks need the plugins (their supported widths, whether the hardware has
an energy model), so they run once the hardware model and backend are known and
before any cost is simulated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from haq_plugin.api.backend import QuantBackend
from haq_plugin.engine.environment import KEPT_BITS, fixed_bits_for
from haq_plugin.api.errors import HaqError
from haq_plugin.api.hardware import HardwareModel
from haq_plugin.api.layers import LayerSpec
from haq_plugin.engine.settings import SearchSettings

BitPair = tuple[int, int]


@dataclass(frozen=True)
class SearchSpace:
    """``allowed`` widths for free slots; ``fixed`` (weight, activation) bits of kept and pinned layers."""

    allowed: tuple[int, ...]
    fixed: dict[str, BitPair]

    @property
    def table_bits(self) -> list[int]:
        """Every width the cost table must cover: the allowed ones, the fixed ones and 8 (the reference)."""
        return sorted(set(self.allowed) | {KEPT_BITS} | {b for pair in self.fixed.values() for b in pair})


def build_space(layers: Sequence[LayerSpec], hardware: HardwareModel, backend: QuantBackend,
                settings: SearchSettings) -> SearchSpace:
    """The search space of ``settings`` on these plugins, or a :class:`HaqError` saying why there is none."""
    check_constraint(hardware, settings.constraint)
    hw, be = set(hardware.supported_bits), set(backend.supported_bits)
    both = f"hardware '{hardware.name}' ({_widths(hw)}) and backend '{backend.name}' ({_widths(be)})"
    allowed = tuple(b for b in range(settings.min_bits, settings.max_bits + 1) if b in hw and b in be)
    if not allowed:
        raise HaqError(f"No bit width in min_bits..max_bits = {settings.min_bits}..{settings.max_bits} is "
                       f"supported by both {both}; widen the range.")
    fixed = fixed_bits_for(layers, settings.keep_first_layer_8bit, settings.keep_last_layer_8bit, settings.pins)
    for name, pair in fixed.items():
        for bits in pair:
            if bits not in hw or bits not in be:
                raise HaqError(f"Layer '{name}' is fixed at {pair[0]}/{pair[1]} bits (a pin or a keep_*_8bit "
                               f"option), but {bits} bits are not supported by both {both}.")
    return SearchSpace(allowed, fixed)


def check_constraint(hardware: HardwareModel, constraint: str) -> None:
    """The hardware must measure the budgeted cost and run the 8-bit reference policy."""
    if constraint == "energy" and not hardware.has_energy:
        raise HaqError(f"hardware model '{hardware.name}' has no energy model, so it cannot budget "
                       "energy; use constraint latency, size or bops, or a hardware model with energy.")
    if KEPT_BITS not in hardware.supported_bits:
        raise HaqError(f"hardware model '{hardware.name}' does not run 8-bit layers, but budgets are "
                       "fractions of the uniform 8-bit cost.")


def _widths(bits: set[int]) -> str:
    return ", ".join(map(str, sorted(bits)))
