"""Timing a GGUF file with llama.cpp (through llama-cpp-python): seconds per decoded and per prompt token.

The protocol is what a chat on a laptop does: process a prompt of
``prompt_tokens`` in one batch, then generate ``decode_tokens`` one at a time,
in a context of ``context`` tokens, on ``threads`` threads.  Sampling is left
out (its cost does not depend on the weights' types): fixed token ids are fed
back, so every file runs exactly the same steps.

On a machine shared with other work a single step can take several times its
usual time, so the figures are medians: the decode time is the median over
every single-token step of every repeat, the prompt time the median over
repeats.  Files are timed interleaved (each round loads and times every file
once), so that a slow spell of the machine hits every file alike instead of
one of them; each load is followed by an untimed warm-up run (page the weights
in, build the compute graph).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from haq_plugin.api.errors import HaqError
from haq_plugin.hardware_models.llamacpp.extra import require_llama_cpp

WARMUP_TOKENS = 4


@dataclass(frozen=True)
class Protocol:
    """How a file is timed: threads, context size, prompt and generated tokens, repeats."""

    threads: int
    context: int
    prompt_tokens: int
    decode_tokens: int
    repeats: int

    def check(self) -> None:
        """The prompt and the generated tokens must fit the context."""
        needed = self.prompt_tokens + self.decode_tokens
        if needed > self.context:
            raise HaqError(f"hardware model 'llamacpp-cpu': prompt_tokens + decode_tokens = {needed} does not fit "
                           f"context={self.context}; raise context or lower them.")


@dataclass(frozen=True)
class Timing:
    """Median seconds per generated token and per prompt token of one file."""

    decode_s: float
    prompt_s: float


def _open(path: Path, protocol: Protocol) -> Any:
    llama_cpp = require_llama_cpp()
    try:
        return llama_cpp.Llama(model_path=str(path), n_ctx=protocol.context, n_batch=protocol.prompt_tokens,
                               n_threads=protocol.threads, n_threads_batch=protocol.threads, verbose=False)
    except (ValueError, RuntimeError) as error:
        raise HaqError(f"llama.cpp cannot load {path}: {error}") from None


def _tokens(count: int, vocabulary: int, start: int = 0) -> list[int]:
    """``count`` fixed token ids spread over the vocabulary (the same for every file of one model)."""
    return [(start + 7919 * i) % vocabulary for i in range(count)]


def run_once(model: Any, protocol: Protocol) -> tuple[float, list[float]]:
    """One prompt then ``decode_tokens`` single-token steps: (seconds per prompt token, seconds of each step)."""
    vocabulary = model.n_vocab()
    model.reset()
    start = time.perf_counter()
    model.eval(_tokens(protocol.prompt_tokens, vocabulary, start=1))
    prompt_s = (time.perf_counter() - start) / protocol.prompt_tokens
    steps = []
    for token in _tokens(protocol.decode_tokens, vocabulary, start=2):
        start = time.perf_counter()
        model.eval([token])
        steps.append(time.perf_counter() - start)
    return prompt_s, steps


def _warm_up(model: Any, protocol: Protocol) -> None:
    model.reset()
    model.eval(_tokens(protocol.prompt_tokens, model.n_vocab(), start=1))
    for token in _tokens(WARMUP_TOKENS, model.n_vocab(), start=3):
        model.eval([token])


def time_files(paths: Sequence[Path], protocol: Protocol) -> list[Timing]:
    """Median timings of ``paths``, measured in ``protocol.repeats`` interleaved rounds."""
    protocol.check()
    prompts: list[list[float]] = [[] for _ in paths]
    steps: list[list[float]] = [[] for _ in paths]
    for _ in range(protocol.repeats):
        for i, path in enumerate(paths):
            model = _open(path, protocol)
            try:
                _warm_up(model, protocol)
                prompt_s, decode = run_once(model, protocol)
            finally:
                model.close()
            prompts[i].append(prompt_s)
            steps[i].extend(decode)
    return [Timing(statistics.median(d), statistics.median(p)) for d, p in zip(steps, prompts)]
