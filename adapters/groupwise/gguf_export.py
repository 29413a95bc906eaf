"""A searched policy as a GGUF file that llama.cpp loads, and the recipe for llama.cpp's own K types.

``haq-plugin export --backend groupwise --format gguf -o model.gguf`` writes:

* ``model.gguf``: the source GGUF (the file ``gguf:FILE`` or ``llm:NAME`` was loaded
  from) with every searched layer replaced by its fake-quantized weights in the
  type :mod:`haq_plugin.adapters.groupwise.gguf_types` chooses for its bits (Q4_1
  for 2-4 bits, Q5_1 for 5, Q8_0 for 6-8).  Its metadata (architecture, tokenizer,
  chat template) is copied; ``general.file_type`` becomes the type that holds
  most searched weights.  Tensors outside the search (norms, the embedding when not
  tied to a searched ``lm_head``) are copied as they are, in their own types.
* ``model.gguf.tensor-types.txt``: one ``TENSOR=TYPE`` line per searched layer
  (``blk.0.attn_q.weight=q3_k``), the K types of the same bits, for
  ``llama-quantize --tensor-type-file`` (or one ``--tensor-type`` per line) on the
  user's full-precision GGUF.  Only such lines: llama.cpp reads that file as
  whitespace-separated entries without comments.

Only Llama-architecture sources (``general.architecture`` ``llama``) are written:
the tensor names and the q/k row order are Llama's (:mod:`.gguf_names`).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from haq_plugin import HaqError
from haq_plugin.adapters.groupwise.gguf_names import gguf_name, in_gguf_order
from haq_plugin.adapters.groupwise.gguf_types import RECIPE_TYPES, check_grid, gguf_blocks, levels_blocks
from haq_plugin.adapters.groupwise.gptq import GroupLevels
from haq_plugin.adapters.groupwise.grid import GroupGrid
from haq_plugin.storage.files import write_text_atomic

RECIPE_SUFFIX = ".tensor-types.txt"
# written by GGUFWriter itself, or no longer true of the new file
_NOT_COPIED = ("general.architecture", "general.alignment", "general.file_type")


def field_value(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def open_source(source: Path) -> Any:
    """The source GGUF's reader; :class:`HaqError` unless it is a Llama model."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(source))
    except (OSError, ValueError) as error:
        raise HaqError(f"--format gguf: cannot read the source GGUF {source}: {error}") from None
    architecture = field_value(reader, "general.architecture")
    if architecture != "llama":
        raise HaqError(f"--format gguf: {source} is a {architecture!r} model; the GGUF export writes "
                       "Llama-architecture language models only (general.architecture 'llama').")
    return reader


def _copy_metadata(reader: Any, writer: Any) -> None:
    """Every key of the source but the file header's and :data:`_NOT_COPIED`, with its value types."""
    from gguf import GGUFValueType

    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in _NOT_COPIED:
            continue
        kind = field.types[0]
        writer.add_key_value(key, field.contents(), kind, field.types[-1] if kind == GGUFValueType.ARRAY else None)


