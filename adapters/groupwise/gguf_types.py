"""GGUF block types for the groupwise grid's bit widths, and those blocks built from the grid's levels.

``haq-plugin export --format gguf`` stores each searched layer in the smallest GGUF
type that the ``gguf`` Python package can write and that holds the search's
fake-quantized weights exactly or nearly so.  ``gguf`` 0.19 writes F32, F16,
BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, TQ1_0, TQ2_0 and MXFP4; its K types (Q2_K to
Q6_K) and IQ types only dequantize (``gguf.quants`` has no ``quantize_blocks``
for them), so they need llama.cpp's own quantizer, ``llama-quantize``.  Hence two
columns: the type written, and the K type of the ``.tensor-types.txt`` recipe
that a user hands to ``llama-quantize --tensor-type`` on a full-precision GGUF:

============  ============  =======================================  ===========
weight bits   type written  how close to the searched weights        recipe type
============  ============  =======================================  ===========
2, 3, 4       Q4_1          exact (bit for bit)                      q2_k, q3_k, q4_k
5             Q5_1          exact (bit for bit)                      q5_k
6, 7, 8       Q8_0          within 0.44 % of the block's amax        q6_k, q8_0, q8_0
============  ============  =======================================  ===========

Why exact: Q4_1 is a block of 32 weights with a float16 scale ``d``, a float16
minimum ``m`` and 4-bit levels, ``w = d * q + m``.  The float grid (``zero_point=float``)
stores a float16 ``low`` and ``scale`` per group and levels ``q`` in
``[0, 2**bits - 1]``, ``w = q * scale + low``; with groups of 32, 64, 128, 256 or one
per row, every block of 32 lies inside one group, so ``d = scale``, ``m = low`` and
the same levels give the same float32 products and sums.  Any 2 to 4-bit level
fits in 4 bits; Q5_1 (the same with 5-bit levels) holds 5 bits.  Nothing smaller
fits: Q4_0 and Q5_0 have no minimum.  No writable type has 6 to 8-bit levels and a
minimum, so 6 to 8 bits are Q8_0 (a float16 scale per 32 weights, levels -127..127,
no minimum), quantized by ``gguf`` from the fake-quantized weights: each weight
moves by at most half a Q8_0 step, ``amax / 254`` of its block of 32, plus up to
127 times the float16 rounding of the step, ``amax / 2048``: 0.44 % of the block's
largest magnitude in all (tested).
7 bits has no K type; the recipe gives q8_0, the next wider.

Groups of 16 (two groups in one block) and torchao's integer zero point (a float32
scale) have no exact GGUF block and are refused with a :class:`HaqError`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from haq_plugin import HaqError
from haq_plugin.adapters.groupwise.gptq import GroupLevels
from haq_plugin.adapters.groupwise.grid import GroupGrid, float_grid_codes
from haq_plugin.adapters.groupwise.weights import float_grid_of

BLOCK = 32  # weights per block of Q4_1, Q5_1 and Q8_0
WRITTEN_TYPES = {2: "Q4_1", 3: "Q4_1", 4: "Q4_1", 5: "Q5_1", 6: "Q8_0", 7: "Q8_0", 8: "Q8_0"}
RECIPE_TYPES = {2: "q2_k", 3: "q3_k", 4: "q4_k", 5: "q5_k", 6: "q6_k", 7: "q8_0", 8: "q8_0"}


def written_type(bits: int) -> Any:
    """The ``gguf.GGMLQuantizationType`` a layer searched at ``bits`` is written in (the table above)."""
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[WRITTEN_TYPES[bits]]


def check_grid(grid: GroupGrid) -> None:
    """Refuse the grids no GGUF block holds exactly (see the module docstring)."""
    if grid.zero_point != "float":
        raise HaqError("--format gguf: the policy was searched with zero_point=integer (torchao's grid), which no "
                       "GGUF block type holds; search with the default zero_point=float (llama.cpp's grid).")
    if grid.group_size and grid.group_size % BLOCK:
        raise HaqError(f"--format gguf: group_size={grid.group_size} puts two groups in one GGUF block of {BLOCK} "
                       "weights; search with group_size 32, 64, 128, 256 or 0.")


def _half_bytes(values: np.ndarray) -> np.ndarray:
    """``[n, 1]`` float32 values as ``[n, 2]`` bytes of float16 (they are float16 values already)."""
    return values.astype(np.float16).view(np.uint8)


def _nibbles(levels: np.ndarray) -> np.ndarray:
    """``[n, 32]`` levels as ``[n, 16]`` bytes: level j in byte j's low nibble, level j + 16 in its high one."""
    low = levels & np.uint8(0x0F)
    return low[:, :16] | (low[:, 16:] << np.uint8(4))


def pack_blocks(levels: np.ndarray, low: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    """Q4_1 (bits <= 4) or Q5_1 (bits 5) blocks: ``d``, ``m``, [the fifth bits], the nibbles."""
    parts = [_half_bytes(scale), _half_bytes(low)]
    if bits == 5:  # Q5_1: bit 4 of level j is bit j of a little-endian 32-bit word
        parts.append(np.packbits(levels >> np.uint8(4), axis=1, bitorder="little"))
    return np.concatenate(parts + [_nibbles(levels)], axis=1)


def gguf_blocks(weight: torch.Tensor, bits: int, grid: GroupGrid) -> tuple[np.ndarray, Any]:
    """``weight`` (float, ``[out, in]``) rounded on ``grid`` at ``bits`` as GGUF bytes ``[out, bytes per row]``.

    Returns the bytes and their ``GGMLQuantizationType``; the values they decode to
    are the fake-quantized weights of the search (exactly for Q4_1 and Q5_1).
    """
    check_grid(grid)
    groups, low, scale = float_grid_of(weight.to(torch.float32), bits, grid)
    return levels_blocks(GroupLevels(float_grid_codes(groups, bits, low, scale).to(torch.uint8), low, scale), bits)


def levels_blocks(levels: GroupLevels, bits: int) -> tuple[np.ndarray, Any]:
    """Levels already chosen (by rounding to nearest or by GPTQ) as GGUF bytes ``[out, bytes per row]``."""
    import gguf

    out, n_groups, size = levels.levels.shape
    if (n_groups * size) % BLOCK:
        raise HaqError(f"--format gguf: a row of {n_groups * size} weights is not a whole number of GGUF blocks "
                       f"of {BLOCK}.")
    if size % BLOCK:
        raise HaqError(f"--format gguf: groups of {size} weights put two groups in one GGUF block of {BLOCK}.")
    qtype = written_type(bits)
    low, scale = levels.low.detach().cpu().to(torch.float32), levels.scale.detach().cpu().to(torch.float32)
    codes = levels.levels.detach().cpu()
    if qtype == gguf.GGMLQuantizationType.Q8_0:
        values = GroupLevels(codes, low, scale).values((out, n_groups * size))
        return gguf.quants.quantize(values.numpy(), qtype), qtype
    per_group = size // BLOCK
    blocks = pack_blocks(codes.reshape(-1, BLOCK).numpy(),
                         low.unsqueeze(2).expand(out, n_groups, per_group, 1).reshape(-1, 1).numpy(),
                         scale.unsqueeze(2).expand(out, n_groups, per_group, 1).reshape(-1, 1).numpy(), bits)
    return blocks.reshape(out, -1), qtype
