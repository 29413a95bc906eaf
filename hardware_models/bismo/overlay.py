"""BISMO's counters: a layer lowered to bit-serial matrix products, and their cycles and traffic.

The machine and its schedules are described in
:mod:`~haq_plugin.hardware_models.bismo`; this module holds the arithmetic,
vectorised over bit pairs, so that the hardware-model module stays about
configuration and reporting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from haq_plugin.api.layers import LayerSpec

ACC_BITS = 32
"""BISMO's accumulator width (``accWidth = 32`` in BitSerialMatMulParams)."""


def ceil_div(a: Any, b: Any) -> Any:
    """Ceiling division for ints and integer numpy arrays."""
    return -(-a // b)


@dataclass(frozen=True)
class Lowering:
    """A layer as ``runs * products`` independent products of ``m x k x n`` (bit-serial) matrices.

    ``packed_groups`` groups share one block-diagonal product (1 for dense layers).
    """

    runs: int
    products: int
    m: int
    k: int
    n: int
    packed_groups: int


@dataclass(frozen=True)
class Overlay:
    """The derived machine constants a cost evaluation needs."""

    dm: int
    dn: int
    dk: int
    port_bits: int
    ports: int
    buffer_bits: int
    output_bits: int
    overlap: bool = True
    """True: fetch, execute and result stages run concurrently (BISMO's token pipeline); False: they take turns."""

    def stream_ports(self) -> tuple[int, int, int]:
        """AXI port of the activation, weight and output streams."""
        if self.ports >= 3:
            return (0, 1, 2)
        if self.ports == 2:
            return (0, 0, 1)
        return (0, 0, 0)


def lowerings(layer: LayerSpec, batch: int, per_sample: bool, dk: int, dn: int) -> list[Lowering]:
    """Every lowering of ``layer`` worth costing: per-group products and block-diagonal packings."""
    groups = layer.groups
    kh, kw = layer.kernel_size
    k_group = layer.in_channels // groups * kh * kw
    n_group = layer.out_channels // groups
    if layer.kind == "linear":
        runs, m = 1, batch
    else:
        oh, ow = layer.out_size  # type: ignore[misc]
        runs, m = (batch, oh * ow) if per_sample else (1, batch * oh * ow)
    packings = {1, groups}
    for j in range(1, 5):
        packings.add(j * dk // k_group)
        packings.add(j * dn // n_group)
    packings = sorted(p for p in packings if 1 <= p <= groups)
    return [Lowering(runs, ceil_div(groups, p), m, p * k_group, p * n_group, p) for p in packings]


def _port_cycles(bits: Sequence[np.ndarray], ov: Overlay) -> np.ndarray:
    """Cycles of the busiest AXI port, given the bits of the activation, weight and output streams."""
    ports = ov.stream_ports()
    busy = [sum(b for b, port in zip(bits, ports) if port == p) for p in sorted(set(ports))]
    return np.max(np.stack([np.broadcast_to(b, bits[0].shape) for b in busy]), axis=0) / ov.port_bits


def evaluate(ov: Overlay, low: Lowering, w: np.ndarray, a: np.ndarray) -> dict[str, np.ndarray]:
    """Counters of both schedules for one lowering and many bit pairs: arrays of shape (2, pairs)."""
    mt, kt, nt = ceil_div(low.m, ov.dm), ceil_div(low.k, ov.dk), ceil_div(low.n, ov.dn)
    cap = ov.buffer_bits
    k_fit = cap // (2 * ov.dk * np.maximum(ov.dm * a, ov.dn * w))  # >= 1: checked by Bismo.setup
    chunks = ceil_div(kt, np.minimum(k_fit, kt))
    kt_chunk = ceil_div(kt, chunks)
    act_stripe = ov.dm * kt_chunk * ov.dk * a
    wgt_stripe = ov.dn * kt_chunk * ov.dk * w
    weight_blocks = np.where(nt * wgt_stripe <= cap, 1, ceil_div(nt, np.maximum(cap // (2 * wgt_stripe), 1)))
    act_blocks = np.where(mt * act_stripe <= cap, 1, ceil_div(mt, np.maximum(cap // (2 * act_stripe), 1)))
    per_product = low.products * low.runs * chunks
    act_bits = np.stack([mt * act_stripe * weight_blocks, mt * act_stripe]) * per_product
    wgt_bits = np.stack([nt * wgt_stripe, nt * wgt_stripe * act_blocks]) * per_product
    out_elem_bits = np.where(chunks > 1, chunks * ACC_BITS, ov.output_bits or a)
    out_bits = np.broadcast_to(low.products * low.runs * mt * ov.dm * nt * ov.dn * out_elem_bits, act_bits.shape)
    compute = np.broadcast_to(low.products * low.runs * mt * kt * nt * w * a, act_bits.shape)
    first = [act_stripe, wgt_stripe, np.zeros_like(a)]
    last = [np.zeros_like(a), np.zeros_like(a), ov.dm * ov.dn * (ov.output_bits or a)]
    edges = low.runs * (_port_cycles(first, ov) + _port_cycles(last, ov))
    ports = _port_cycles([act_bits, wgt_bits, out_bits], ov)
    steady = np.maximum(compute, ports) if ov.overlap else compute + ports
    return {
        "cycles": steady + edges, "compute_cycles": compute.astype(float),
        "activation_bits_read": act_bits, "weight_bits_read": wgt_bits, "dram_bits_written": out_bits,
        "weight_fetches": np.stack([np.ones_like(a), act_blocks]) * low.runs,
        "activation_fetches": np.stack([weight_blocks, np.ones_like(a)]),
        "k_chunks": np.broadcast_to(chunks, act_bits.shape),
    }
