"""Perplexity against the model's own loss, and independence from the batch size."""

from __future__ import annotations

import math

import pytest
import torch

from haq_plugin.tasks.llm.perplexity import perplexity, perplexity_eval_fn
from haq_plugin.tasks.llm.text import Text, make_windows
from tests.tasks.llm.tiny_llama import tiny_text


@pytest.fixture(scope="module")
def windows(tiny):
    _, tokenizer = tiny
    return make_windows(tokenizer, Text(tiny_text(), "text:tiny"), window=48, calibration_windows=1,
                        val_windows=5, test_windows=2, context_length=128)


def test_perplexity_of_one_window_is_the_exp_of_the_models_own_loss(tiny, windows):
    model, _ = tiny
    window = windows.val[:1]
    with torch.no_grad():
        expected = math.exp(float(model(input_ids=window, labels=window).loss))
    assert perplexity(model, window) == pytest.approx(expected, rel=1e-5)
    assert 100 < expected < 1000  # random weights over a 384-token vocabulary: near-uniform guessing


def test_perplexity_is_token_weighted_and_independent_of_the_batch_size(tiny, windows):
    model, _ = tiny
    with torch.no_grad():
        losses = [float(model(input_ids=w[None], labels=w[None]).loss) for w in windows.val]
    expected = math.exp(sum(losses) / len(losses))  # equal-length windows: the mean of per-window means
    by_one = perplexity(model, windows.val, batch_size=1)
    by_three = perplexity(model, windows.val, batch_size=3)  # batches of 3 and 2
    assert by_one == pytest.approx(expected, rel=1e-5)
    assert by_three == pytest.approx(by_one, rel=1e-6)


def test_eval_fn_scores_its_windows_and_restores_the_training_mode(tiny, windows):
    model, _ = tiny
    evaluate = perplexity_eval_fn(windows.test)
    model.train()
    try:
        assert evaluate(model) == pytest.approx(perplexity(model, windows.test), rel=1e-9)
        assert model.training
    finally:
        model.eval()
    assert "2 windows of 48 tokens" in evaluate.__doc__
