"""A searched policy in llama.cpp's K types, written by llama.cpp's own quantizer.

``haq-plugin export --format gguf --gguf-types k`` (needs the ``llamacpp`` extra).
The exact export (:mod:`.gguf_export`) stores 2 to 4-bit layers in Q4_1, because
the ``gguf`` package cannot write the K types, so its files are no smaller below
4 bits.  Here the searched, fake-quantized weights are written as float32 into a
staging GGUF, and ``llama_model_quantize`` (the library behind ``llama-quantize``)
re-quantizes each searched tensor to the K type of its bits, through one
per-tensor override each:

===========  ======  =============================================
weight bits  type    bits per weight (scales included)
===========  ======  =============================================
2            Q2_K    2.625
3            Q3_K    3.4375
4            Q4_K    4.5
5            Q5_K    5.5
6            Q6_K    6.5625
7, 8         Q8_0    8.5
===========  ======  =============================================

Two things differ from the search, and both are reported, not hidden:

* **Grids.** K types keep super-blocks of 256 weights with 4 to 8-bit sub-block
  scales (Q3_K and Q6_K have no minimum), not a float16 scale and minimum per
  group, so llama.cpp re-rounds the searched weights: the file is close to, not
  equal to, what the search measured.  ``--verify`` on the export measures the
  file's perplexity in llama.cpp beside the search's.
* **Row widths.** A K type needs rows of a multiple of 256 weights; llama.cpp
  writes any other row in a fallback type (Q4_0 or IQ4_NL for 2 and 3 bits, Q5_0
  for 4, Q5_1 for 5, Q8_0 for 6).  SmolLM2-135M's hidden size is 576, so every
  tensor but ``ffn_down`` falls back; :func:`fallbacks` lists them.

Tensors outside the search keep their own type (an override to the same type
is a copy in llama.cpp).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from haq_plugin import HaqError
from haq_plugin.adapters.groupwise.gguf_export import (
    field_value, open_source, recipe_path, searched_tensors, write_encoded, write_recipe)
from haq_plugin.adapters.groupwise.gguf_names import in_gguf_order
from haq_plugin.adapters.groupwise.gguf_types import RECIPE_TYPES

K_TYPES = {bits: kind.upper() for bits, kind in RECIPE_TYPES.items()}  # the recipe's types, written
SUPER_BLOCK = 256  # weights per K-type super-block: a row must be a multiple of it
# general.file_type llama.cpp records for the type that holds most searched weights
_FILE_TYPES = {"Q2_K": "MOSTLY_Q2_K", "Q3_K": "MOSTLY_Q3_K_M", "Q4_K": "MOSTLY_Q4_K_M", "Q5_K": "MOSTLY_Q5_K_M",
               "Q6_K": "MOSTLY_Q6_K", "Q8_0": "MOSTLY_Q8_0"}


def llama_quantize(source: Path, path: Path, types: Mapping[str, str], file_type: str, threads: int = 1,
                   pure: bool = True) -> None:
    """``llama_model_quantize(source -> path)`` with one exact-name override per entry of ``types``.

    ``types`` maps GGUF tensor names to ggml type names (``"Q3_K"``); every other
    2-D tensor gets ``file_type``'s type (a ``gguf.LlamaFileType`` name such as
    ``"MOSTLY_Q3_K_M"``), or, with ``pure=False``, llama.cpp's own mix for it: what
    ``llama-quantize SOURCE PATH Q3_K_M`` writes.
    """
    import gguf

    from haq_plugin.hardware_models.llamacpp.extra import native_output_to, require_llama_cpp

    llama_cpp = require_llama_cpp("--gguf-types k writes with llama.cpp's quantizer")
    names = list(types)
    patterns = [f"^{name.replace('.', chr(92) + '.')}$".encode() for name in names]
    overrides = (llama_cpp.llama_model_tensor_override * (len(names) + 1))()
    for i, (pattern, name) in enumerate(zip(patterns, names)):
        overrides[i].pattern = pattern
        overrides[i].type = int(gguf.GGMLQuantizationType[types[name]])
    overrides[len(names)].pattern = None  # the list ends at a null pattern
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = int(gguf.LlamaFileType[file_type])
    params.allow_requantize = True  # tensors outside the search may already be quantized (then copied)
    params.pure = pure
    params.tt_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    log = path.with_name(f".{path.name}.log")
    try:
        with native_output_to(log):
            status = llama_cpp.llama_model_quantize(str(source).encode(), str(path).encode(), ctypes.byref(params))
        said = log.read_text(errors="replace").strip().splitlines()
    finally:
        log.unlink(missing_ok=True)
    if status != 0:
        last = said[-1] if said else "no message"
        raise HaqError(f"llama.cpp's quantizer failed on {source} (status {status}): {last}")


def written_types(path: Path) -> dict[str, str]:
    """Every tensor's type name in the GGUF at ``path``."""
    from gguf import GGUFReader

    return {tensor.name: tensor.tensor_type.name for tensor in GGUFReader(str(path)).tensors}


