"""Timing a GGUF file with llama.cpp (through llama-cpp-python): seconds per decoded and per prompt token.

The protocol is what a chat on a laptop does: process a prompt of
``prompt_tokens`` in one batch, then generate ``decode_tokens`` one at a time,
in a context of ``context`` tokens, on ``threads`` threads.  Sampling is left
out (its cost does not depend on the weights' types): fixed token ids are fed
back, so every file runs exactly the same steps.

On a machine shared with other work the time of a step changes by a factor of
two or more within minutes, as other jobs come and go, so files timed one after
the other would compare the machine's load, not the files.  All files are
therefore loaded together and timed interleaved at the finest grain: in every
round each file processes its prompt, then the files take their decode steps in
turn, one token each, so that step ``k`` of every file runs within milliseconds
of the others.  Each figure is paired with the first file's (the reference):
a file's time is the median, over all steps (prompts: rounds), of its ratio to
the reference's step at the same moment, times the reference's median.  Ratios
taken a few milliseconds apart cancel the load, medians drop the steps that a
context switch hit.  Prompts are paired per round only (each is one batch of
seconds), so prompt figures are far noisier than decode ones on a busy machine
(RESULTS.md section 12).  Every load is followed by an untimed warm-up (page the
weights in, build the compute graph).  Loading all files at once costs their
size in memory (13 files of a 135M model: about 3 GB).
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
        """The prompt and the generated tokens (and the warm-up's) must fit the context."""
        needed = self.prompt_tokens + max(self.decode_tokens, WARMUP_TOKENS)
        if needed > self.context:
            raise HaqError(f"hardware model 'llamacpp-cpu': prompt_tokens + decode_tokens (at least {WARMUP_TOKENS}) "
                           f"= {needed} does not fit context={self.context}; raise context or lower them.")


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


def _prompt(model: Any, protocol: Protocol) -> float:
    """Process the prompt from an empty cache: seconds per prompt token."""
    model.reset()
    start = time.perf_counter()
    model.eval(_tokens(protocol.prompt_tokens, model.n_vocab(), start=1))
    return (time.perf_counter() - start) / protocol.prompt_tokens


def _step(model: Any, token: int) -> float:
    """One generated token: seconds."""
    start = time.perf_counter()
    model.eval([token % model.n_vocab()])
    return time.perf_counter() - start


def _round(models: Sequence[Any], protocol: Protocol) -> tuple[list[float], list[list[float]]]:
    """Every file's prompt, then decode steps taken in turn across the files: (prompt per file, steps per file)."""
    prompts = [_prompt(model, protocol) for model in models]
    steps: list[list[float]] = [[] for _ in models]
    for token in _tokens(protocol.decode_tokens, 1 << 30, start=2):
        for i, model in enumerate(models):
            steps[i].append(_step(model, token))
    return prompts, steps


def _paired(samples: Sequence[Sequence[float]]) -> list[float]:
    """Each file's median ratio to file 0 over the same rounds or steps, times file 0's median."""
    reference = statistics.median(samples[0])
    return [reference * statistics.median(x / r for x, r in zip(row, samples[0])) for row in samples]


def time_files(paths: Sequence[Path], protocol: Protocol) -> list[Timing]:
    """Timings of ``paths`` in ``protocol.repeats`` rounds, each figure paired with the first file's."""
    protocol.check()
    models = [_open(path, protocol) for path in paths]
    try:
        for model in models:
            _prompt(model, protocol)
            for token in range(WARMUP_TOKENS):
                _step(model, 3 + token)
        prompts: list[list[float]] = [[] for _ in paths]
        steps: list[list[float]] = [[] for _ in paths]
        for _ in range(protocol.repeats):
            round_prompts, round_steps = _round(models, protocol)
            for i in range(len(paths)):
                prompts[i].append(round_prompts[i])
                steps[i].extend(round_steps[i])
    finally:
        for model in models:
            model.close()
    return [Timing(d, p) for d, p in zip(_paired(steps), _paired(prompts))]
