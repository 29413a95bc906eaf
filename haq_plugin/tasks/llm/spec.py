"""``--model llm:|hf:|gguf:`` and ``--data text:...``: a language model as the command line sees it.

The model is loaded once per process and shared by ``--model`` and ``--data``
(like the demo).  ``--data-option KEY=VALUE`` sets the token windows
(:data:`DATA_OPTIONS`).  A language model changes the defaults of a search
(:data:`SEARCH_DEFAULTS`): weight-only group-wise quantization, a size budget,
perplexity as the metric, one decision per block, the sensitivity-greedy strategy, and the first layer free
(HAQ keeps a CNN's first layer at 8 bits because it reads the image; a
decoder's first linear reads an embedding like every other block).
``lm_head`` (tied to the embedding in SmolLM2) stays the kept last layer at 8
bits and counts in the size.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

from haq_plugin.api.errors import HaqError
from haq_plugin.tasks.llm.text import (DEFAULT_CALIBRATION_WINDOWS, DEFAULT_TEST_WINDOWS, DEFAULT_VAL_WINDOWS,
                                       DEFAULT_WINDOW)

MODEL_PREFIXES = ("llm:", "hf:", "gguf:")
DEFAULT_DATA = "text:pydoc"
DATA_OPTIONS: dict[str, tuple[int, str]] = {
    "window": (DEFAULT_WINDOW, "tokens per window"),
    "calibration_windows": (DEFAULT_CALIBRATION_WINDOWS, "windows for calibration"),
    "val_windows": (DEFAULT_VAL_WINDOWS, "windows the search's perplexity is measured on"),
    "test_windows": (DEFAULT_TEST_WINDOWS, "held-out windows for the reported test perplexity"),
    "batch_size": (4, "windows per forward pass"),
}
SEARCH_DEFAULTS: dict[str, Any] = {
    "backend": "groupwise", "hw": "llm-decode", "constraint": "size", "quantize": "weights",
    "metric": "perplexity", "decisions": "block", "keep_first_layer_8bit": False, "episodes": 100,
    # measured on SmolLM2-135M (benchmarks/RESULTS.md section 10): greedy's 181 evaluations beat DDPG's 100
    "strategy": "greedy",
    # widths 2..5: at 3 to 4.5 bits per weight nothing wider is affordable, and greedy measures 3 widths per unit
    "max_bits": 5,
}
# GPTQ rounding for the default backend (benchmarks/RESULTS.md section 10), and the calibration it needs: its
# Hessians from 32 windows of 256 tokens (one pass of the float model) instead of the 4 other backends calibrate on.
BACKEND_DEFAULTS: dict[str, dict[str, str]] = {"groupwise": {"rounding": "gptq"}}
GPTQ_CALIBRATION_WINDOWS = 32


def is_language_model(model_spec: str | None) -> bool:
    """Whether ``--model`` names a language model (``llm:``, ``hf:`` or ``gguf:``)."""
    return bool(model_spec) and str(model_spec).startswith(MODEL_PREFIXES)


def data_options(given: Mapping[str, Any] | None) -> dict[str, int]:
    """The window options with defaults filled in; unknown keys and non-positive counts are refused."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(DATA_OPTIONS))
    if unknown:
        raise HaqError(f"--data-option {unknown[0]}: not a language-model data option; use "
                       + ", ".join(f"{key} ({text}, default {default})" for key, (default, text) in
                                   DATA_OPTIONS.items()) + ".")
    options = {}
    for key, (default, _) in DATA_OPTIONS.items():
        value = given.get(key, default)
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise HaqError(f"--data-option {key}={value!r}: expected a whole number.") from None
        if number < (0 if key == "calibration_windows" else 1):
            raise HaqError(f"--data-option {key}={number}: must be at least "
                           f"{0 if key == 'calibration_windows' else 1}.")
        options[key] = number
    return options


@functools.lru_cache(maxsize=1)
def _language_model(model_spec: str) -> Any:
    from haq_plugin.tasks.llm.sources import load_language_model

    return load_language_model(model_spec)


@functools.lru_cache(maxsize=2)
def _task(model_spec: str, data_spec: str, options: tuple[tuple[str, int], ...]) -> Any:
    from haq_plugin.tasks.llm.task import build_language_model_task

    windows = {key: value for key, value in options if key != "batch_size"}
    return build_language_model_task(_language_model(model_spec), data_spec, **windows)


def language_model_task(model_spec: str, data_spec: str | None = None,
                        options: Mapping[str, Any] | None = None) -> Any:
    """The :class:`~haq_plugin.tasks.llm.task.LanguageModelTask` of these specs (built once per process)."""
    if data_spec is not None and not str(data_spec).startswith("text:"):
        raise HaqError(f"--data {data_spec!r}: a language model takes text: 'text:pydoc' (the Python help topics, "
                       "the default) or 'text:FILE' (a UTF-8 file).")
    resolved = data_options(options)
    return _task(model_spec, data_spec or DEFAULT_DATA, tuple(sorted(resolved.items())))


def batch_size(options: Mapping[str, Any] | None) -> int:
    return data_options(options)["batch_size"]
