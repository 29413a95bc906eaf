"""The search's environment when layers share decisions: per unit inside, per layer outside.

:func:`build_environment` gives HAQ's :class:`QuantizationEnv` unchanged when
every layer decides for itself, and otherwise a :class:`UnitEnvironment` over
the units of :mod:`haq_plugin.engine.decisions`, whose cost table rows are the
units' summed costs.  A bits-per-weight budget becomes its exact fraction of
the 8-bit size here, from the cost table (the backend's storage) and the fixed layers.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from haq_plugin.api.bits import BitPair
from haq_plugin.api.layers import LayerSpec
from haq_plugin.engine.bits_per_weight import bits_per_weight_fraction
from haq_plugin.engine.costs import CostTable, summed_table
from haq_plugin.engine.decisions import DecisionUnits
from haq_plugin.engine.environment import QuantizationEnv


class UnitEnvironment:
    """A :class:`QuantizationEnv` that decides per unit, seen by the search as one that decides per layer.

    Every method takes and returns per-layer bits, so the search loop, records,
    checkpoints and reports are the same whatever the units; the agent walks
    one step (or two) per unit.
    """

    def __init__(self, units: DecisionUnits, env: QuantizationEnv) -> None:
        self.units, self.unit_env = units, env
        self.budget, self.n_steps, self.table = env.budget, env.n_steps, env.table
        self.allowed, self.quantize = env.allowed, env.quantize

    def reset(self) -> np.ndarray:
        return self.unit_env.reset()

    def step(self, action: float) -> np.ndarray | None:
        return self.unit_env.step(action)

    def chosen_bits(self) -> list[BitPair]:
        return self.units.expand(self.unit_env.chosen_bits())

    def enforce_budget(self, bits: Sequence[BitPair]) -> list[BitPair]:
        return self.units.expand(self.unit_env.enforce_budget(self.units.collapse(bits)))

    def cost(self, bits: Sequence[BitPair]) -> float:
        return self.unit_env.cost(self.units.collapse(bits))

    def fraction(self, bits: Sequence[BitPair]) -> float:
        return self.unit_env.fraction(self.units.collapse(bits))

    def fits(self, bits: Sequence[BitPair]) -> bool:
        return self.unit_env.fits(self.units.collapse(bits))

    def best_uniform(self) -> tuple[int, list[BitPair]] | None:
        found = self.unit_env.best_uniform()
        return None if found is None else (found[0], self.units.expand(found[1]))


def build_environment(layers: Sequence[LayerSpec], table: CostTable, *, constraint: str, budget: float,
                      bits_per_weight: float | None, decisions: str, quantize: str, allowed: Sequence[int],
                      fixed: Mapping[str, BitPair]) -> QuantizationEnv | UnitEnvironment:
    """The environment of a search: per layer (HAQ's, unchanged), or per unit of ``decisions``.

    A ``bits_per_weight`` budget becomes its exact fraction of the 8-bit size here.
    """
    if bits_per_weight is not None:
        fixed_weights = {name: pair[0] for name, pair in fixed.items() if pair[0] is not None}
        budget = bits_per_weight_fraction(bits_per_weight, table, fixed_weights, allowed)
    units = DecisionUnits.build(layers, decisions, fixed)
    if units.trivial:
        return QuantizationEnv(layers, table, constraint, budget, allowed, fixed, quantize=quantize)
    unit_fixed = {name: fixed[layers[indices[0]].name] for name, indices in zip(units.names, units.members)
                  if layers[indices[0]].name in fixed}
    specs = units.unit_specs(layers)
    env = QuantizationEnv(specs, summed_table(table, specs, units.members), constraint, budget, allowed,
                          unit_fixed, quantize=quantize)
    return UnitEnvironment(units, env)
