"""The hardware model interface: what a simulator plugin implements.

A hardware model answers one question: what does one layer cost on this chip
with these weight and activation bit widths?  Everything else (cost tables,
budgets, constraints) is built by the core on top of :meth:`HardwareModel.layer_cost`.

To write one, subclass :class:`HardwareModel`, set the class attributes, implement
``layer_cost``, and return the class from the ``haq_hardware_models`` hook (see
``docs/plugins.md``).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from haq_plugin.api.bits import check_width, is_integer
from haq_plugin.api.errors import HaqError
from haq_plugin.api.layers import LayerSpec
from haq_plugin.api.options import Option, resolve_options


@dataclass(frozen=True)
class LayerCost:
    """Cost of one layer for one batch (of the model's configured batch size).

    ``latency_s`` is the time for the batch in seconds, ``energy_j`` its energy
    in joules (None where the model has no energy model), and ``details`` holds
    the simulator's own counters (cycles, buffer accesses, ...) for inspection.
    """

    latency_s: float
    energy_j: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


class HardwareModel(abc.ABC):
    """Base class of every hardware model.

    Class attributes a subclass sets:

    * ``name``: registry name (``--hw NAME``), lowercase with dashes.
    * ``description``: one line for ``haq-plugin hw list``.
    * ``citation``: where the model and its numbers come from.
    * ``options``: tuple of :class:`~haq_plugin.api.options.Option`; validated values
      land in ``self.config`` (a dict) before :meth:`setup` runs.
    * ``has_energy``: whether ``layer_cost`` returns energy.
    * ``presets``: named sets of option values, selected by a declared ``preset``
      option; options given next to the preset override its values.

    Instances must be cheap to create and their costs deterministic, because the
    core caches cost tables keyed by (name, config, layer shapes).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    has_energy: ClassVar[bool] = False
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, **options: Any) -> None:
        missing = type(self).unavailable()
        if missing:
            raise HaqError(f"hardware model '{self.name}' is unavailable: {missing}")
        given = {**self.presets.get(options.get("preset") or "", {}), **options}
        self.config: dict[str, Any] = resolve_options(f"hardware model '{self.name}'", self.options, given)
        self.setup()

    @classmethod
    def unavailable(cls) -> str | None:
        """None when the model can run here, else one line: what is missing and the command that installs it.

        A model whose dependencies are an optional extra keeps its module free of
        them, so it stays registered without the extra: ``hw list`` shows this line
        and creating the model refuses with it (a :class:`HaqError`, exit status 2).
        """
        return None

    def setup(self) -> None:
        """Derive internal constants from ``self.config`` (override when needed)."""

    def environment(self) -> dict[str, Any]:
        """What the costs depend on besides the options (a measured model: the machine, library versions).

        Part of the cost-table cache key, so that a table measured on another machine
        or library version is never served.  Simulators depend on nothing else: empty.
        """
        return {}

    @property
    def supported_bits(self) -> tuple[int, ...]:
        """Bit widths (for weights and activations alike) this hardware can run."""
        return tuple(range(1, 9))

    @abc.abstractmethod
    def layer_cost(self, layer: LayerSpec, weight_bits: int, act_bits: int) -> LayerCost:
        """Cost of ``layer`` with ``weight_bits``-bit weights and ``act_bits``-bit inputs."""

    def layer_costs(self, layer: LayerSpec, bit_pairs: Sequence[tuple[int, int]]) -> list[LayerCost]:
        """Costs of one layer for many bit pairs; override to share work between pairs."""
        return [self.layer_cost(layer, w, a) for w, a in bit_pairs]

    def check_bits(self, weight_bits: int, act_bits: int, layer: str | None = None) -> None:
        """Raise a clear error for bit widths this hardware cannot run (naming ``layer`` when given)."""
        supported = self.supported_bits
        where = f" (layer '{layer}')" if layer else ""
        for what, bits in (("weight", weight_bits), ("activation", act_bits)):
            if not is_integer(bits):
                check_width(bits, f"{what} bits{where} for hardware model '{self.name}'")  # raises: not a width
            if int(bits) not in supported:
                raise HaqError(
                    f"hardware model '{self.name}' does not support {bits}-bit {what}s{where}; "
                    f"supported bit widths: {', '.join(map(str, supported))}."
                )

    def describe_config(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.config.items()))
