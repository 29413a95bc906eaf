"""The Bit Fusion cost rules shared by both tile searches, as plain functions.

The Bit Fusion authors' simulator (Sharma et al., ISCA 2018; public repository
``hsharma35/bitfusion``) picks, for every layer, the loop order and tiling with the
fewest cycles.  Everything that does *not* depend on the loop order lives here:
tile candidates, footprints, the fusion factor, the inner dataflow (on-chip
accesses), compute cycles, the stall formula and the energy sum.  The numbered
rules refer to ``tests/data/bitfusion/REFERENCE.md``, which records them and the
data that proves them.

Every function takes Python ints or numpy integer arrays alike (integer
arithmetic only, ceilings as ``-(-a // b)``), so the exhaustive reference search
and the vectorised search run the very same formulas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

PSUM_BITS = 32
"""Partial sums are 32 bits wide (simulator's accumulator width, rules 3 and 5)."""

LOOPS = ("B", "OW", "OH", "IC", "OC")
"""The five tiled loops of the authors' loop nest (rule 2); K is never tiled."""

RELEVANT = {
    "wgt": frozenset({"IC", "OC"}),
    "act": frozenset({"B", "OW", "OH", "IC"}),
    "out": frozenset({"B", "OW", "OH", "OC"}),
}
"""Which loops index each DRAM stream (rule 4); output fill and drain share ``out``."""

COUNTERS = ("cycles", "stall_cycles", "wbuf_read", "wbuf_write", "ibuf_read", "ibuf_write",
            "obuf_read", "obuf_write", "dram_read", "dram_write")
"""The ten counters of the authors' results file; buffer and DRAM counters are in bits."""

DATAFLOWS = ("IS", "OS", "WS")
"""Input-, output- and weight-stationary, in the simulator's tie-break order (rule 5)."""


def ceil_div(a: Any, b: Any) -> Any:
    """Exact ceiling division for ints and integer arrays."""
    return -(-a // b)


def ceil_log2(x: int) -> int:
    """Smallest i with 2**i >= x (0 for x = 1)."""
    return (int(x) - 1).bit_length()


@dataclass(frozen=True)
class ArraySpec:
    """The accelerator: an N x M systolic array of Fusion Units and three SRAMs.

    ``*_half_bits`` is half of each buffer's capacity in bits: the simulator
    double-buffers every SRAM, so one tile may use only half (rule 3).  The
    precision range 8 to 2 bits is ``high_prec``/``low_prec`` of the simulator's
    ``conf.ini`` and ``bf_e_conf.ini``: a Fusion Unit is built of 2-bit BitBricks
    and fuses up to 8-bit operands (ISCA 2018, section 3).
    """

    rows: int
    cols: int
    bandwidth_bits: int
    wbuf_half_bits: int
    ibuf_half_bits: int
    obuf_half_bits: int
    max_prec: int = 8
    min_prec: int = 2

    @classmethod
    def from_bytes(cls, rows: int, cols: int, bandwidth_bits: int, wbuf_bytes: int, ibuf_bytes: int,
                   obuf_bytes: int) -> "ArraySpec":
        return cls(rows, cols, bandwidth_bits, wbuf_bytes * 8 // 2, ibuf_bytes * 8 // 2, obuf_bytes * 8 // 2)


@dataclass(frozen=True)
class EnergyTable:
    """Energy constants in pJ: per non-stall cycle for the core, per bit for the rest (rule 9)."""

    core_per_cycle: float
    wbuf_read: float
    wbuf_write: float
    ibuf_read: float
    ibuf_write: float
    obuf_read: float
    obuf_write: float
    dram: float

    def energy_pj(self, compute: Any, wbuf_read: Any, wbuf_write: Any, ibuf_read: Any, ibuf_write: Any,
                  obuf_read: Any, obuf_write: Any, dram_read: Any, dram_write: Any) -> Any:
        """Rule 9.  One fixed summation order, so scalars and arrays give identical floats."""
        return (compute * self.core_per_cycle
                + wbuf_read * self.wbuf_read + wbuf_write * self.wbuf_write
                + ibuf_read * self.ibuf_read + ibuf_write * self.ibuf_write
                + obuf_read * self.obuf_read + obuf_write * self.obuf_write
                + (dram_read + dram_write) * self.dram)

    def of_counters(self, counters: dict[str, int]) -> float:
        """Energy in pJ of a finished counter set."""
        return self.energy_pj(counters["cycles"] - counters["stall_cycles"], counters["wbuf_read"],
                              counters["wbuf_write"], counters["ibuf_read"], counters["ibuf_write"],
                              counters["obuf_read"], counters["obuf_write"], counters["dram_read"],
                              counters["dram_write"])


@dataclass(frozen=True)
class LoopNest:
    """One dense convolution (or matmul) as the simulator's five-loop nest.

    ``kh, kw`` is the kernel, ``eh, ew`` the kernel's extent on the input
    (``dilation * (k - 1) + 1``, equal to the kernel without dilation), ``oh, ow``
    the output size and ``sh, sw`` the stride.  ``im2col`` marks a layer that reads
    the raw network input (rules 3, 5 and 6).
    """

    kh: int
    kw: int
    eh: int
    ew: int
    oh: int
    ow: int
    sh: int
    sw: int
    ic: int
    oc: int
    batch: int
    im2col: bool

    @property
    def kernel_area(self) -> int:
        return self.kh * self.kw


@dataclass(frozen=True)
class Tiling:
    """Tile sizes of one candidate (rule 2)."""

    b: int
    oh: int
    ow: int
    ic: int
    oc: int


def fusion_factor(act_bits: Any, weight_bits: Any, array: ArraySpec) -> Any:
    """Rule 1: how many low-precision products one Fusion Unit computes per cycle."""
    pa = array.max_prec // _clamp_low(act_bits, array.min_prec)
    pw = array.max_prec // _clamp_low(weight_bits, array.min_prec)
    return pa * pw


def _clamp_low(bits: Any, low: int) -> Any:
    return max(bits, low) if isinstance(bits, int) else np.maximum(bits, low)


def _floor_at_zero(x: Any) -> Any:
    return max(x, 0) if isinstance(x, int) else np.maximum(x, 0)


def tile_candidates(nest: LoopNest, array: ArraySpec) -> dict[str, list[int]]:
    """Rule 2: power-of-two tile sizes per loop, clipped to the loop's extent.

    Output tiles share one power-of-two side for both dimensions (the simulator's
    square tiles), each clipped to its own extent, so square outputs follow the
    simulator exactly and non-square ones generalise it.
    """
    side = max(nest.oh, nest.ow)
    powers = [2 ** i for i in range(ceil_log2(side) + 1)]
    if nest.im2col:
        oc_tiles = [min(2 ** i, nest.oc) for i in range(ceil_log2(nest.oc) + 1)]
    else:
        oc_tiles = [min(2 ** i * array.cols, nest.oc) for i in range(ceil_log2(ceil_div(nest.oc, array.cols)) + 1)]
    return {
        "b": [min(2 ** i, nest.batch) for i in range(ceil_log2(nest.batch) + 1)],
        "oh": [min(p, nest.oh) for p in powers],
        "ow": [min(p, nest.ow) for p in powers],
        "ic": [min(2 ** i, nest.ic) for i in range(ceil_log2(nest.ic) + 1)],
        "oc": oc_tiles,
    }


def trip_counts(nest: LoopNest, b: Any, oh: Any, ow: Any, ic: Any, oc: Any) -> dict[str, Any]:
    """Rule 2: trips per loop; edge tiles are charged as full tiles."""
    return {"B": ceil_div(nest.batch, b), "OW": ceil_div(nest.ow, ow), "OH": ceil_div(nest.oh, oh),
            "IC": ceil_div(nest.ic, ic), "OC": ceil_div(nest.oc, oc)}


def weight_footprint(nest: LoopNest, array: ArraySpec, ic: Any, oc: Any, weight_bits: Any, pf: Any) -> Any:
    """Rule 3: the reduction is padded to a multiple of N * pf; oc is not padded."""
    lanes = array.rows * pf
    return ceil_div(nest.kernel_area * ic, lanes) * lanes * oc * weight_bits


def act_footprint(nest: LoopNest, b: Any, oh: Any, ow: Any, ic: Any, act_bits: Any) -> Any:
    """Rule 3: im2col tiles hold every window; other tiles hold the halo (border padding ignored)."""
    if nest.im2col:
        return ow * oh * nest.kernel_area * ic * b * act_bits
    return (nest.ew + (ow - 1) * nest.sw) * (nest.eh + (oh - 1) * nest.sh) * ic * b * act_bits


def out_footprint(array: ArraySpec, b: Any, oh: Any, ow: Any, oc: Any) -> Any:
    """Rule 3: 32-bit partial sums, output channels padded to the M columns."""
    return ow * oh * ceil_div(oc, array.cols) * array.cols * b * PSUM_BITS


def compute_cycles_per_tile(nest: LoopNest, array: ArraySpec, b: Any, oh: Any, ow: Any, ic: Any, oc: Any,
                            pf: Any) -> Any:
    """Rule 6."""
    lanes = array.rows * pf
    if nest.im2col:
        return b * oh * ow * ceil_div(oc, array.cols) * ceil_div(nest.kernel_area * ic, lanes)
    return b * ceil_div(oc, array.cols) * ow * oh * nest.kernel_area * ceil_div(ic, lanes)


def onchip_accesses(nest: LoopNest, array: ArraySpec, trips_product: Any, b: Any, oh: Any, ow: Any, ic: Any,
                    oc: Any, act_bits: Any, weight_bits: Any, pf: Any) -> dict[str, Any]:
    """Rule 5: choose the cheapest inner dataflow and count buffer reads/writes.

    Returns ``dataflow`` (index into :data:`DATAFLOWS`) and the on-chip parts of
    ``wbuf_read``, ``ibuf_read``, ``obuf_read`` and ``obuf_write`` (OBUF traffic from
    DRAM is added by the promotion rule).  Works element-wise on arrays.
    """
    lanes = array.rows * pf
    if nest.im2col:
        red = ceil_div(nest.kernel_area * ic, lanes) * lanes
    else:
        red = ceil_div(ic, lanes) * lanes * nest.kernel_area
    cols = ceil_div(oc, array.cols) * array.cols
    pix = b * oh * ow
    est_is = red * pix * (act_bits + cols * (weight_bits + PSUM_BITS))
    est_os = cols * pix * (PSUM_BITS + red * (act_bits + weight_bits))
    est_ws = red * cols * (weight_bits + pix * (act_bits + PSUM_BITS))
    flow = np.where(est_is <= np.minimum(est_os, est_ws), 0, np.where(est_os <= est_ws, 1, 2))
    area = nest.kernel_area * ic * oh * ow * b
    macs = area * oc
    t = trips_product
    is_, os_ = flow == 0, flow == 1
    psum_traffic = np.where(os_, t * oc * oh * ow * b * PSUM_BITS, t * macs * PSUM_BITS)
    result = {
        "dataflow": flow,
        "ibuf_read": np.where(is_, t * area * act_bits, t * macs * act_bits),
        "wbuf_read": np.where(flow == 2, t * nest.kernel_area * ic * oc * weight_bits, t * macs * weight_bits),
        "obuf_read": psum_traffic,
        "obuf_write": psum_traffic,
    }
    if all(np.ndim(v) == 0 for v in result.values()):
        return {k: int(v) for k, v in result.items()}
    return result


def stall_cycles(compute: Any, prologue: Any, epilogue: Any, dram_read: Any, dram_write: Any,
                 bandwidth_bits: int) -> Any:
    """Rule 7: un-overlapped prologue/epilogue plus middle traffic not hidden by compute."""
    latency = ceil_div(prologue, bandwidth_bits) + ceil_div(epilogue, bandwidth_bits)
    middle = dram_read + dram_write - prologue - epilogue
    return _floor_at_zero(ceil_div(middle, bandwidth_bits) - compute) + latency


@dataclass(frozen=True)
class Mapping:
    """The chosen schedule of one layer and its counters (one group, one batch).

    ``loop_order`` lists the loops outermost first; a search may leave out loops
    whose trip count is 1 in every candidate, since they change nothing.
    """

    counters: dict[str, int]
    energy_pj: float
    dataflow: str
    tiling: Tiling
    loop_order: tuple[str, ...]

    def selection_key(self) -> tuple:
        """Rule 8 (fewest cycles, then least energy), then the counters for a total order."""
        return (self.counters["cycles"], self.energy_pj, *(self.counters[name] for name in COUNTERS))
