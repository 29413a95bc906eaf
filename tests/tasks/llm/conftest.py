"""Fixtures of the language-model tests: one tiny Llama per module (building it is cheap,
importing transformers is not, and tests must not change a shared model)."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers", reason="the llm extra is not installed")


@pytest.fixture(scope="module")
def tiny():
    """``(model, tokenizer)`` of :func:`tests.tasks.llm.tiny_llama.tiny_llama`."""
    from tests.tasks.llm.tiny_llama import tiny_llama

    return tiny_llama(seed=0)
