"""The sensitivity-greedy choice: cheapest loss per cost saved first, then give back what still fits."""

from __future__ import annotations

import itertools

import numpy as np

from haq_plugin.engine.greedy import greedy_widths, measure_losses

WIDTHS = (2, 4, 8)


def test_the_unit_that_loses_least_per_cost_saved_is_lowered_first():
    # unit 0 is big and robust, unit 1 small and sensitive: lowering 0 saves most and loses least
    costs = np.array([[2.0, 4.0, 8.0], [1.0, 2.0, 4.0]])
    losses = np.array([[3.0, 0.5, 0.0], [9.0, 4.0, 0.0]])
    level = greedy_widths(losses, costs, budget=8.0, free=[True, True], start=[2, 2])
    assert [WIDTHS[k] for k in level] == [4, 8]  # 4 + 4 = 8 fits; unit 1 kept at 8 bits
    level = greedy_widths(losses, costs, budget=5.0, free=[True, True], start=[2, 2])
    assert [WIDTHS[k] for k in level] == [2, 4]  # loses 7; the other fit, [4, 2], would lose 9.5


def test_give_back_raises_what_still_fits_and_the_result_is_maximal():
    rng = np.random.default_rng(0)
    for _ in range(50):
        units = 4
        costs = np.sort(rng.uniform(0.5, 3.0, (units, 3)), axis=1)
        losses = np.sort(rng.uniform(0.0, 5.0, (units, 3)), axis=1)[:, ::-1].copy()
        losses[:, -1] = 0.0
        budget = float(rng.uniform(costs[:, 0].sum(), costs[:, -1].sum()))
        level = greedy_widths(losses, costs, budget, [True] * units, [2] * units)
        assert level is not None
        total = sum(costs[u, k] for u, k in enumerate(level))
        assert total <= budget + 1e-12
        for u in range(units):  # no single step up fits any more
            if level[u] < 2:
                assert total - costs[u, level[u]] + costs[u, level[u] + 1] > budget
        # never far from the best policy there is: within the worst single-step loss
        best = min(sum(losses[u, k] for u, k in enumerate(choice))
                   for choice in itertools.product(range(3), repeat=units)
                   if sum(costs[u, k] for u, k in enumerate(choice)) <= budget)
        assert sum(losses[u, k] for u, k in enumerate(level)) <= best + losses.max()


def test_fixed_units_keep_their_level_and_an_impossible_budget_is_none():
    costs = np.array([[2.0, 4.0, 8.0], [1.0, 2.0, 4.0]])
    losses = np.array([[3.0, 0.5, 0.0], [9.0, 4.0, 0.0]])
    level = greedy_widths(losses, costs, budget=7.0, free=[True, False], start=[2, 2])
    assert level == [0, 2]
    assert greedy_widths(losses, costs, budget=5.0, free=[True, False], start=[2, 2]) is None


def test_losses_are_measured_for_every_free_unit_below_the_top_width():
    seen = []

    def score_of(unit, width):
        seen.append((unit, width))
        return 90.0 - unit * width

    losses = measure_losses(3, WIDTHS, [True, False, True], score_of, top_score=90.0)
    assert seen == [(0, 2), (0, 4), (2, 2), (2, 4)]
    assert losses.tolist() == [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [4.0, 8.0, 0.0]]
