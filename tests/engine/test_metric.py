"""Metrics: accuracy keeps HAQ's reward exactly; perplexity is scored in the same units, lower is better."""

from __future__ import annotations

import math

import pytest

from haq_plugin import HaqError
from haq_plugin.engine.metric import ACCURACY, PERPLEXITY, metric_named


def test_accuracy_reward_is_hAQs():
    assert ACCURACY.reward(90.0, 95.0) == pytest.approx(-0.5)
    assert ACCURACY.is_better(91.0, 90.0) and not ACCURACY.is_better(90.0, 90.0)


def test_perplexity_scores_in_accuracy_units():
    assert PERPLEXITY.score(13.0, 13.0) == 100.0
    assert PERPLEXITY.score(13.0 * 1.25, 13.0) == pytest.approx(80.0)
    assert PERPLEXITY.reward(13.0 * 1.25, 13.0) == pytest.approx(-2.0)
    assert PERPLEXITY.reward(1e6, 13.0) > -10.0  # bounded: a broken policy costs at most the float score
    assert PERPLEXITY.is_better(14.0, 15.0) and not PERPLEXITY.is_better(15.0, 14.0)


def test_answers_are_checked_per_metric():
    assert ACCURACY.problem(101.0) and ACCURACY.problem(math.nan) and ACCURACY.problem(50.0) is None
    assert PERPLEXITY.problem(0.5) and PERPLEXITY.problem(math.inf) and PERPLEXITY.problem(250.0) is None
    assert metric_named("perplexity") is PERPLEXITY
    with pytest.raises(HaqError, match="'accuracy'.*'perplexity'"):
        metric_named("bleu")
