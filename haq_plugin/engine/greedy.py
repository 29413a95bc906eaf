"""The sensitivity-greedy strategy (``strategy="greedy"``): the strongest simple baseline.

It is what AIMET's AMP, mlx-lm's dynamic quantization and ModelOpt's
AutoQuantize do, in two phases:

1. **Measure.**  Each decision unit (a layer, or a group of layers that share
   their bits) is lowered alone to each allowed width below the top one, the
   rest at the top width; the score it loses there is its *loss* at that width
   (:func:`measure_losses`).  Units x (widths - 1) evaluations, no learning.
2. **Choose** (:func:`greedy_widths`).  From every unit at its top width, lower
   one unit one width at a time, always the step that loses the least score per
   unit of cost saved, until the policy fits the budget; then give back: raise
   the step that regains the most score per unit of cost while the budget
   still holds.

The losses are assumed to add up over units, which is the assumption every
sensitivity method makes and the one a learned search (DDPG) does not need.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np


def measure_losses(n_units: int, widths: Sequence[int], free: Sequence[bool],
                   score_of: Callable[[int, int], float], top_score: float) -> np.ndarray:
    """``losses[u, k]``: ``top_score`` minus the score with unit ``u`` alone at ``widths[k]``.

    ``score_of(u, width)`` evaluates that policy.  The top width's column is 0,
    and fixed units (``free[u]`` False) are not measured (their row stays 0).
    """
    losses = np.zeros((n_units, len(widths)), dtype=np.float64)
    for u in range(n_units):
        if not free[u]:
            continue
        for k, width in enumerate(widths[:-1]):
            losses[u, k] = top_score - score_of(u, width)
    return losses


def _total(costs: np.ndarray, level: Sequence[int]) -> float:
    return math.fsum(costs[u, k] for u, k in enumerate(level))


def _lower_step(costs: np.ndarray, u: int, k: int) -> int | None:
    """The widest level below ``k`` that costs less than ``k`` for unit ``u`` (None if there is none)."""
    for lower in range(k - 1, -1, -1):
        if costs[u, lower] < costs[u, k]:
            return lower
    return None


def greedy_widths(losses: np.ndarray, costs: np.ndarray, budget: float, free: Sequence[bool],
                  start: Sequence[int]) -> list[int] | None:
    """Width levels (indices into the widths) per unit that fit ``budget``, or None if none does.

    ``costs[u, k]`` is unit ``u``'s cost at level ``k``; ``start`` the level of
    every unit before lowering (the top level for a free unit, its fixed level
    otherwise).  Ties go to the later unit, as in HAQ's budget enforcement.
    """
    level = list(start)
    total = _total(costs, level)
    while total > budget:
        best: tuple[float, int, int] | None = None
        for u in range(len(level)):
            lower = _lower_step(costs, u, level[u]) if free[u] else None
            if lower is None:
                continue
            ratio = (losses[u, lower] - losses[u, level[u]]) / (costs[u, level[u]] - costs[u, lower])
            if best is None or ratio <= best[0]:
                best = (ratio, u, lower)
        if best is None:
            return None
        _, u, lower = best
        total += costs[u, lower] - costs[u, level[u]]
        level[u] = lower
    return _give_back(losses, costs, budget, free, level, start)


def _give_back(losses: np.ndarray, costs: np.ndarray, budget: float, free: Sequence[bool],
               level: list[int], top: Sequence[int]) -> list[int]:
    """Raise single steps while the budget holds, the most score regained per unit of cost first."""
    total = _total(costs, level)
    while True:
        best: tuple[float, int] | None = None
        for u in range(len(level)):
            if not free[u] or level[u] >= top[u]:
                continue
            extra = costs[u, level[u] + 1] - costs[u, level[u]]
            gain = losses[u, level[u]] - losses[u, level[u] + 1]
            if total + extra > budget or gain <= 0:
                continue
            ratio = gain / extra if extra > 0 else math.inf
            if best is None or ratio >= best[0]:
                best = (ratio, u)
        if best is None:
            return level
        u = best[1]
        total += costs[u, level[u] + 1] - costs[u, level[u]]
        level[u] += 1
