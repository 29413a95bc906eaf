"""Bit Fusion (Sharma et al., ISCA 2018): the authors' performance and energy model.

Bit Fusion is a systolic array of N x M *Fusion Units*; each unit fuses 2-bit
"BitBricks" so that it computes one 8x8-bit product per cycle, or 2, 4, 8 or 16
products per cycle at lower precision.  This plugin re-implements the authors'
public simulator (``hsharma35/bitfusion``) and reproduces its published sweep
(``results/bitfusion-eyeriss-sim-sweep.csv``) exactly: all ten counters of all
305 rows, and the per-network energies.  The rules are written down in
``tests/data/bitfusion/REFERENCE.md``; the modules split them as follows:

* :mod:`~haq_plugin.hardware_models.bitfusion.rules`: the per-tiling rules
  (footprints, fusion factor, dataflow, compute, stalls, energy sum);
* :mod:`~haq_plugin.hardware_models.bitfusion.search`: the fast exact search over
  loop orders and tilings (vectorised, all bit pairs of a layer at once);
* :mod:`~haq_plugin.hardware_models.bitfusion.exhaustive`: the literal
  120-order search that proves the fast one exact;
* :mod:`~haq_plugin.hardware_models.bitfusion.energy`: the energy constants;
* :mod:`~haq_plugin.hardware_models.bitfusion.mapping`: layers to loop nests
  (grouped and depthwise convolutions included).

Two hardware names are registered:

* ``bitfusion``: the simulator's default ``conf.ini`` edge array, 8x8 Fusion
  Units, 500 MHz, 128 bits/cycle of DRAM bandwidth, WBUF 256 KiB, IBUF 64 KiB,
  OBUF 16 KiB, batch 1.
* ``bitfusion-cloud``: ``bf_e_conf.ini``, the 16x32 array of the authors'
  sweep, 192 bits/cycle, WBUF 64 KiB, IBUF 32 KiB, OBUF 16 KiB, batch 16 (the
  batch of the authors' benchmark tensors).

Energy constants default to the simulator's own derivation for the configured
array (see :mod:`~haq_plugin.hardware_models.bitfusion.energy`); for the 16x32
array that gives exactly the constants of ``tests/data/bitfusion/energy.csv``.

How layers map onto the model, including those the authors never simulated:

* **Convolution**: kernel K, output O, stride S, channels IC/OC, batch B as in
  the simulator.  Non-square layers generalise it: kernel area ``kh * kw``, halo
  ``(ew + (ow - 1) * sw) x (eh + (oh - 1) * sh)`` and output tiles that share one
  power-of-two side clipped to each dimension's extent (square layers follow the
  simulator exactly; Conv1d layers, stored as (length, 1), tile only the length).
  A dilated kernel spans ``d * (k - 1) + 1`` inputs in the halo and still costs
  ``kh * kw`` MACs.  Border padding is ignored, as in the simulator.
* **Linear**: a matmul with K = O = S = 1, IC = input features, OC = output
  features; never im2col (the simulator never uses it for matmuls).
* **im2col** is used by convolutions that read the raw network input
  (``LayerSpec.reads_network_input``), as the simulator does for first layers.
* **Grouped and depthwise convolutions** (details in
  :mod:`~haq_plugin.hardware_models.bitfusion.mapping`): the groups run in
  *packs*, each pack a dense convolution over ``g`` groups with block-diagonal
  weights (the zero weights are stored, streamed and multiplied: Bit Fusion has
  no sparsity support), packs one after the other with their counters added, as
  the authors ran AlexNet's two groups (``conv2_a``/``conv2_b``).  Each output
  channel reduces only its own group's inputs.  ``g = 1`` is the plain
  one-group-at-a-time mapping; larger packs (powers of two while the pack's
  outputs fit the M columns) put channels side by side on the array's diagonal,
  and the pack size with the fewest cycles (then least energy) is chosen per bit
  pair.  A depthwise channel alone would occupy one row and one column of the
  array; packed, a 512-channel 3x3 depthwise layer at 14x14 and 8 bits takes
  42x (``bitfusion``) and 16x (``bitfusion-cloud``) fewer cycles than the dense
  layer of the same shape.  The gap narrows at 1 or 2 bits, where the dense
  layer gets the full fusion speed-up and a depthwise one cannot: its window is
  reduced over time, K x K cycles per output, as in the simulator's non-im2col
  dataflow.
* **Bit widths**: 1 to 8 bits for weights and activations.  Speed follows the
  fusion rule on widths clamped below at 2 bits (odd widths run as the next
  supported brick width: 3 as 4, 5 to 7 as 8), while footprints, DRAM traffic
  and buffer accesses use the true width (rule 10).  Wider operands are rejected:
  the released simulator divides by zero for them, and the paper's temporal
  mode for 16 bits is not part of the model that the reference data validates.
* **Selection**: fewest cycles, then least energy (rule 8), then the smallest
  counters, so the result never depends on enumeration order.

Latency is ``cycles / frequency`` for one batch of the configured batch size;
energy is in joules for that batch.

Two options go beyond the released simulator, both off by default:
``depthwise_im2col`` runs grouped convolutions with the im2col dataflow (the
window reduced across the array rows, so depthwise layers also gain from
fusion at low precision), and ``preset=haq-paper`` (edge array only) selects
the setup behind the HAQ paper's MobileNet-V1 figures; the reasoning and the
remaining energy gap are in :mod:`~haq_plugin.hardware_models.haq_presets`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

from haq_plugin.api.errors import HaqError
from haq_plugin.api.hardware import HardwareModel, LayerCost
from haq_plugin.hardware_models.bitfusion.energy import (
    DRAM_PJ_PER_BIT, buffer_pj_per_bit, core_pj_per_cycle,
)
from haq_plugin.hardware_models.bitfusion.rules import (
    COUNTERS, ArraySpec, EnergyTable, LoopNest, Mapping, act_footprint, ceil_div, fusion_factor, out_footprint,
    weight_footprint,
)
from haq_plugin.hardware_models.bitfusion.mapping import PackPlan, pack_plans
from haq_plugin.hardware_models import haq_presets
from haq_plugin.hardware_models.bitfusion.search import fast_search
from haq_plugin.hardware_models.haq_presets import preset_options
from haq_plugin.api.hookspecs import hookimpl
from haq_plugin.api.layers import LayerSpec
from haq_plugin.api.options import Option, positive

CITATION = (
    "H. Sharma, J. Park, N. Suda, L. Lai, B. Chau, J. K. Kim, V. Chandra, H. Esmaeilzadeh, \"Bit Fusion: "
    "Bit-Level Dynamically Composable Architecture for Accelerating Deep Neural Networks\", ISCA 2018; "
    "simulator github.com/hsharma35/bitfusion (conf.ini, bf_e_conf.ini, src/simulator, sram/cacti_sweep.csv)."
)

MAX_BITS = 8
"""Widest operand the Fusion Units run in one pass (``high_prec = 8`` in conf.ini / bf_e_conf.ini)."""

_ENERGY_OPTIONS = ("core_pj_per_cycle", "wbuf_read_pj_per_bit", "wbuf_write_pj_per_bit", "ibuf_read_pj_per_bit",
                   "ibuf_write_pj_per_bit", "obuf_read_pj_per_bit", "obuf_write_pj_per_bit")


def _options(array: dict[str, Any], source: str, presets: dict[str, dict[str, Any]]) -> tuple[Option, ...]:
    """Options of one variant; ``array`` holds its defaults, ``source`` names the config file."""
    banks = {"wbuf": "N*M", "ibuf": "N", "obuf": "M"}
    return (
        Option("rows", int, array["rows"], "N: Fusion Units per column (inputs reduced per column)",
               minimum=1, source=f"{source} [accelerator] a"),
        Option("cols", int, array["cols"], "M: Fusion Unit columns (output channels in parallel)",
               minimum=1, source=f"{source} [accelerator] c"),
        Option("frequency_mhz", float, 500.0, "clock frequency in MHz", check=positive,
               source=f"{source} [accelerator] frequency = 500000000"),
        Option("bandwidth_bits", int, array["bandwidth_bits"], "DRAM bandwidth in bits per cycle",
               minimum=1, source=f"{source} [system] if_width"),
        Option("wbuf_bytes", int, array["wbuf_bytes"], "weight buffer (WBUF) size in bytes",
               minimum=1, source=f"{source} [accelerator] Wgt_SRAM"),
        Option("ibuf_bytes", int, array["ibuf_bytes"], "input buffer (IBUF) size in bytes",
               minimum=1, source=f"{source} [accelerator] Act_SRAM"),
        Option("obuf_bytes", int, array["obuf_bytes"], "output buffer (OBUF) size in bytes",
               minimum=1, source=f"{source} [accelerator] Out_SRAM"),
        Option("batch", int, array["batch"], "images per batch; latency and energy are per batch",
               minimum=1, source=array["batch_source"]),
        Option("depthwise_im2col", bool, False, "run grouped/depthwise convolutions with the im2col dataflow "
               "(window reduced across the array rows, fused at low bits) instead of one window element per cycle",
               source="simulator's im2col dataflow (used there for first layers); HAQ-paper preset, see haq_presets"),
        *preset_options(presets, "'haq-paper': the HAQ paper's MobileNet-V1 setup (batch 16, depthwise im2col)"),
        Option("core_pj_per_cycle", float, None,
               "core energy per busy cycle, pJ (None: 4x4 synthesis power x N*M/16 / clock)",
               minimum=0, source="results/systolic_array_synth.csv 4x4 row, scaled as src/simulator/simulator.py"),
        *(Option(f"{buf}_{op}_pj_per_bit", float, None,
                 f"{buf.upper()} {op} energy per bit, pJ (None: CACTI energy of one of its {count} banks / 32)",
                 minimum=0, source="sram/cacti_sweep.csv (45 nm), banking as src/simulator/simulator.py")
          for buf, count in banks.items() for op in ("read", "write")),
        Option("dram_pj_per_bit", float, DRAM_PJ_PER_BIT, "DRAM energy per bit read or written, pJ",
               minimum=0, source="src/simulator/stats.py Stats.get_energy dram_cost = 15e-3 nJ"),
    )


class BitFusionEdge(HardwareModel):
    """Bit Fusion with the simulator's default edge configuration (conf.ini)."""

    name: ClassVar[str] = "bitfusion"
    description: ClassVar[str] = "Bit Fusion 8x8 edge array (authors' simulator, conf.ini), latency and energy"
    citation: ClassVar[str] = CITATION
    has_energy: ClassVar[bool] = True
    options: ClassVar[tuple[Option, ...]] = _options(
        {"rows": 8, "cols": 8, "bandwidth_bits": 128, "wbuf_bytes": 262144, "ibuf_bytes": 65536,
         "obuf_bytes": 16384, "batch": 1, "batch_source": "one image per inference (edge)"},
        "conf.ini", haq_presets.BITFUSION,
    )
    presets: ClassVar[dict[str, dict[str, Any]]] = haq_presets.BITFUSION

    def setup(self) -> None:
        c = self.config
        self.array = ArraySpec.from_bytes(c["rows"], c["cols"], c["bandwidth_bits"], c["wbuf_bytes"],
                                          c["ibuf_bytes"], c["obuf_bytes"])
        self.energy = self._energy_table()
        self._cache: dict[tuple[LoopNest, int, int], Mapping] = {}

    def _energy_table(self) -> EnergyTable:
        c = self.config
        values = {name: c[name] for name in _ENERGY_OPTIONS}
        if values["core_pj_per_cycle"] is None:
            values["core_pj_per_cycle"] = core_pj_per_cycle(c["rows"], c["cols"], c["frequency_mhz"])
        banks = {"wbuf": (("rows", "cols"), False), "ibuf": (("rows",), False), "obuf": (("cols",), True)}
        for buf, (bank_options, rw_port) in banks.items():
            keys = (f"{buf}_read_pj_per_bit", f"{buf}_write_pj_per_bit")
            if values[keys[0]] is None or values[keys[1]] is None:
                derived = buffer_pj_per_bit(f"hardware model '{self.name}'", buf.upper(), c, bank_options, rw_port)
                for key, value in zip(keys, derived):
                    values[key] = value if values[key] is None else values[key]
        return EnergyTable(*(values[name] for name in _ENERGY_OPTIONS), c["dram_pj_per_bit"])

    @property
    def supported_bits(self) -> tuple[int, ...]:
        return tuple(range(1, MAX_BITS + 1))

    def layer_cost(self, layer: LayerSpec, weight_bits: int, act_bits: int) -> LayerCost:
        return self.layer_costs(layer, [(weight_bits, act_bits)])[0]

    def layer_costs(self, layer: LayerSpec, bit_pairs: Sequence[tuple[int, int]]) -> list[LayerCost]:
        """All pairs of one layer in one vectorised search per loop nest (searched nests are cached)."""
        for w, a in bit_pairs:
            self.check_bits(w, a)
        plans = pack_plans(layer, self.array.cols, self.config["batch"], self.config["depthwise_im2col"])
        wanted = sorted(set(bit_pairs))
        self._search_nests({nest for plan in plans for nest, _ in plan.parts}, wanted)
        best = {pair: self._best_plan(layer, plans, pair) for pair in wanted}
        return [best[pair] for pair in bit_pairs]

    def _search_nests(self, nests: set[LoopNest], pairs: list[tuple[int, int]]) -> None:
        for nest in nests:
            todo = [p for p in pairs if (nest, *p) not in self._cache and self._misfit(nest, *p) is None]
            for pair, mapping in zip(todo, fast_search(nest, self.array, self.energy, todo) if todo else ()):
                self._cache[(nest, *pair)] = mapping

    def _best_plan(self, layer: LayerSpec, plans: list[PackPlan], pair: tuple[int, int]) -> LayerCost:
        """Cheapest plan by rule 8 (cycles, then energy, then counters) among those that fit."""
        best: tuple[tuple, LayerCost] | None = None
        for plan in plans:
            parts = self._searched_parts(plan, pair)
            if parts is None:
                continue
            counters = {name: sum(m.counters[name] * n for m, n in parts) for name in COUNTERS}
            energy_pj = self.energy.of_counters(counters)
            key = (counters["cycles"], energy_pj, *counters.values())
            if best is None or key < best[0]:
                cost = self._layer_cost(counters, energy_pj, layer.groups, plan.groups_per_pack, parts[0][0])
                best = (key, cost)
        if best is None:
            raise HaqError(self._misfit(plans[0].parts[0][0], *pair, layer=layer) or "no schedule fits")
        return best[1]

    def _searched_parts(self, plan: PackPlan, pair: tuple[int, int]) -> list[tuple[Mapping, int]] | None:
        """The plan's nests with their best schedules, or None when one of them does not fit."""
        parts = []
        for nest, count in plan.parts:
            mapping = self._cache.get((nest, *pair))
            if mapping is None:
                return None
            parts.append((mapping, count))
        return parts

    def _layer_cost(self, counters: dict[str, int], energy_pj: float, groups: int, groups_per_pack: int,
                    mapping: Mapping) -> LayerCost:
        t = mapping.tiling
        details: dict[str, Any] = {
            **counters,
            "energy_pj": energy_pj,
            "groups": groups,
            "groups_per_pack": groups_per_pack,
            "dataflow": mapping.dataflow,
            "tiling": {"b": t.b, "oh": t.oh, "ow": t.ow, "ic": t.ic, "oc": t.oc},
            "loop_order": mapping.loop_order,
        }
        latency = counters["cycles"] / (self.config["frequency_mhz"] * 1e6)
        return LayerCost(latency_s=latency, energy_j=energy_pj * 1e-12, details=details)

    def _misfit(self, nest: LoopNest, weight_bits: int, act_bits: int, layer: LayerSpec | None = None) -> str | None:
        """Why the smallest tile of ``nest`` overflows half a buffer (then no tile fits), or None."""
        a = self.array
        oc = 1 if nest.im2col else min(a.cols, nest.oc)
        pf = fusion_factor(act_bits, weight_bits, a)
        needs = {
            "wbuf_bytes": (weight_footprint(nest, a, 1, oc, weight_bits, pf), a.wbuf_half_bits),
            "ibuf_bytes": (act_footprint(nest, 1, 1, 1, 1, act_bits), a.ibuf_half_bits),
            "obuf_bytes": (out_footprint(a, 1, 1, 1, oc), a.obuf_half_bits),
        }
        for option, (bits, half) in needs.items():
            if bits > half:
                what = f"layer {layer.name!r} ({layer.describe()})" if layer else "a layer"
                return (f"hardware model '{self.name}': {what} does not fit with {weight_bits}-bit weights and "
                        f"{act_bits}-bit activations: its smallest tile needs {bits} bits, more than half of "
                        f"{option}={self.config[option]} (buffers are double-buffered). "
                        f"Use {option} >= {ceil_div(bits * 2, 8)}.")
        return None


class BitFusionCloud(BitFusionEdge):
    """Bit Fusion 16x32 as in the authors' sweep (bf_e_conf.ini), batch 16."""

    name: ClassVar[str] = "bitfusion-cloud"
    description: ClassVar[str] = "Bit Fusion 16x32 array of the ISCA'18 sweep (bf_e_conf.ini), batch 16"
    options: ClassVar[tuple[Option, ...]] = _options(
        {"rows": 16, "cols": 32, "bandwidth_bits": 192, "wbuf_bytes": 65536, "ibuf_bytes": 32768,
         "obuf_bytes": 16384, "batch": 16,
         "batch_source": "batch of the authors' benchmark tensors (src/benchmarks/benchmarks.py)"},
        "bf_e_conf.ini", {},
    )
    presets: ClassVar[dict[str, dict[str, Any]]] = {}


@hookimpl
def haq_hardware_models() -> list[type[HardwareModel]]:
    return [BitFusionEdge, BitFusionCloud]


__all__ = ["BitFusionCloud", "BitFusionEdge"]
