"""Reference tile search: every loop order times every tiling, literally as the rules say.

This is the slow, obviously-correct search of the Bit Fusion simulator (rules 2 to
8 of ``tests/data/bitfusion/REFERENCE.md``): 120 loop orders times all power-of-two
tilings, one candidate at a time in plain Python.  It exists to prove the fast
search in :mod:`haq_plugin.hardware_models.bitfusion.search` exact on layers and
bit widths beyond the authors' reference data, and as the baseline of
``benchmarks/bitfusion_speed.py``.  Its only shortcut: a tiling whose footprint
overflows half a buffer is skipped before its loop orders are tried, since it is
infeasible under every order.
"""

from __future__ import annotations

import itertools

from haq_plugin.hardware_models.bitfusion.mapping import pack_plans
from haq_plugin.hardware_models.bitfusion.rules import (
    COUNTERS, DATAFLOWS, LOOPS, RELEVANT, ArraySpec, EnergyTable, LoopNest, Mapping, Tiling, act_footprint,
    compute_cycles_per_tile, fusion_factor, onchip_accesses, out_footprint, stall_cycles,
    tile_candidates, trip_counts, weight_footprint,
)
from haq_plugin.api.layers import LayerSpec


def exhaustive_layer_counters(layer: LayerSpec, array: ArraySpec, energy: EnergyTable, batch: int,
                              weight_bits: int, act_bits: int) -> dict[str, int]:
    """A whole layer's counters: every pack plan, each nest searched exhaustively, best by rule 8."""
    best: tuple[tuple, dict[str, int]] | None = None
    for plan in pack_plans(layer, array.cols, batch):
        parts = [(exhaustive_search(nest, array, energy, weight_bits, act_bits), n) for nest, n in plan.parts]
        total = {name: sum(m.counters[name] * n for m, n in parts) for name in COUNTERS}
        key = (total["cycles"], energy.of_counters(total), *total.values())
        if best is None or key < best[0]:
            best = (key, total)
    assert best is not None
    return best[1]


def exhaustive_search(nest: LoopNest, array: ArraySpec, energy: EnergyTable, weight_bits: int,
                      act_bits: int) -> Mapping:
    """Best schedule of ``nest`` by rule 8, trying every loop order and tiling."""
    pf = fusion_factor(act_bits, weight_bits, array)
    tiles = tile_candidates(nest, array)
    best: Mapping | None = None
    for b, side, ic, oc in itertools.product(tiles["b"], range(len(tiles["oh"])), tiles["ic"], tiles["oc"]):
        oh, ow = tiles["oh"][side], tiles["ow"][side]
        footprints = {
            "wgt": weight_footprint(nest, array, ic, oc, weight_bits, pf),
            "act": act_footprint(nest, b, oh, ow, ic, act_bits),
            "out": out_footprint(array, b, oh, ow, oc),
        }
        halves = {"wgt": array.wbuf_half_bits, "act": array.ibuf_half_bits, "out": array.obuf_half_bits}
        if any(footprints[s] > halves[s] for s in footprints):
            continue
        trips = trip_counts(nest, b, oh, ow, ic, oc)
        total_trips = 1
        for n in trips.values():
            total_trips *= n
        compute = total_trips * compute_cycles_per_tile(nest, array, b, oh, ow, ic, oc, pf)
        onchip = onchip_accesses(nest, array, total_trips, b, oh, ow, ic, oc, act_bits, weight_bits, pf)
        tiling = Tiling(b, oh, ow, ic, oc)
        for order in itertools.permutations(LOOPS):
            candidate = _evaluate_order(order, trips, footprints, halves, compute, onchip, array, energy, tiling)
            if best is None or candidate.selection_key() < best.selection_key():
                best = candidate
    if best is None:
        raise ValueError("no tiling fits the buffers")
    return best


def _evaluate_order(order: tuple[str, ...], trips: dict[str, int], footprints: dict[str, int],
                    halves: dict[str, int], compute: int, onchip: dict[str, int], array: ArraySpec,
                    energy: EnergyTable, tiling: Tiling) -> Mapping:
    """Rules 4, 7 and 9 for one loop order (outermost first)."""
    streams = {"wgt": "wgt", "act": "act", "fill": "out", "drain": "out"}
    volume = {s: footprints[kind] for s, kind in streams.items()}
    resident = dict(volume)
    promotable = {s: True for s in streams}
    for loop in reversed(order):
        n = trips[loop]
        for s, kind in streams.items():
            if not promotable[s]:
                volume[s] *= n
            elif loop in RELEVANT[kind]:
                volume[s] *= n
                if volume[s] > halves[kind]:
                    promotable[s] = False
                else:
                    resident[s] = volume[s]
    dram_read = volume["wgt"] + volume["act"] + volume["fill"]
    dram_write = volume["drain"]
    prologue = resident["wgt"] + resident["act"] + resident["fill"]
    epilogue = resident["drain"]
    stall = stall_cycles(compute, prologue, epilogue, dram_read, dram_write, array.bandwidth_bits)
    counters = {
        "cycles": compute + stall,
        "stall_cycles": stall,
        "wbuf_read": onchip["wbuf_read"],
        "wbuf_write": volume["wgt"],
        "ibuf_read": onchip["ibuf_read"],
        "ibuf_write": volume["act"],
        "obuf_read": volume["drain"] + onchip["obuf_read"],
        "obuf_write": volume["fill"] + onchip["obuf_write"],
        "dram_read": dram_read,
        "dram_write": dram_write,
    }
    assert tuple(counters) == COUNTERS
    return Mapping(counters, energy.of_counters(counters), DATAFLOWS[onchip["dataflow"]], tiling, order)

