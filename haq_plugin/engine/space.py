"""The search space: which bit widths each layer may take on this hardware with this backend.

Also the rule of which bits are fixed (:func:`fixed_bits_for`: the first and last layer kept at
``KEPT_BITS``, user pins), used by the environment and the analyses.

These checks need the plugins (their supported widths, whether the hardware has
an energy model), so they run once the hardware model and backend are known and
before any cost is simulated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from haq_plugin.api.bits import BitPair
from haq_plugin.api.backend import QuantBackend
from haq_plugin.api.errors import HaqError
from haq_plugin.api.hardware import HardwareModel
from haq_plugin.api.layers import LayerSpec
from haq_plugin.engine.settings import SearchSettings

#: The width of kept layers (first, last) and of activations that are not quantized; the 8-bit reference.
KEPT_BITS = 8
#: A slot's fixed width, or None where the search chooses it.
FixedPair = tuple["int | None", "int | None"]


def fixed_bits_for(layers: Sequence[LayerSpec], keep_first_layer_8bit: bool = True,
                   keep_last_layer_8bit: bool = True,
                   pins: Mapping[str, tuple[int, int]] | None = None) -> dict[str, BitPair]:
    """Layer name -> (weight, activation) bits the search must not change.

    The first layer's input is the network input: HAQ leaves it unquantized,
    our backends give it 8 bits, so keeping the first layer keeps both at 8.
    Pins win over the keep options.
    """
    fixed: dict[str, BitPair] = {}
    if keep_first_layer_8bit:
        fixed[layers[0].name] = (KEPT_BITS, KEPT_BITS)
    if keep_last_layer_8bit:
        fixed[layers[-1].name] = (KEPT_BITS, KEPT_BITS)
    names = {layer.name for layer in layers}
    for name, pair in (pins or {}).items():
        if name not in names:
            some = ", ".join(layer.name for layer in layers[:8])
            raise HaqError(f"pins: no quantizable layer named '{name}'. Layer names are e.g. {some}"
                           f"{' ...' if len(layers) > 8 else ''} (see `haq-plugin layers`).")
        if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                or not all(isinstance(b, int) and not isinstance(b, bool) for b in pair)):
            raise HaqError(f"pins: layer '{name}' must map to a (weight_bits, activation_bits) pair of "
                           f"integers, got {pair!r}.")
        fixed[name] = (int(pair[0]), int(pair[1]))
    return fixed



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
