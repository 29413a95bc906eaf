"""The cache of dequantized float weights, so a quantized checkpoint is decoded once.

Loading a GGUF file makes ``transformers`` dequantize every tensor (about 30 s for a
135M-parameter model), and ``save_pretrained`` refuses a model loaded that way.  So the
float weights are written with ``safetensors`` directly (a tied tensor once), next to the
config and the tokenizer files: the entry is an ordinary Hugging Face checkpoint that
``from_pretrained`` memory-maps back in seconds, without a second copy of the weights in
memory (``torch.load`` + ``load_state_dict`` took three times as long and twice the
memory, as the random initialisation of ``from_config`` comes first).  An entry is written into a temporary directory and
renamed into place, so an interrupted write never leaves a half entry that later loads
would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from haq_plugin.storage.cache import cache_dir

STATE_FILE = "model.safetensors"
SOURCE_FILE = "source.json"


def llm_cache_dir(*parts: str) -> Path:
    """``<cache>/llm/<parts>`` (created), under haq-plugin's one cache root."""
    return cache_dir("llm", *parts)


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    """The SHA-256 of a file, read in chunks (a GGUF file is hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def has_float_entry(directory: Path) -> bool:
    """Whether ``directory`` holds a complete entry (the rename makes it all or nothing)."""
    return (directory / STATE_FILE).is_file() and (directory / "config.json").is_file()


def save_float_entry(directory: Path, model: Any, tokenizer: Any, source: dict[str, Any]) -> None:
    """Write ``model``'s float weights, config and tokenizer to ``directory``, atomically."""
    from safetensors.torch import save_file

    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        save_file(_unshared(model.state_dict()), staging / STATE_FILE, metadata={"format": "pt"})
        model.config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / SOURCE_FILE).write_text(json.dumps(source, indent=2, sort_keys=True) + "\n")
        try:
            staging.rename(directory)
        except OSError:  # another process finished the same entry first: keep theirs
            if not has_float_entry(directory):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with each storage once (safetensors refuses shared tensors); the first name wins,
    which for tied embeddings keeps the embedding and drops ``lm_head.weight``, re-tied on load."""
    seen: set[tuple[int, int]] = set()
    kept = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        kept[name] = tensor.detach().contiguous()
    return kept


def load_float_entry(directory: Path) -> tuple[Any, Any, dict[str, Any]]:
    """``(model, tokenizer, source)`` from an entry written by :func:`save_float_entry`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return model.eval(), tokenizer, read_source(directory)


def read_source(directory: Path) -> dict[str, Any]:
    """The provenance an entry was written with (empty when it has none)."""
    source_file = directory / SOURCE_FILE
    return json.loads(source_file.read_text()) if source_file.is_file() else {}
