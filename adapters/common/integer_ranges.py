"""Integer ranges of HAQ's fake quantizers, shared by the torch.ao and torchao backends.

Both frameworks' ``FakeQuantize`` modules carry the same attributes
(``quant_min``/``quant_max``, ``zero_point`` and an observer in
``activation_post_process``), so one function changes a range in place for
either; nothing here imports a quantization framework.
"""

from __future__ import annotations

from typing import Any


def weight_range(bits: int) -> tuple[int, int]:
    """The signed integer range of ``bits``-bit symmetric weights."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def act_range(bits: int) -> tuple[int, int]:
    """The unsigned integer range of ``bits``-bit affine activations."""
    return 0, 2 ** bits - 1


def set_fake_quant_range(fq: Any, quant_min: int, quant_max: int) -> None:
    """Give the fake quantizer ``fq`` a new integer range and forget what its observer has seen."""
    observer = fq.activation_post_process
    observer.quant_min, observer.quant_max = quant_min, quant_max
    fq.quant_min, fq.quant_max = quant_min, quant_max
    observer.reset_min_max_vals()
    # A range from before the change must never quantize with the new bounds.
    fq.zero_point.clamp_(quant_min, quant_max)
