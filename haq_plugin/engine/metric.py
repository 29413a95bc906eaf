"""What ``eval_fn`` measures: accuracy (higher is better) or perplexity (lower is better).

HAQ's reward is ``0.1 x (accuracy - float accuracy)``, accuracy in percent.
A language model is measured by perplexity instead, which is unbounded above
and better when lower, so each metric maps its values to a *score* in the
units of accuracy (higher is better, the float model at its own value) and the
reward is the same formula on scores:

* accuracy: the score is the accuracy itself, so the reward is exactly HAQ's;
* perplexity: the score is ``100 x float perplexity / perplexity``: 100 for the
  float model, 80 for a perplexity 1.25 times as high, towards 0 for a broken
  one.  Bounded like an accuracy, so a catastrophic policy (perplexity in the
  thousands) does not swamp the critic with huge negative rewards, and equal
  ratios of perplexity are equal steps of score near the reference.

Everything that compares policies (the best episode, the Pareto front, the
greedy strategy, sensitivity) compares scores, so it reads the same for both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from haq_plugin.api.errors import HaqError
from haq_plugin.engine.reward import REWARD_SCALE


@dataclass(frozen=True)
class Metric:
    """One kind of ``eval_fn`` answer, with how to compare and show it."""

    name: str
    higher_is_better: bool
    unit: str
    answer: str  # what eval_fn must return, for error messages

    def score(self, value: float, reference: float) -> float:
        """``value`` in accuracy units (higher is better); ``reference`` is the float model's value."""
        if self.higher_is_better:
            return value
        return 100.0 * reference / value

    def reward(self, value: float, reference: float) -> float:
        """HAQ's reward: 0.1 x (score of the policy - score of the float model)."""
        return REWARD_SCALE * (self.score(value, reference) - self.score(reference, reference))

    def is_better(self, value: float, than: float) -> bool:
        return value > than if self.higher_is_better else value < than

    def problem(self, value: float) -> str | None:
        """Why ``value`` cannot be an answer of this metric (None if it can)."""
        if not math.isfinite(value):
            return f"it is {value!r}; {self.answer}"
        if self.higher_is_better and not 0.0 <= value <= 100.0:
            return f"{value!r} is outside 0..100; {self.answer}"
        if not self.higher_is_better and value < 1.0:
            return f"{value!r} is below 1, which no perplexity is; {self.answer}"
        return None

    def format(self, value: float) -> str:
        """``97.50%`` or ``13.42``: how reports print one value."""
        return f"{value:.2f}{self.unit}"


ACCURACY = Metric("accuracy", True, "%", "eval_fn must return an accuracy in percent (0 to 100)")
PERPLEXITY = Metric("perplexity", False, "", "eval_fn must return a perplexity (a finite number >= 1)")
METRICS = {metric.name: metric for metric in (ACCURACY, PERPLEXITY)}


def metric_named(name: str) -> Metric:
    """The metric called ``name``, or a :class:`HaqError` listing the metrics."""
    try:
        return METRICS[name]
    except KeyError:
        raise HaqError(f"Unknown metric {name!r}: use 'accuracy' (eval_fn returns percent, higher is better) "
                       "or 'perplexity' (lower is better).") from None
