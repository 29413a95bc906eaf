"""The optional dependencies of language models, imported on demand.

``transformers``, ``gguf`` and ``accelerate`` are large and only language models need
them, so they live in the ``llm`` extra and are imported inside the functions that use
them: ``import haq_plugin`` stays fast and works without them, and a user who asks
for a language model without the extra gets one line saying how to install it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from haq_plugin.api.errors import HaqError

LLM_INSTALL = 'pip install torch==2.13.0 -e ".[llm]"  (or: pip install "haq-plugin[llm]")'
_EXTRA_MODULES = ("transformers", "gguf", "accelerate")


def require_llm_extra() -> ModuleType:
    """``transformers``, after checking that every module of the ``llm`` extra imports."""
    for name in _EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise HaqError(f"language models need the llm extra ({name} is missing: {error}): "
                           f"{LLM_INSTALL}") from None
    import transformers

    return transformers
