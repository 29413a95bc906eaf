"""Stored size in bits per weight: how language-model quantization states a size budget.

``--budget 3.5bpw`` asks for 3.5 stored bits per weight, on average, over the
layers the search decides (for a language model: the decoder-block linears,
since the kept ``lm_head`` is fixed), scales and zero points included: a
backend that stores one float16 scale and zero point per group of 64 weights
pays 0.5 bits per weight on top of the integers (``weight_storage_bits``).
The search itself budgets a fraction of the 8-bit size, so the bits per weight
are turned into that fraction once, exactly: the free layers' share plus what
the fixed layers take at their fixed bits.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

from haq_plugin.api.errors import HaqError
from haq_plugin.api.layers import LayerSpec

_BPW = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*bpw\s*$", re.IGNORECASE)


def parse_bits_per_weight(text: Any) -> float | None:
    """``3.5`` for ``"3.5bpw"``; None for anything that is not a bits-per-weight budget."""
    if not isinstance(text, str):
        return None
    match = _BPW.match(text)
    return float(match.group(1)) if match else None


def policy_bits_per_weight(layers: Sequence[LayerSpec], bits: Mapping[str, tuple[int, int]], backend: Any,
                           names: Sequence[str] | None = None) -> float:
    """Stored bits per weight of a policy over ``names`` (default: every layer), as ``backend`` stores them."""
    chosen = set(names) if names is not None else {layer.name for layer in layers}
    part = [layer for layer in layers if layer.name in chosen]
    return (math.fsum(backend.weight_storage_bits(layer, bits[layer.name][0]) for layer in part)
            / sum(layer.params for layer in part))


def _stored_bits(table: Any, row: int, bits: int) -> float:
    """Bits that store layer ``row`` of a cost table at ``bits``: the table's size (bytes), the search's own count."""
    return 8.0 * float(table.metric("size")[row, table.index(bits), 0])


def bits_per_weight_fraction(bits_per_weight: float, table: Any, fixed_weight_bits: Mapping[str, int],
                             allowed: Sequence[int]) -> float:
    """The fraction of the 8-bit size that a budget of ``bits_per_weight`` over the free layers means.

    Sizes come from ``table``, so the fraction is exactly the one its size constraint
    budgets (with the backend's scales, :func:`~haq_plugin.engine.costs.with_backend_storage`).
    Refuses a budget below the smallest (every free layer at its fewest bits), naming it;
    one above the largest reachable is capped there.
    """
    layers = table.layers
    free = [i for i, layer in enumerate(layers) if layer.name not in fixed_weight_bits]
    if not free:
        raise HaqError("a bits-per-weight budget needs at least one layer the search may change; every layer "
                       "is kept or pinned.")
    params = sum(layers[i].params for i in free)
    low = math.fsum(_stored_bits(table, i, min(allowed)) for i in free) / params
    high = math.fsum(_stored_bits(table, i, max(allowed)) for i in free) / params
    if bits_per_weight < low * (1 - 1e-9):
        raise HaqError(f"budget {bits_per_weight:g}bpw is below the smallest size the search can reach: "
                       f"{math.ceil(low * 1e4) / 1e4:g} bits per weight (every searched layer at {min(allowed)} bits, "
                       "scales included); raise the budget, lower min_bits or use a larger group size.")
    fixed = math.fsum(_stored_bits(table, i, fixed_weight_bits[layer.name])
                      for i, layer in enumerate(layers) if layer.name in fixed_weight_bits)
    reference = math.fsum(_stored_bits(table, i, 8) for i in range(len(layers)))
    fraction = (min(bits_per_weight, high) * params + fixed) / reference
    return min(fraction, 1.0)


def table_bits_per_weight(table: Any, bits: Sequence[tuple[int, int]], names: Sequence[str]) -> float:
    """Stored bits per weight of a per-layer policy over ``names``, from a cost table's sizes (bytes)."""
    chosen = set(names)
    rows = [i for i, layer in enumerate(table.layers) if layer.name in chosen]
    stored = math.fsum(_stored_bits(table, i, bits[i][0]) for i in rows)
    return stored / sum(table.layers[i].params for i in rows)
