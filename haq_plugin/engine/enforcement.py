"""Budget enforcement steps of :meth:`haq_plugin.engine.environment.QuantizationEnv.enforce_budget`.

The rule itself is documented there; these functions are its three phases,
working in place on a policy (``current``, lists of [weight, activation] bits)
and its per-layer costs (``per_layer``).
"""

from __future__ import annotations

import bisect
import math
from typing import Protocol, Sequence

from haq_plugin.engine.reward import Budget
from haq_plugin.engine.space import FixedPair


class BudgetedSlots(Protocol):
    """What the enforcement steps read of :class:`~haq_plugin.engine.environment.QuantizationEnv`."""

    allowed: tuple[int, ...]
    budget: Budget
    fixed: list[FixedPair]
    cheapest: list[tuple[int, int]]

    def layer_cost(self, i: int, w: int, a: int) -> float: ...


def cheaper_width(env: BudgetedSlots, layer: int, slot: int, pair: Sequence[int]) -> tuple[int, float] | None:
    """The widest allowed width below ``pair[slot]`` that lowers the layer's cost, and the saving."""
    if env.fixed[layer][slot] is not None:
        return None
    now = env.layer_cost(layer, *pair)
    trial = list(pair)
    for width in reversed(env.allowed[:bisect.bisect_left(env.allowed, pair[slot])]):
        trial[slot] = width
        saving = now - env.layer_cost(layer, *trial)
        if saving > 0.0:
            return width, saving
    return None


def lower_in_rounds(env: BudgetedSlots, current: list[list[int]], per_layer: list[float]) -> bool:
    """Step 2 of :meth:`QuantizationEnv.enforce_budget`; True once the policy fits, False if stuck over it."""
    n = len(current)
    while True:
        order = []
        for i in range(n):
            for slot in (1, 0):
                found = cheaper_width(env, i, slot, current[i])
                if found is not None:
                    order.append((-found[1] / (current[i][slot] - found[0]), -i, -slot, i, slot))
        if not order:
            return False
        for *_, i, slot in sorted(order):
            found = cheaper_width(env, i, slot, current[i])  # the layer's other slot may have moved
            if found is None:
                continue
            current[i][slot] = found[0]
            per_layer[i] = env.layer_cost(i, *current[i])
            if env.budget.fits(math.fsum(per_layer)):
                return True


def switch_to_cheapest(env: BudgetedSlots, current: list[list[int]], per_layer: list[float]) -> list[int]:
    """Non-monotone hardware: move layers to their cheapest pair, largest saving first, until it fits.

    Returns the layers switched.
    """
    savings = sorted((per_layer[i] - env.layer_cost(i, *env.cheapest[i]), -i, i) for i in range(len(current)))
    switched = []
    for saving, _, i in reversed(savings):
        if saving <= 0.0:
            break
        current[i] = list(env.cheapest[i])
        per_layer[i] = env.layer_cost(i, *current[i])
        switched.append(i)
        if env.budget.fits(math.fsum(per_layer)):
            return switched
    raise RuntimeError("budget enforcement reached the cheapest policy without fitting")


def give_back(env: BudgetedSlots, current: list[list[int]], per_layer: list[float],
              proposed: list[list[int]]) -> None:
    """Step 3 of :meth:`QuantizationEnv.enforce_budget`: raise slots back towards the proposal while it fits."""
    refused: set[tuple[int, int]] = set()
    while True:
        total = math.fsum(per_layer)
        best = None
        for i, pair in enumerate(current):
            for slot in (0, 1):
                if pair[slot] >= proposed[i][slot] or env.fixed[i][slot] is not None or (i, slot) in refused:
                    continue
                raised = list(pair)
                raised[slot] = env.allowed[bisect.bisect_right(env.allowed, pair[slot])]
                extra = env.layer_cost(i, *raised) - per_layer[i]
                key = (pair[slot], extra / (raised[slot] - pair[slot]), i, slot)
                if env.budget.fits(total + extra) and (best is None or key < best[0]):
                    best = (key, i, raised)
        if best is None:
            return
        _, i, raised = best
        before = current[i], per_layer[i]
        current[i], per_layer[i] = raised, env.layer_cost(i, *raised)
        if not env.budget.fits(math.fsum(per_layer)):  # the quick sum above was off by rounding
            current[i], per_layer[i] = before
            refused.add((i, best[0][3]))
