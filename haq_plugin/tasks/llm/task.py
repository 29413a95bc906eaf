"""A language model as a quantization task: the model, its token windows, and what to quantize.

The layers a search decides on are the ``nn.Linear`` modules of the decoder blocks
(``model.layers.N.``: attention projections and MLP), which hold almost all the
compute and, apart from the embedding, almost all the weights.  The token embedding
and ``lm_head`` (one tensor when tied, as in SmolLM2) stay out of the search, at 8
bits or float by default, like the first and last layers of a CNN in HAQ; their size is
still part of the model's, hence :attr:`LanguageModelTask.embedding_params`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from haq_plugin.api.errors import HaqError

from haq_plugin.tasks.llm.perplexity import DEFAULT_BATCH_SIZE, perplexity_eval_fn
from haq_plugin.tasks.llm.sources import LanguageModel, load_language_model
from haq_plugin.tasks.llm.text import (
    DEFAULT_CALIBRATION_WINDOWS, DEFAULT_TEST_WINDOWS, DEFAULT_VAL_WINDOWS, DEFAULT_WINDOW, TokenWindows,
    load_text, make_windows,
)

_BLOCK_LINEAR = re.compile(r"(?:^|\.)layers\.\d+\.")


def block_linears(model: nn.Module) -> list[str]:
    """Names of every ``nn.Linear`` inside a decoder block (``...layers.N....``), in model order.

    Llama-family models (Llama, Mistral, Qwen, SmolLM, ...) keep their blocks in
    ``model.layers``; ``lm_head`` and the embedding are outside it and so excluded.
    """
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and _BLOCK_LINEAR.search(name)]
    if not names:
        raise HaqError(f"{type(model).__name__} has no nn.Linear under layers.N.; language models are "
                       "supported when their decoder blocks are a 'layers' list of nn.Linear modules "
                       "(Llama, Mistral, Qwen, SmolLM and alike)")
    return names


def _embedding_params(model: Any) -> tuple[int, int]:
    """``(embedding parameters, lm_head parameters not shared with it)``."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    head_weight = getattr(head, "weight", None)
    if head_weight is None or head_weight is embedding or head_weight.data_ptr() == embedding.data_ptr():
        return embedding.numel(), 0
    return embedding.numel(), head_weight.numel()


@dataclass
class LanguageModelTask:
    """Everything a search on a language model needs, built by :func:`build_language_model_task`."""

    language_model: LanguageModel
    windows: TokenWindows

    @property
    def model(self) -> Any:
        return self.language_model.model

    @property
    def tokenizer(self) -> Any:
        return self.language_model.tokenizer

    @property
    def example_input(self) -> torch.Tensor:
        """One calibration window ``[1, window]`` (a val window when there is no calibration split)."""
        source = self.windows.calibration if self.windows.calibration.shape[0] else self.windows.val
        return source[:1].clone()

    @property
    def layer_names(self) -> list[str]:
        """The decoder-block linears the search decides bits for (see :func:`block_linears`)."""
        return block_linears(self.model)

    @property
    def embedding_params(self) -> int:
        """Parameters of the token embedding (tied to ``lm_head`` when the model ties them)."""
        return _embedding_params(self.model)[0]

    @property
    def lm_head_params(self) -> int:
        """Parameters of ``lm_head`` beyond the embedding's: 0 when tied."""
        return _embedding_params(self.model)[1]

    def val_eval_fn(self, batch_size: int = DEFAULT_BATCH_SIZE) -> Callable[[nn.Module], float]:
        """Val perplexity of a model, for the search's reward."""
        return perplexity_eval_fn(self.windows.val, batch_size)

    def test_eval_fn(self, batch_size: int = DEFAULT_BATCH_SIZE) -> Callable[[nn.Module], float]:
        """Test perplexity of a model, for the held-out figure of a result."""
        return perplexity_eval_fn(self.windows.test, batch_size)


def build_language_model_task(model: str | LanguageModel, data_spec: str = "text:pydoc", *,
                              window: int = DEFAULT_WINDOW, calibration_windows: int = DEFAULT_CALIBRATION_WINDOWS,
                              val_windows: int = DEFAULT_VAL_WINDOWS, test_windows: int = DEFAULT_TEST_WINDOWS,
                              progress: bool = True) -> LanguageModelTask:
    """A :class:`LanguageModelTask` from a model spec (or a loaded model) and a ``text:`` spec.

    The windows are checked against the model's context length before anything is tokenized.
    """
    language_model = model if isinstance(model, LanguageModel) else load_language_model(model, progress=progress)
    text = load_text(data_spec)
    windows = make_windows(language_model.tokenizer, text, window=window, calibration_windows=calibration_windows,
                           val_windows=val_windows, test_windows=test_windows,
                           context_length=language_model.context_length)
    return LanguageModelTask(language_model, windows)
