"""The budgets of a sweep: fractions of the 8-bit cost, or stored bits per weight.

A CNN's sweep states its budgets as fractions of the uniform 8-bit cost
(``0.3,0.5,0.8``); language-model quantization states sizes in bits per weight
(``3.0bpw,3.5bpw``), which :func:`~haq_plugin.engine.search.search` takes as
``budget="3.5bpw"``.  A sweep holds one kind only, because its table, its
Pareto front and its figure have one x axis: a fraction is a float, a
bits-per-weight budget its canonical string (``"3.5bpw"``), so each passes to
``search(budget=...)`` unchanged and names its folder (``budget-3.5bpw``).
"""

from __future__ import annotations

import numbers
from typing import Any, Iterable, Union

from haq_plugin.api.errors import HaqError
from haq_plugin.engine.bits_per_weight import parse_bits_per_weight

#: A fraction of the 8-bit cost (float) or bits per weight (``"3.5bpw"``).
BudgetValue = Union[float, str]
FRACTION, BITS_PER_WEIGHT = "fraction", "bpw"


def budget_kind(budget: BudgetValue) -> str:
    """``"bpw"`` for a bits-per-weight budget, ``"fraction"`` for a fraction of the 8-bit cost."""
    return BITS_PER_WEIGHT if isinstance(budget, str) else FRACTION


def budget_number(budget: BudgetValue) -> float:
    """The number of a budget: the fraction, or the bits per weight (what sorts and plots)."""
    if isinstance(budget, str):
        value = parse_bits_per_weight(budget)
        assert value is not None, budget
        return value
    return float(budget)


def budget_label(budget: BudgetValue) -> str:
    """``0.45`` or ``3.5bpw``: how tables, files and messages write a budget."""
    return budget if isinstance(budget, str) else f"{budget:g}"


def budget_folder(budget: BudgetValue) -> str:
    """The sub-folder name of one budget, e.g. ``budget-0.45`` or ``budget-3.5bpw``."""
    return f"budget-{budget_label(budget)}"


def _one_budget(value: Any) -> BudgetValue:
    bpw = parse_bits_per_weight(value)
    if bpw is not None:
        if not 0.0 < bpw < 64.0:
            raise HaqError(f"Sweep budget {value!r} is not a positive number of bits per weight; give budgets "
                           "like 3.0bpw,3.5bpw,4.0bpw.")
        return f"{bpw:g}bpw"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) <= 1.0:
        raise HaqError(f"Sweep budget {value!r} is not a fraction of the 8-bit cost in (0, 1]; give budgets "
                       "like 0.3,0.5,0.8 (or bits per weight under the size constraint, like 3.0bpw,3.5bpw).")
    return float(value)


def check_budgets(budgets: Iterable[Any]) -> tuple[BudgetValue, ...]:
    """The budgets, distinct, of one kind, in increasing order: floats in (0, 1] or ``"Nbpw"`` strings."""
    values = list(budgets) if not isinstance(budgets, (str, bytes)) else [budgets]
    if not values:
        raise HaqError("A sweep needs at least one budget, e.g. budgets=[0.3, 0.5, 0.8] (--budgets 0.3,0.5,0.8).")
    checked = [_one_budget(value) for value in values]
    kinds = {budget_kind(b) for b in checked}
    if len(kinds) > 1:
        fraction = next(b for b in checked if budget_kind(b) == FRACTION)
        bpw = next(b for b in checked if budget_kind(b) == BITS_PER_WEIGHT)
        raise HaqError(f"Sweep budgets mix a fraction of the 8-bit cost ({budget_label(fraction)}) and bits per "
                       f"weight ({bpw}); give every budget in one kind, e.g. 0.3,0.5,0.8 or 3.0bpw,3.5bpw.")
    numbers_ = [budget_number(b) for b in checked]
    repeated = sorted({v for v in numbers_ if numbers_.count(v) > 1})
    if repeated:
        suffix = "bpw" if kinds == {BITS_PER_WEIGHT} else ""
        raise HaqError(f"Sweep budgets repeat {', '.join(f'{b:g}{suffix}' for b in repeated)}; give each budget "
                       "once.")
    return tuple(sorted(checked, key=budget_number))


def parse_budgets(text: str, flag: str = "--budgets") -> tuple[BudgetValue, ...]:
    """``"0.3,0.4,0.5"`` -> (0.3, 0.4, 0.5); ``"3.5bpw,3bpw"`` -> ("3bpw", "3.5bpw"); checked like
    :func:`check_budgets`."""
    parts = [part.strip() for part in str(text).split(",")]
    values: list[Any] = []
    for part in parts:
        if parse_bits_per_weight(part) is not None:
            values.append(part)
            continue
        try:
            values.append(float(part))
        except ValueError:
            raise HaqError(f"{flag} {text!r}: write comma-separated fractions of the 8-bit cost, e.g. "
                           "0.3,0.4,0.5,0.6,0.8, or bits per weight, e.g. 3.0bpw,3.5bpw,4.0bpw.") from None
    return check_budgets(values)
