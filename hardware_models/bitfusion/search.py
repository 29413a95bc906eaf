"""Fast exact tile search for the Bit Fusion model, vectorised with numpy.

The authors' simulator tries 120 loop orders times every power-of-two tiling, one
candidate at a time (about half a second per layer and bit pair in Python).  This
search returns the same optimum (same selection key, rule 8) for many bit pairs at
once, using five facts about the rules of ``tests/data/bitfusion/REFERENCE.md``:

1. *Only the promotion rule (4) depends on the loop order.*  Footprints,
   compute cycles and on-chip accesses (rules 3, 5, 6) are per tiling; they are
   computed once per tiling and bit pair, not once per order.
2. *A loop whose trip count is 1 changes nothing* (it multiplies a volume by 1,
   and a promotable volume already fits).  Loops with trip count 1 in every
   candidate are left out of the orders, e.g. the batch loop at batch 1 or both
   output loops of a matmul.  When the output is square, OW and OH have equal trip
   counts and the same relevance in every tiling, so orders that only swap them
   are identical and one of each pair is kept: 60 orders instead of 120 at most,
   12 at batch 1.
3. *Promotion is a threshold test.*  For one order and one stream, the walk from
   the innermost loop multiplies the stream's relevant trip counts into a
   cumulative product ``c_1 <= c_2 <= ...``; the stream stops being promotable at
   the first ``j`` with ``footprint * c_j > H``, i.e. ``c_j > H // footprint``.
   The products ``c_j`` and the resulting volume multipliers depend only on the
   tiling and the order, never on the bit widths, so they are built once per layer
   and each bit pair only compares them against its own ``H // footprint``.
4. *An output tile that overflows half the OBUF is infeasible for every bit
   pair* (partial sums are always 32 bits), and a tiling infeasible for all the
   requested pairs can be dropped; this removes most tilings before any order is
   looked at.

Ties are broken exactly as :meth:`Mapping.selection_key` orders them: fewest
cycles, then least energy (same float formula as the reference), then the
counters; energy is only evaluated for the few candidates that tie on cycles.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from haq_plugin.hardware_models.bitfusion.rules import (
    COUNTERS, DATAFLOWS, LOOPS, RELEVANT, ArraySpec, EnergyTable, LoopNest, Mapping, Tiling, act_footprint,
    ceil_div, compute_cycles_per_tile, fusion_factor, onchip_accesses, out_footprint, stall_cycles, tile_candidates,
    trip_counts, weight_footprint,
)

_INFEASIBLE = np.iinfo(np.int64).max // 4
_CHUNK_ELEMENTS = 1 << 21  # bound on pairs x orders x tilings per numpy pass (memory, cache)
_SEEDS_PER_PAIR = 2  # tilings per pair, lowest bound first, that set the upper bound (fact 5)


@dataclass
class _Tilings:
    """All tilings that can be feasible for some requested pair, as parallel arrays."""

    b: np.ndarray
    oh: np.ndarray
    ow: np.ndarray
    ic: np.ndarray
    oc: np.ndarray
    trips: dict[str, np.ndarray]
    total_trips: np.ndarray
    out_footprint: np.ndarray

    def take(self, keep: np.ndarray) -> "_Tilings":
        return _Tilings(self.b[keep], self.oh[keep], self.ow[keep], self.ic[keep], self.oc[keep],
                        {k: v[keep] for k, v in self.trips.items()}, self.total_trips[keep],
                        self.out_footprint[keep])


@dataclass
class _StreamTable:
    """Per stream: cumulative relevant products ``cum[j]`` and volume multipliers ``vol[j]``.

    Index ``j`` is the number of relevant loops that still fit (0..r); both
    arrays have shape (r + 1, orders, tilings).  A stream whose first ``j``
    relevant loops fit has resident size ``footprint * cum[j]`` and volume
    ``footprint * vol[j]``.
    """

    cum: np.ndarray
    vol: np.ndarray

    def promote(self, footprint: np.ndarray, half_bits: int) -> tuple[np.ndarray, np.ndarray]:
        """Volumes and resident sizes for footprints of shape (..., tilings)."""
        cap = (half_bits // footprint)[..., None, :]
        fitting = np.zeros(np.broadcast_shapes(cap.shape, self.cum.shape[1:]), dtype=np.int64)
        for j in range(1, self.cum.shape[0]):
            fitting += self.cum[j] <= cap
        volume = np.choose(fitting, self.vol) * footprint[..., None, :]
        resident = np.choose(fitting, self.cum) * footprint[..., None, :]
        return volume, resident


def fast_search(nest: LoopNest, array: ArraySpec, energy: EnergyTable,
                pairs: Sequence[tuple[int, int]]) -> list[Mapping]:
    """Best schedule of ``nest`` for each ``(weight_bits, act_bits)`` pair, as rule 8 picks it."""
    bits = _Bits.of(pairs, array)
    tilings = _feasible_tilings(nest, array, bits)
    if tilings.b.size == 0:
        raise ValueError("no tiling fits the buffers")
    bound = _lower_bounds(nest, array, tilings, bits)
    seed = np.unique(np.argsort(bound, axis=1, kind="stable")[:, :_SEEDS_PER_PAIR])
    upper = np.array([m.counters["cycles"] for m in _search(nest, array, energy, tilings.take(seed), bits)])
    return _search(nest, array, energy, tilings.take((bound <= upper[:, None]).any(axis=0)), bits)


@dataclass
class _Bits:
    """The requested (weight, activation) pairs as arrays, with their fusion factors."""

    weight: np.ndarray
    act: np.ndarray
    pf: np.ndarray

    @classmethod
    def of(cls, pairs: Sequence[tuple[int, int]], array: ArraySpec) -> "_Bits":
        weight = np.array([w for w, _ in pairs], dtype=np.int64)
        act = np.array([a for _, a in pairs], dtype=np.int64)
        return cls(weight, act, fusion_factor(act, weight, array))

    def __len__(self) -> int:
        return self.weight.size

    def part(self, part: slice) -> "_Bits":
        return _Bits(self.weight[part], self.act[part], self.pf[part])

    def footprints(self, nest: LoopNest, array: ArraySpec, t: _Tilings) -> tuple[np.ndarray, np.ndarray]:
        """(pairs, tilings) weight and activation footprints."""
        w_fp = weight_footprint(nest, array, t.ic, t.oc, self.weight[:, None], self.pf[:, None])
        a_fp = act_footprint(nest, t.b, t.oh, t.ow, t.ic, self.act[:, None])
        return w_fp, a_fp

    def compute(self, nest: LoopNest, array: ArraySpec, t: _Tilings) -> np.ndarray:
        """(pairs, tilings) compute cycles (rule 6)."""
        return t.total_trips * compute_cycles_per_tile(nest, array, t.b, t.oh, t.ow, t.ic, t.oc, self.pf[:, None])


def _search(nest: LoopNest, array: ArraySpec, energy: EnergyTable, tilings: _Tilings,
            bits: _Bits) -> list[Mapping]:
    """Best of all distinct orders times ``tilings``, per pair."""
    orders = _distinct_orders(tilings)
    tables = {kind: _stream_table(orders, tilings, kind) for kind in RELEVANT}
    vol_out, res_out = tables["out"].promote(tilings.out_footprint, array.obuf_half_bits)
    chunk = max(1, _CHUNK_ELEMENTS // (len(orders) * tilings.b.size))
    results: list[Mapping] = []
    for start in range(0, len(bits), chunk):
        results += _best_per_pair(nest, array, energy, tilings, orders, tables, vol_out, res_out,
                                  bits.part(slice(start, start + chunk)))
    return results


def _lower_bounds(nest: LoopNest, array: ArraySpec, t: _Tilings, bits: _Bits) -> np.ndarray:
    """(pairs, tilings) cycles no loop order can beat (fact 5); infeasible tilings get a huge bound."""
    w_fp, a_fp = bits.footprints(nest, array, t)
    o_fp = t.out_footprint
    n = t.trips
    least_prologue = ceil_div(w_fp + a_fp + o_fp, array.bandwidth_bits) + ceil_div(o_fp, array.bandwidth_bits)
    least_traffic = (w_fp * (n["IC"] * n["OC"]) + a_fp * (n["B"] * n["OW"] * n["OH"] * n["IC"])
                     + 2 * o_fp * (n["B"] * n["OW"] * n["OH"] * n["OC"]))
    bound = np.maximum(bits.compute(nest, array, t) + least_prologue, ceil_div(least_traffic, array.bandwidth_bits))
    feasible = (w_fp <= array.wbuf_half_bits) & (a_fp <= array.ibuf_half_bits)
    return np.where(feasible, bound, _INFEASIBLE)


def _feasible_tilings(nest: LoopNest, array: ArraySpec, bits: _Bits) -> _Tilings:
    """Tilings whose output tile fits (any pair) and whose other tiles fit for some pair (fact 4)."""
    tiles = tile_candidates(nest, array)
    grid = np.array(list(itertools.product(range(len(tiles["b"])), range(len(tiles["oh"])),
                                           range(len(tiles["ic"])), range(len(tiles["oc"])))), dtype=np.int64)
    pick = lambda key, col: np.asarray(tiles[key], dtype=np.int64)[grid[:, col]]  # noqa: E731
    b, oh, ow, ic, oc = pick("b", 0), pick("oh", 1), pick("ow", 1), pick("ic", 2), pick("oc", 3)
    out_fp = out_footprint(array, b, oh, ow, oc)
    trips = trip_counts(nest, b, oh, ow, ic, oc)
    total = trips["B"] * trips["OW"] * trips["OH"] * trips["IC"] * trips["OC"]
    tilings = _Tilings(b, oh, ow, ic, oc, trips, total, out_fp)
    tilings = tilings.take(out_fp <= array.obuf_half_bits)
    w_fp, a_fp = bits.footprints(nest, array, tilings)
    return tilings.take(((w_fp <= array.wbuf_half_bits) & (a_fp <= array.ibuf_half_bits)).any(axis=0))


def _distinct_orders(tilings: _Tilings) -> list[tuple[str, ...]]:
    """Loop orders (outermost first) over the loops that ever have more than one trip."""
    active = [loop for loop in LOOPS if int(tilings.trips[loop].max()) > 1]
    orders = list(itertools.permutations(active))
    if "OW" in active and "OH" in active and np.array_equal(tilings.trips["OW"], tilings.trips["OH"]):
        orders = [o for o in orders if o.index("OW") < o.index("OH")]
    return orders or [()]


def _stream_table(orders: list[tuple[str, ...]], tilings: _Tilings, kind: str) -> _StreamTable:
    """Threshold table of one stream over all orders (fact 3 of the module docstring)."""
    relevant = RELEVANT[kind]
    n_rel = sum(loop in relevant for loop in orders[0])
    shape = (n_rel + 1, len(orders), tilings.b.size)
    cum = np.ones(shape, dtype=np.int64)
    vol = np.ones(shape, dtype=np.int64)
    for k, order in enumerate(orders):
        walk = order[::-1]  # innermost first
        outside = [np.ones_like(tilings.total_trips)] * (len(walk) + 1)
        for pos in range(len(walk) - 1, -1, -1):
            outside[pos] = outside[pos + 1] * tilings.trips[walk[pos]]
        j = 0
        for pos, loop in enumerate(walk):
            if loop in relevant:
                j += 1
                cum[j, k] = cum[j - 1, k] * tilings.trips[loop]
                vol[j - 1, k] = cum[j, k] * outside[pos + 1]
        vol[n_rel, k] = cum[n_rel, k]
    return _StreamTable(cum, vol)


def _best_per_pair(nest: LoopNest, array: ArraySpec, energy: EnergyTable, t: _Tilings,
                   orders: list[tuple[str, ...]], tables: dict[str, _StreamTable], vol_out: np.ndarray,
                   res_out: np.ndarray, bits: _Bits) -> list[Mapping]:
    w_fp, a_fp = bits.footprints(nest, array, t)
    feasible = (w_fp <= array.wbuf_half_bits) & (a_fp <= array.ibuf_half_bits)
    vol_w, res_w = tables["wgt"].promote(w_fp, array.wbuf_half_bits)
    vol_a, res_a = tables["act"].promote(a_fp, array.ibuf_half_bits)
    compute = bits.compute(nest, array, t)[:, None, :]
    dram_read = vol_w + vol_a + vol_out
    stall = stall_cycles(compute, res_w + res_a + res_out, res_out, dram_read, vol_out, array.bandwidth_bits)
    cycles = np.where(feasible[:, None, :], compute + stall, _INFEASIBLE)
    onchip = onchip_accesses(nest, array, t.total_trips, t.b, t.oh, t.ow, t.ic, t.oc, bits.act[:, None],
                             bits.weight[:, None], bits.pf[:, None])
    n_tilings = t.b.size
    flat_cycles = cycles.reshape(len(bits), -1)
    best: list[Mapping] = []
    for p in range(len(bits)):
        r, f = np.divmod(np.flatnonzero(flat_cycles[p] == flat_cycles[p].min()), n_tilings)
        counters = {
            "cycles": cycles[p, r, f],
            "stall_cycles": stall[p, r, f],
            "wbuf_read": onchip["wbuf_read"][p, f],
            "wbuf_write": vol_w[p, r, f],
            "ibuf_read": onchip["ibuf_read"][p, f],
            "ibuf_write": vol_a[p, r, f],
            "obuf_read": vol_out[r, f] + onchip["obuf_read"][p, f],
            "obuf_write": vol_out[r, f] + onchip["obuf_write"][p, f],
            "dram_read": dram_read[p, r, f],
            "dram_write": vol_out[r, f],
        }
        pick = _tie_break(energy, counters)
        chosen = {name: int(values[pick]) for name, values in counters.items()}
        fp, rp = int(f[pick]), int(r[pick])
        tiling = Tiling(int(t.b[fp]), int(t.oh[fp]), int(t.ow[fp]), int(t.ic[fp]), int(t.oc[fp]))
        best.append(Mapping(chosen, energy.of_counters(chosen), DATAFLOWS[int(onchip["dataflow"][p, fp])],
                            tiling, orders[rp]))
    return best


def _tie_break(energy: EnergyTable, counters: dict[str, np.ndarray]) -> int:
    """Index of the candidate with least energy, then smallest counters, among equal-cycle ones."""
    if counters["cycles"].size == 1:
        return 0
    pj = energy.energy_pj(counters["cycles"] - counters["stall_cycles"],
                          *(counters[name] for name in COUNTERS[2:]))
    least = np.flatnonzero(pj == pj.min())
    keys = tuple(counters[name][least] for name in reversed(COUNTERS))
    return int(least[np.lexsort(keys)[0]])
