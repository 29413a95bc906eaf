"""The language-model task: the decoder linears, the windows and the size bookkeeping."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from haq_plugin import HaqError
from haq_plugin.tasks.llm import block_linears, build_language_model_task, language_model_from
from tests.tasks.llm.tiny_llama import one_line, tiny_text

ROLES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def test_block_linears_are_the_fourteen_decoder_linears(tiny):
    model, _ = tiny
    assert block_linears(model) == [f"model.layers.{block}.{role}" for block in range(2) for role in ROLES]


def test_a_model_without_decoder_blocks_is_refused():
    with pytest.raises(HaqError) as error:
        block_linears(nn.Sequential(nn.Linear(4, 4)))
    assert "no nn.Linear under layers.N." in one_line(error)


def test_task_bundles_windows_example_input_and_embedding_size(tiny, tmp_path):
    model, tokenizer = tiny
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(tiny_text(), encoding="utf-8")
    task = build_language_model_task(language_model_from(model, tokenizer, name="tiny"), f"text:{corpus}",
                                     window=32, calibration_windows=3, val_windows=2, test_windows=4)
    assert task.windows.calibration.shape == (3, 32) and task.windows.val.shape == (2, 32)
    assert task.windows.test.shape == (4, 32)
    assert torch.equal(task.example_input, task.windows.calibration[:1]) and task.example_input.shape == (1, 32)
    assert task.layer_names == block_linears(model)
    assert task.embedding_params == len(tokenizer) * 64 and task.lm_head_params == 0  # tied
    val = task.val_eval_fn()(task.model)
    assert math.isfinite(val) and val > 1
    assert task.test_eval_fn(batch_size=1)(task.model) == pytest.approx(task.test_eval_fn()(task.model), rel=1e-6)


def test_window_longer_than_the_context_fails_before_tokenizing(tiny):
    model, tokenizer = tiny
    with pytest.raises(HaqError) as error:
        build_language_model_task(language_model_from(model, tokenizer), "text:pydoc", window=200)
    assert str(error.value) == "window 200 is longer than the model's context length 128"