def write_k_gguf(path: Path, source: Path, searched: Mapping[str, torch.Tensor], bits: Mapping[str, int],
                 threads: int = 1) -> Path:
    """Write ``searched`` (per policy layer, the fake-quantized weight at its ``bits``) in K types.

    Also writes the ``llama-quantize`` recipe beside it: the types asked, which
    :func:`fallbacks` compares with the file.  The staging float32 file is removed.
    """
    from gguf import GGMLQuantizationType

    reader = open_source(source)
    tensors = searched_tensors(reader, searched)
    heads = int(field_value(reader, "llama.attention.head_count"))
    kv_heads = int(field_value(reader, "llama.attention.head_count_kv", heads))
    encoded = {tensor: (in_gguf_order(searched[layer].detach().cpu(), tensor, heads, kv_heads)
                        .to(torch.float32).numpy(), GGMLQuantizationType.F32) for tensor, layer in tensors.items()}
    asked = {tensor: K_TYPES[bits[layer]] for tensor, layer in tensors.items()}
    kept = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors
            if tensor.name not in asked and len(tensor.shape) >= 2}
    weights_of: dict[str, int] = {}
    for tensor, layer in tensors.items():
        weights_of[asked[tensor]] = weights_of.get(asked[tensor], 0) + int(np.prod(searched[layer].shape))
    staging = path.with_name(f".{path.name}.f32.gguf")
    partial = path.with_name(f".{path.name}.partial")
    try:
        write_encoded(staging, reader, encoded)
        main_type = max(weights_of, key=weights_of.get)
        llama_quantize(staging, partial, {**asked, **kept}, _FILE_TYPES.get(main_type, "MOSTLY_Q8_0"), threads)
        os.replace(partial, path)
    finally:
        staging.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
    write_recipe(recipe_path(path), {tensor: bits[layer] for tensor, layer in tensors.items()})
    return path


def fallbacks(path: Path) -> dict[str, tuple[str, str]]:
    """``{tensor: (asked, written)}`` where the GGUF at ``path`` holds another type than its recipe asks."""
    asked = {}
    for line in recipe_path(path).read_text().split():
        tensor, _, kind = line.partition("=")
        asked[tensor] = kind.upper()
    written = written_types(path)
    return {tensor: (kind, written.get(tensor, "missing")) for tensor, kind in asked.items()
            if written.get(tensor) != kind}


def describe_fallbacks(found: Mapping[str, tuple[str, str]]) -> str:
    """One line counting the fallbacks by (asked, written) pair, e.g. ``180 tensors: 120 Q3_K->Q4_0, ...``."""
    pairs: dict[tuple[str, str], int] = {}
    for pair in found.values():
        pairs[pair] = pairs.get(pair, 0) + 1
    listed = ", ".join(f"{n} {a}->{w}" for (a, w), n in sorted(pairs.items(), key=lambda item: -item[1]))
    return f"{len(found)} tensors: {listed}"
