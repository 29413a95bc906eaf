"""The calibration files: the model's GGUF rewritten by the GGUF export with chosen tensors in chosen types.

The table is measured on files that ``haq-plugin export --format gguf`` itself
writes (:func:`~haq_plugin.adapters.groupwise.gguf_export.encode_layers` and
:func:`~haq_plugin.adapters.groupwise.gguf_export.write_encoded`): the same
block types, the same untouched tensors (norms, an untied embedding) and the same
metadata as the files a search exports, so what is timed is what a user runs.
The searched tensors' float weights come from dequantizing the source and
putting q and k back in transformers' row order, so every calibration file is
the source model requantized: it still generates text.  Every layer is encoded
once per type (:class:`Calibration`), and each file is assembled from those
blocks: rounding a 135M-weight model takes a minute on two cores, writing a mix
a few seconds.

Each type is written through one bit width that the export stores in it
(:data:`TYPE_BITS`); a type's speed does not depend on which of its widths
filled it, since the blocks have the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from haq_plugin.adapters.groupwise.gguf_export import encode_layers, open_source, write_encoded
from haq_plugin.adapters.groupwise.gguf_names import from_gguf_order, hf_name
from haq_plugin.adapters.groupwise.gguf_types import WRITTEN_TYPES
from haq_plugin.adapters.groupwise.grid import GroupGrid
from haq_plugin.api.errors import HaqError

#: A width the export writes in each type: its widest (2-4 bits share Q4_1, 6-8 share Q8_0).
TYPE_BITS: dict[str, int] = {qtype: bits for bits, qtype in sorted(WRITTEN_TYPES.items())}
TYPES: tuple[str, ...] = tuple(TYPE_BITS)
REFERENCE = "Q8_0"
GRID = GroupGrid(32)  # one group per GGUF block: the finest grid the export writes


Shape = tuple[int, int]


@dataclass(frozen=True)
class Tensor:
    """A searched tensor of the source: its GGUF name, its policy layer and its shape ``(out, in)``."""

    name: str
    layer: str
    shape: Shape


def shape_label(shape: Shape) -> str:
    """``out x in``, the table's key of a shape (``576x1536`` maps 1536 inputs to 576 outputs)."""
    return f"{shape[0]}x{shape[1]}"


def _tensors(reader: Any, source: Path) -> list[Tensor]:
    """The tensors of ``reader`` a search sets bits for (the decoder linears and ``lm_head``), in file order."""
    tied = "output.weight" not in {tensor.name for tensor in reader.tensors}
    found = []
    for tensor in reader.tensors:
        layer = hf_name(tensor.name, tied)
        if layer is not None:
            found.append(Tensor(tensor.name, layer, (int(tensor.shape[1]), int(tensor.shape[0]))))
    if not found:
        raise HaqError(f"hardware model 'llamacpp-cpu': {source} has no Llama decoder tensors (blk.N.attn_q.weight "
                       "...); give --hw-option model=gguf:FILE of a Llama-architecture GGUF.")
    return found


def _float_weights(reader: Any, tensors: list[Tensor]) -> dict[str, torch.Tensor]:
    """Every searched tensor dequantized, per policy layer, in transformers' row order."""
    from gguf import quants

    heads = int(reader.fields["llama.attention.head_count"].contents())
    kv_field = reader.fields.get("llama.attention.head_count_kv")
    kv_heads = int(kv_field.contents()) if kv_field is not None else heads
    wanted = {t.name: t for t in tensors}
    weights = {}
    for tensor in reader.tensors:
        if tensor.name in wanted:
            values = quants.dequantize(np.asarray(tensor.data), tensor.tensor_type).astype(np.float32)
            values = torch.from_numpy(values.reshape(wanted[tensor.name].shape))
            weights[wanted[tensor.name].layer] = from_gguf_order(values, tensor.name, heads, kv_heads)
    return weights


class Calibration:
    """A source GGUF, its searched tensors, and each of them encoded in every type of :data:`TYPES`."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.reader = open_source(source)
        self.tensors = _tensors(self.reader, source)
        weights = _float_weights(self.reader, self.tensors)
        self._encoded = {qtype: encode_layers(self.reader, weights, dict.fromkeys(weights, bits), GRID)
                         for qtype, bits in TYPE_BITS.items()}

    def write(self, path: Path, types: Mapping[str, str]) -> Path:
        """The source with every searched tensor in ``types[tensor name]`` (a :data:`TYPES` name)."""
        return write_encoded(path, self.reader, {t.name: self._encoded[types[t.name]][t.name] for t in self.tensors})


def type_bytes(shape: Shape, qtype: str) -> int:
    """Bytes of a tensor of ``shape`` in ``qtype``."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    return shape[0] * shape[1] // block * size
