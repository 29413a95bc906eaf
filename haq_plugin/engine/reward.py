"""HAQ's reward of an evaluated policy, and the resource budget every evaluated policy fits.

The budget is enforced before evaluation (:meth:`~haq_plugin.engine.environment.QuantizationEnv.enforce_budget`),
so the reward needs no cost term: it is the accuracy lost to quantization, scaled.
"""

from __future__ import annotations

from dataclasses import dataclass

REWARD_SCALE = 0.1
# Costs are sums of floats: a policy "fits" when within this relative rounding margin.
BUDGET_RTOL = 1e-9


def reward(accuracy: float, float_accuracy: float) -> float:
    """HAQ's reward of an evaluated policy: 0.1 x (its accuracy - the float model's accuracy).

    The budget is enforced before evaluation, so the reward needs no cost term.
    """
    return REWARD_SCALE * (accuracy - float_accuracy)


@dataclass(frozen=True)
class Budget:
    """A resource budget: ``fraction`` of the w8/a8 cost ``reference`` of constraint ``constraint``."""

    constraint: str
    fraction: float
    reference: float

    @property
    def absolute(self) -> float:
        return self.fraction * self.reference

    def fits(self, cost: float) -> bool:
        return cost <= self.absolute * (1.0 + BUDGET_RTOL)
