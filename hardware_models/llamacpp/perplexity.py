"""Perplexity of a GGUF file computed by llama.cpp, on the search's own token windows.

The search measures perplexity with transformers on fake-quantized float weights;
a user runs the exported GGUF in llama.cpp, with llama.cpp's kernels (which, for
the quantized types, round activations to 8 bits inside the dot products).  Both
are scored here the same way, on the same token ids, so the two figures compare
the arithmetic and nothing else: each window is evaluated from an empty cache in
one batch, and the perplexity is exp of the mean next-token negative
log-likelihood over every predicted token of every window, as
:func:`haq_plugin.tasks.llm.perplexity.perplexity` computes it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from haq_plugin.api.errors import HaqError
from haq_plugin.hardware_models.llamacpp.extra import native_output_to, require_llama_cpp


def _window_nll(logits: np.ndarray, tokens: list[int]) -> float:
    """Summed NLL (nats) of ``tokens[1:]`` under ``logits[:-1]`` ``[len(tokens), vocabulary]``."""
    scores = logits[:-1].astype(np.float64)
    peak = scores.max(axis=1, keepdims=True)
    log_norm = peak[:, 0] + np.log(np.exp(scores - peak).sum(axis=1))
    targets = np.asarray(tokens[1:])
    return float((log_norm - scores[np.arange(targets.size), targets]).sum())


def gguf_perplexity(path: str | Path, windows: torch.Tensor, threads: int = 1) -> float:
    """llama.cpp's perplexity of the GGUF at ``path`` on ``windows`` ``[n, window]`` (token ids)."""
    llama_cpp = require_llama_cpp("llama.cpp perplexity needs llama-cpp-python")
    if windows.dim() != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must be [n_windows, window >= 2], not {list(windows.shape)}")
    width = int(windows.shape[1])
    log = Path(path).with_name(f".{Path(path).name}.load.log")
    try:
        with native_output_to(log):
            model = llama_cpp.Llama(model_path=str(path), n_ctx=width, n_batch=width, n_ubatch=width,
                                    n_threads=threads, n_threads_batch=threads, logits_all=True, verbose=False)
    except (ValueError, RuntimeError) as error:
        raise HaqError(f"llama.cpp cannot load {path}: {error}") from None
    finally:
        log.unlink(missing_ok=True)
    total, count = 0.0, 0
    try:
        for row in windows.tolist():
            model.reset()
            model.eval(row)
            total += _window_nll(np.asarray(model.scores[:width]), row)
            count += width - 1
    finally:
        model.close()
    return math.exp(total / count)
