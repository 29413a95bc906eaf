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
import sys
import weakref
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from haq_plugin.api.bits import BitPair
from haq_plugin.api.errors import HaqError
from haq_plugin.engine.reward import BUDGET_RTOL
from haq_plugin.engine.metric import Metric


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


# -- the strategy, on a search's environment ----------------------------------------------
_MEASURED: "weakref.WeakKeyDictionary[Any, dict[Any, np.ndarray]]" = weakref.WeakKeyDictionary()


def _unit_view(env: Any) -> tuple[Any, Callable[[list[BitPair]], list[BitPair]]]:
    """The environment that decides per unit, and how its bits become per-layer bits."""
    units = getattr(env, "units", None)
    if units is None:
        return env, list
    return env.unit_env, units.expand


def greedy_policy(env: Any, evaluate: Callable[[list[BitPair]], float], metric: Metric, reference: float, *,
                  memo: tuple[Any, Any] | None = None, progress: bool = False) -> tuple[list[BitPair], int]:
    """The greedy strategy's per-layer bits on ``env``, and how many evaluations it measured.

    ``evaluate(layer_bits)`` returns the metric of a policy.  Under weights and
    activations a unit's weight and input take the same width.  ``memo`` is
    (an object whose lifetime bounds the memo, a key): a sweep's searches on one
    backend measure the losses once and reuse them at every budget.
    """
    unit_env, expand = _unit_view(env)
    widths = list(unit_env.allowed)
    fixed = list(unit_env.fixed)
    free = [fw is None for fw, _ in fixed]

    def pair(u: int, width: int) -> BitPair:
        fw, fa = fixed[u]
        return (fw if fw is not None else width, fa if fa is not None else width)

    top = [pair(u, widths[-1]) for u in range(len(fixed))]
    costs = np.array([[unit_env.layer_cost(u, *pair(u, w)) for w in widths] for u in range(len(fixed))])
    cache = _MEASURED.setdefault(memo[0], {}) if memo is not None else {}  # without a memo: this call's own
    key = None if memo is None else (memo[1], tuple(widths), tuple(fixed))
    measured = 0
    if key not in cache:
        bar = tqdm(total=sum(free) * (len(widths) - 1) + 1, desc="greedy: losses", unit="eval", file=sys.stderr,
                   disable=not progress, dynamic_ncols=True)

        def score(bits: list[BitPair]) -> float:
            bar.update(1)
            return metric.score(evaluate(expand(bits)), reference)

        def score_of(u: int, width: int) -> float:
            return score([pair(v, width) if v == u else top[v] for v in range(len(fixed))])

        try:
            cache[key] = measure_losses(len(fixed), widths, free, score_of, score(top))
        finally:
            bar.close()
        measured = sum(free) * (len(widths) - 1) + 1
    losses = cache[key]
    budget = unit_env.budget.absolute * (1.0 + BUDGET_RTOL)
    levels = greedy_widths(losses, costs, budget, free, [len(widths) - 1] * len(fixed))
    if levels is None:
        raise HaqError("the greedy strategy found no policy within the budget (every free layer at its fewest "
                       "bits still costs more); raise the budget or lower min_bits.")
    return expand([pair(u, widths[k]) for u, k in enumerate(levels)]), measured
