"""Llama tensors in transformers' names and llama.cpp's, and llama.cpp's row order of q and k.

A policy names layers as transformers does (``model.layers.3.self_attn.q_proj``);
a GGUF names tensors as llama.cpp does (``blk.3.attn_q.weight``).  ``lm_head`` is
``output.weight``, or ``token_embd.weight`` when the model ties it to the embedding
(llama.cpp then stores no ``output.weight`` and reads the embedding twice).

llama.cpp's converter reorders the rows of ``attn_q`` and ``attn_k`` of Llama
models for its rotary embedding (per head, the two halves of each row pair are
interleaved), and transformers' GGUF loader undoes it on load.  The export
therefore writes q and k in llama.cpp's order (:func:`llama_cpp_rows`), so that
llama.cpp computes the right attention and a reload through transformers gives
back the searched weights.  Rows are reordered whole, and every grid group lies
within a row, so reordering before or after rounding gives the same weights.
"""

from __future__ import annotations

import re

import torch

from haq_plugin import HaqError

ROLES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
         "mlp.down_proj": "ffn_down"}
HF_ROLES = {gguf: hf for hf, gguf in ROLES.items()}
_BLOCK_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.weight$")


def gguf_name(layer: str, tied: bool) -> str:
    """The GGUF tensor of a policy layer; :class:`HaqError` for a layer a Llama GGUF has no tensor for."""
    if layer == "lm_head":
        return "token_embd.weight" if tied else "output.weight"
    match = _BLOCK_LAYER.match(layer)
    if match is None or match.group(2) not in ROLES:
        raise HaqError(f"--format gguf: layer '{layer}' is not a Llama decoder linear (model.layers.N. followed by "
                       f"{', '.join(ROLES)}) nor lm_head; the GGUF export writes Llama-architecture models only.")
    return f"blk.{match.group(1)}.{ROLES[match.group(2)]}.weight"


def hf_name(tensor: str, tied: bool) -> str | None:
    """The policy layer of a GGUF tensor, or None for tensors outside the search (norms, the embedding)."""
    if tensor == "output.weight" or (tied and tensor == "token_embd.weight"):
        return "lm_head"
    match = _BLOCK_TENSOR.match(tensor)
    if match is None or match.group(2) not in HF_ROLES:
        return None
    return f"model.layers.{match.group(1)}.{HF_ROLES[match.group(2)]}"


def llama_cpp_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """``weight`` (``[heads * head_dim, in]``) with its rows in llama.cpp's rotary order for ``heads`` heads."""
    rows = weight.shape[0]
    if rows % (2 * heads):
        raise HaqError(f"--format gguf: {rows} rows do not split into {heads} heads of row pairs.")
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def in_gguf_order(weight: torch.Tensor, tensor: str, heads: int, kv_heads: int) -> torch.Tensor:
    """``weight`` as llama.cpp stores tensor ``tensor``: q and k rows reordered, every other tensor as is."""
    if ".attn_q." in tensor:
        return llama_cpp_rows(weight, heads)
    if ".attn_k." in tensor:
        return llama_cpp_rows(weight, kv_heads)
    return weight


def from_gguf_order(weight: torch.Tensor, tensor: str, heads: int, kv_heads: int) -> torch.Tensor:
    """The inverse of :func:`in_gguf_order`: a tensor read from a GGUF in transformers' row order."""
    groups = heads if ".attn_q." in tensor else kv_heads if ".attn_k." in tensor else 0
    if not groups:
        return weight
    rows = weight.shape[0]
    return weight.reshape(groups, rows // groups // 2, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)