def searched_tensors(reader: Any, weights: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """``{GGUF tensor: policy layer}``, every layer's tensor checked to exist with the layer's shape."""
    shapes = {tensor.name: tuple(int(d) for d in reversed(tensor.shape)) for tensor in reader.tensors}
    tied = "output.weight" not in shapes
    tensors = {gguf_name(layer, tied): layer for layer in weights}
    for tensor, layer in tensors.items():
        shape = tuple(weights[layer].shape)
        if shapes.get(tensor) != shape:
            found = f"is {list(shapes[tensor])}" if tensor in shapes else "is missing"
            raise HaqError(f"--format gguf: layer '{layer}' is {list(shape)} but tensor '{tensor}' of the source "
                           f"GGUF {found}; export from the GGUF the policy was searched on.")
    return tensors


def _main_file_type(types: Counter) -> Any:
    """``general.file_type`` of the type that holds most searched weights (llama.cpp shows it as the model's)."""
    from gguf import LlamaFileType

    name = types.most_common(1)[0][0].name
    return LlamaFileType.ALL_F32 if name == "F32" else LlamaFileType[f"MOSTLY_{name}"]


def write_gguf(path: Path, source: Path, weights: Mapping[str, torch.Tensor], bits: Mapping[str, int],
               grid: GroupGrid, levels: Mapping[str, GroupLevels] | None = None) -> Path:
    """Write the GGUF of ``weights`` (float, per policy layer) rounded at ``bits`` on ``grid``, and its recipe.

    ``levels`` (per layer, optional) are levels already chosen at the layer's bits,
    e.g. by GPTQ; they are written as they are instead of rounding ``weights``.
    Written atomically (a temporary file renamed); returns ``path``.
    """
    check_grid(grid)
    reader = open_source(source)
    tensors = searched_tensors(reader, weights)
    write_encoded(path, reader, encode_layers(reader, weights, bits, grid, levels))
    write_recipe(recipe_path(path), {tensor: bits[layer] for tensor, layer in tensors.items()})
    return path


def encode_layers(reader: Any, weights: Mapping[str, torch.Tensor], bits: Mapping[str, int],
                  grid: GroupGrid, levels: Mapping[str, GroupLevels] | None = None
                  ) -> dict[str, tuple[np.ndarray, Any]]:
    """``{GGUF tensor: (blocks, type)}`` of every layer of ``weights`` rounded at its ``bits`` on ``grid``.

    Separate from writing, so that files mixing layers encoded once can be assembled
    cheaply (:func:`write_encoded`).
    """
    check_grid(grid)
    tensors = searched_tensors(reader, weights)
    heads = int(field_value(reader, "llama.attention.head_count"))
    kv_heads = int(field_value(reader, "llama.attention.head_count_kv", heads))
    encoded = {}
    for tensor, layer in tensors.items():
        if levels is not None and layer in levels:
            chosen = levels[layer]
            ordered = GroupLevels(*(in_gguf_order(part.detach().cpu(), tensor, heads, kv_heads)
                                    for part in (chosen.levels, chosen.low, chosen.scale)))
            encoded[tensor] = levels_blocks(ordered, bits[layer])
            continue
        ordered = in_gguf_order(weights[layer].detach().cpu(), tensor, heads, kv_heads)
        encoded[tensor] = gguf_blocks(ordered, bits[layer], grid)
    return encoded


def write_encoded(path: Path, reader: Any, encoded: Mapping[str, tuple[np.ndarray, Any]]) -> Path:
    """The source of ``reader`` with the tensors of ``encoded`` replaced, written atomically to ``path``."""
    import gguf

    staging = path.with_name(f".{path.name}.partial")
    writer = gguf.GGUFWriter(str(staging), "llama")
    _copy_metadata(reader, writer)
    types: Counter = Counter()
    for tensor in reader.tensors:
        if tensor.name not in encoded:
            writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_dtype=tensor.tensor_type)
            continue
        data, qtype = encoded[tensor.name]
        types[qtype] += int(tensor.n_elements)
        writer.add_tensor(tensor.name, data, raw_dtype=qtype)
    writer.add_file_type(_main_file_type(types))
    if "general.quantization_version" not in reader.fields:
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path


def recipe_path(path: Path) -> Path:
    """``<path>.tensor-types.txt`` beside the GGUF."""
    return path.with_name(path.name + RECIPE_SUFFIX)


def write_recipe(path: Path, bits: Mapping[str, int]) -> Path:
    """``TENSOR=TYPE`` per GGUF tensor (the K type of its bits, :data:`RECIPE_TYPES`), in model order."""
    return write_text_atomic(path, "".join(f"{tensor}={RECIPE_TYPES[b]}\n" for tensor, b in bits.items()))
