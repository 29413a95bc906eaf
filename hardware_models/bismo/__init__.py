"""BISMO, the bit-serial matrix-multiplication overlay, as a hardware model.

BISMO (Umuroglu, Rasnayake, Sjalander, FPL 2018; extended in TRETS 2019) is an
FPGA overlay with a ``Dm x Dn`` array of dot-product units (DPUs).  Each cycle
every DPU ANDs two ``Dk``-bit words and popcounts the result, so one cycle is
``Dm * Dn * Dk`` binary multiply-accumulates (peak ``2 * Dm * Dn * Dk * f``
binary operations per second).  Operands live in DRAM as bit planes; a product of
``w``-bit and ``a``-bit matrices is ``w * a`` binary products, each weighted by a
shift and accumulated in 32-bit accumulators.  Three stages run concurrently and
synchronise with tokens: *fetch* (DRAM to the on-chip operand buffers),
*execute* (the DPU array) and *result* (accumulators to DRAM).  Latency is
therefore the slowest of the three, not their sum.

Lowering a layer onto the overlay
---------------------------------
* **Convolution** is lowered with im2col: ``M = batch * out_h * out_w`` rows
  (pixels), ``K = in_channels / groups * kh * kw``, ``N = out_channels / groups``.
  Activations are the ``Dm`` side, weights the ``Dn`` side.  The lowered matrix is
  what the fetch stage reads, so a 3x3 convolution reads each input value about
  nine times (im2col duplication is DRAM traffic, as in BISMO's runtime, which
  lowers on the host and lets the overlay fetch the lowered matrix).
* **Linear** is one product with ``M = batch``.
* **Storage is bit-serial and padded**: each row of each bit plane is padded to a
  multiple of ``Dk`` bits (the width of one buffer entry), and whole
  ``Dm x Dn`` result tiles are written.  A row of 9 useful bits still costs a
  ``Dk``-bit word.
* **Grouped and depthwise convolutions** are ``groups`` independent products,
  which a matrix overlay runs badly: a depthwise channel is an ``M x 9 x 1``
  product that uses one DPU column and 9 of ``Dk`` bits per word.  The model
  also considers packing ``p`` groups into one block-diagonal product
  (``M x p*K x p*N``, zero weights off the diagonal, stored and fetched as dense
  data because BISMO has no sparsity support): one ``Dk``-bit word then holds
  ``p`` channels' windows and ``p`` DPU columns work at once.  It takes the
  packing (``p = 1`` included) with the lowest latency; a last, partly empty
  pack costs a full product.  For MobileNet-V2 on the 16x16 array this packs 16
  to 28 channels per product, and depthwise layers stay limited by activation
  traffic (one padded ``Dk``-bit row per pixel and bit plane), so their cost
  scales with activation bits, hardly with weight bits.
* ``batch_lowering='per-sample'`` lowers each image separately, as BISMO's own
  inference runtime does (one image per call, ``bismo_inference_conv.cpp``):
  weights are fetched again for every image.  The default ``'batched'`` stacks
  the batch into ``M`` and keeps weights on chip across the batch when they fit.

Tiling (what the buffers allow)
-------------------------------
The activation and weight buffers each get half of ``buffer_bram_fraction`` of
the block RAM.  A *stripe* is one tile row of an operand with all its ``K`` and
all its bit planes (``Dm * Kp * a`` or ``Dn * Kp * w`` bits); a streamed operand
is double-buffered (two stripes must fit) so fetch overlaps execution.  Two
schedules are compared and the faster kept:

* *weights outer*: as many weight stripes as fit stay resident (all of them when
  the whole weight matrix fits: weights are then read once); the activation
  matrix is streamed once per resident weight block;
* *activations outer*: the mirror image, weights streamed once per resident
  activation block.

If not even two stripes fit, ``K`` is split into chunks whose 32-bit partial
sums are written out and reduced by the host (never needed for the networks of
the zoo on either configuration).

Latency
-------
``cycles = max(compute, time of each AXI port) + fill + drain`` per run, where
``compute = products * ceil(M/Dm) * ceil(K/Dk) * ceil(N/Dn) * w * a``; port time
is the bits it moves divided by ``axi_width_bits`` (one port width per clock
cycle); fill is the first activation and weight stripe, drain the last result
tile.  Activation fetch, weight fetch and result write each get their own AXI
port when ``axi_ports >= 3`` (two ports: the fetches share one; one port: all
share it, as in the single-port PYNQ instance).  Results are written with
``output_bits`` bits per element: BISMO's result stage writes raw 32-bit
accumulators, but a quantized network re-quantizes them before the next layer
reads them; the default ``0`` writes them at the layer's activation width (the
next layer's input width under a uniform policy).  ``latency_s`` is the time of
one batch of ``batch`` images.  With ``stage_overlap=False`` the stages take turns
instead (``compute + busiest port``), as without double-buffered overlap; that
and ``preset=haq-paper`` (the setup behind the HAQ paper's figures) are
explained in :mod:`~haq_plugin.hardware_models.haq_presets`.

There is no energy model: the BISMO publications and repository give no energy
per operation or per memory access (only whole-board power figures), so
``has_energy`` is False.

Bit widths are 1 to 8.  BISMO's precision is a runtime parameter, but its
accumulators are 32-bit signed: ``w + a + log2(K)`` must not exceed 31 bits, which
8x8-bit operands satisfy for any ``K`` up to 2**15, and wider operands would not
for the deeper layers of the zoo.

Assumptions beyond the publications (each is an option)
-------------------------------------------------------
* ``dk = 256``: HAQ's Table 2 gives only the ``Dm x Dn`` array; BISMO's published
  instances all use ``Dk = 256`` (PYNQ-Z1 8x256x8, Ultra96 10x256x10).
* Cloud clock 250 MHz: the default main clock of the AWS F1 shell around the
  VU9P; the edge clock is the PYNQ-Z1 instance's 200 MHz.
* One AXI port moves ``axi_width_bits`` per accelerator clock cycle (64 bits at
  200 MHz = 1.6 GB/s on a Zynq-7020 HP port; 256 bits at 250 MHz = 8 GB/s).
* ``buffer_bram_fraction = 0.9``: the PYNQ-Z1 instance gives 2 x 64 of its 140
  BRAM36 blocks to the operand buffers (1024 entries x 256 bits x 8 memories
  per side); the rest holds result buffers, queues and instruction generators.
  Each 36 Kb block stores 32 Kb of data (BISMO uses it as 1024 x 32 bits).

Validation against HAQ's published table: :mod:`~haq_plugin.hardware_models.bismo.validation`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence

import numpy as np

from haq_plugin.api.errors import HaqError
from haq_plugin.api.hardware import HardwareModel, LayerCost
from haq_plugin.hardware_models.bismo.overlay import (  # re-exported: part of this module's public names
    ACC_BITS, Lowering, Overlay, ceil_div, evaluate, lowerings,
)
from haq_plugin.hardware_models import haq_presets
from haq_plugin.hardware_models.haq_presets import preset_options
from haq_plugin.hardware_models.bismo.validation import (  # re-exported: part of this module's public names
    PROBES, REFERENCE_BITS, SCALING_THRESHOLD, classify_scaling, compare_to_reference, cost_surfaces,
    format_comparison, uniform_ratios,
)
from haq_plugin.api.hookspecs import hookimpl
from haq_plugin.api.layers import LayerSpec
from haq_plugin.api.options import Option, positive

CITATION = (
    "Y. Umuroglu, L. Rasnayake, M. Sjalander, \"BISMO: A Scalable Bit-Serial Matrix Multiplication Overlay for "
    "Reconfigurable Computing\", FPL 2018; Y. Umuroglu, D. Conficconi, L. Rasnayake, T. B. Preusser, "
    "M. Sjalander, \"Optimizing Bit-Serial Matrix Multiplication for Reconfigurable Computing\", ACM TRETS 12(3), "
    "2019; github.com/EECS-NTNU/bismo. Edge/cloud configurations: K. Wang, Z. Liu, Y. Lin, J. Lin, S. Han, "
    "\"HAQ: Hardware-Aware Automated Quantization with Mixed Precision\", CVPR 2019, Table 2."
)

MAX_BITS = 8
"""Widest operand: keeps ``w + a + log2(K)`` inside BISMO's 32-bit signed accumulators."""

BRAM_DATA_FRACTION = 32 / 36
"""Data bits per BRAM36 bit: BISMO configures each block as 1024 x 32 (parity bits unused)."""

STAGES = ("compute", "weights", "activations", "outputs")
SCHEDULES = ("weights-outer", "activations-outer")
BATCH_LOWERINGS = ("batched", "per-sample")


def _fraction(value: float) -> str | None:
    return None if 0 < value <= 1 else f"must be in (0, 1], got {value}"


def _output_bits(value: int) -> str | None:
    return None if 0 <= value <= ACC_BITS else f"must be 0 (activation width) to {ACC_BITS}, got {value}"


class Bismo(HardwareModel):
    """Common model of both HAQ configurations; subclasses only change the defaults."""

    citation: ClassVar[str] = CITATION
    has_energy: ClassVar[bool] = False

    def setup(self) -> None:
        c = self.config
        block_bits = c["bram_block_kbits"] * 1024 * BRAM_DATA_FRACTION
        per_operand_blocks = math.floor(c["bram_blocks"] * c["buffer_bram_fraction"] / 2)
        self.overlay = Overlay(c["dm"], c["dn"], c["dk"], c["axi_width_bits"], c["axi_ports"],
                               int(per_operand_blocks * block_bits), c["output_bits"], c["stage_overlap"])
        self._hz = c["frequency_mhz"] * 1e6
        needed = 2 * c["dk"] * max(c["dm"], c["dn"]) * MAX_BITS
        if self.overlay.buffer_bits < needed:
            raise HaqError(
                f"hardware model '{self.name}': {per_operand_blocks} block RAMs per operand buffer hold "
                f"{self.overlay.buffer_bits} bits, but double-buffering one {c['dk']}-bit word per row at "
                f"{MAX_BITS} bits needs {needed}; raise bram_blocks or buffer_bram_fraction, or lower dm/dn/dk."
            )

    @property
    def supported_bits(self) -> tuple[int, ...]:
        return tuple(range(1, MAX_BITS + 1))

    @property
    def peak_binary_ops_per_s(self) -> float:
        """Peak binary operations per second: an AND and an add per DPU bit per cycle."""
        ov = self.overlay
        return 2.0 * ov.dm * ov.dn * ov.dk * self._hz

    def layer_cost(self, layer: LayerSpec, weight_bits: int, act_bits: int) -> LayerCost:
        return self.layer_costs(layer, [(weight_bits, act_bits)])[0]

    def layer_costs(self, layer: LayerSpec, bit_pairs: Sequence[tuple[int, int]]) -> list[LayerCost]:
        """All bit pairs of one layer at once: every lowering and schedule, vectorised over pairs."""
        for wb, ab in bit_pairs:
            self.check_bits(wb, ab)
        w = np.array([p[0] for p in bit_pairs], dtype=np.int64)
        a = np.array([p[1] for p in bit_pairs], dtype=np.int64)
        per_sample = self.config["batch_lowering"] == "per-sample"
        options = lowerings(layer, self.config["batch"], per_sample, self.overlay.dk, self.overlay.dn)
        results = [evaluate(self.overlay, low, w, a) for low in options]
        stacked = {key: np.concatenate([r[key] for r in results]) for key in results[0]}
        traffic = stacked["activation_bits_read"] + stacked["weight_bits_read"] + stacked["dram_bits_written"]
        best = np.lexsort((traffic, stacked["cycles"]), axis=0)[0]
        useful = layer.macs * self.config["batch"] * w * a
        return [self._cost(stacked, options, int(best[i]), i, float(useful[i])) for i in range(len(bit_pairs))]

    def _cost(self, counters: dict[str, np.ndarray], options: list[Lowering], row: int, col: int,
              useful_binary_macs: float) -> LayerCost:
        ov = self.overlay
        low = options[row // len(SCHEDULES)]
        value = {key: float(arr[row, col]) for key, arr in counters.items()}
        stage_cycles = {
            "compute": value["compute_cycles"],
            "weights": value["weight_bits_read"] / ov.port_bits,
            "activations": value["activation_bits_read"] / ov.port_bits,
            "outputs": value["dram_bits_written"] / ov.port_bits,
        }
        details = {
            "cycles": value["cycles"],
            "compute_cycles": value["compute_cycles"],
            "activation_cycles": stage_cycles["activations"],
            "weight_cycles": stage_cycles["weights"],
            "output_cycles": stage_cycles["outputs"],
            "dram_bits_read": value["activation_bits_read"] + value["weight_bits_read"],
            "dram_bits_written": value["dram_bits_written"],
            "activation_bits_read": value["activation_bits_read"],
            "weight_bits_read": value["weight_bits_read"],
            "bound": _bound(stage_cycles, ov),
            "schedule": SCHEDULES[row % len(SCHEDULES)],
            "packed_groups": low.packed_groups,
            "products": low.products * low.runs,
            "matrix_mkn": (low.m, low.k, low.n),
            "weight_fetches": int(value["weight_fetches"]),
            "activation_fetches": int(value["activation_fetches"]),
            "k_chunks": int(value["k_chunks"]),
            "array_utilization": useful_binary_macs / (value["compute_cycles"] * ov.dm * ov.dn * ov.dk),
        }
        return LayerCost(latency_s=value["cycles"] / self._hz, energy_j=None, details=details)


def _bound(stage_cycles: dict[str, float], ov: Overlay) -> str:
    """The stage that sets the pace; a shared port is charged to its largest stream."""
    ports = dict(zip(("activations", "weights", "outputs"), ov.stream_ports()))
    port_busy = {p: sum(stage_cycles[s] for s, q in ports.items() if q == p) for p in set(ports.values())}
    best_port = max(port_busy, key=lambda p: port_busy[p])
    if stage_cycles["compute"] >= port_busy[best_port]:
        return "compute"
    return max((s for s, p in ports.items() if p == best_port), key=lambda s: stage_cycles[s])


def _options(d: dict[str, Any]) -> tuple[Option, ...]:
    """Options of one configuration; ``d`` holds its defaults and their sources."""
    return (
        Option("dm", int, d["dm"], "DPU array rows (activation rows per tile)", minimum=1, source=d["array_src"]),
        Option("dn", int, d["dn"], "DPU array columns (weight rows, i.e. output channels, per tile)", minimum=1,
               source=d["array_src"]),
        Option("dk", int, 256, "bits each DPU ANDs and popcounts per cycle (buffer entry width)", minimum=1,
               source="BISMO instances 8x256x8 (PYNQ-Z1, FPL 2018) and 10x256x10 (Ultra96, TRETS 2019)"),
        Option("frequency_mhz", float, d["mhz"], "overlay clock in MHz", check=positive, source=d["mhz_src"]),
        Option("axi_ports", int, 4, "AXI memory ports: activation fetch, weight fetch, result write (+ spare)",
               minimum=1, source="HAQ Table 2 (4 AXI ports on both devices)"),
        Option("axi_width_bits", int, d["axi"], "data width of one AXI port; bits moved per port per cycle",
               minimum=1, source=f"HAQ Table 2 (AXI port 4 x {d['axi']} bit)"),
        Option("bram_blocks", int, d["bram"], "36 Kb block RAMs of the device", minimum=1,
               source=f"HAQ Table 2 ({d['bram']} x 36 Kb block RAM, {d['device']})"),
        Option("bram_block_kbits", int, 36, "size of one block RAM in Kb", minimum=1, source="HAQ Table 2"),
        Option("buffer_bram_fraction", float, 0.9, "share of block RAM for the activation + weight buffers "
               "(split equally)", check=_fraction,
               source="BISMO PYNQ-Z1 instance: 2 x 64 of 140 BRAM36 for LHS/RHS buffers (lhs/rhsEntriesPerMem=1024)"),
        Option("output_bits", int, 0, "bits per result element written to DRAM (0: the layer's activation width)",
               check=_output_bits, source="results re-quantized for the next layer; 32 = raw BISMO accumulators"),
        Option("batch", int, d["batch"], "images per batch; latency_s is for one batch", minimum=1,
               source="HAQ Table 2"),
        Option("stage_overlap", bool, True, "fetch, execute and result stages overlap (latency = slowest stage); "
               "false: memory traffic and execution take turns (latency = compute + busiest AXI port)",
               source="BISMO FPL 2018: stages synchronised by tokens; false for the HAQ-paper preset (haq_presets)"),
        *preset_options(d["presets"], "'haq-paper': the HAQ paper's setup (stages take turns"
                        + (", 100 MHz)" if "frequency_mhz" in d["presets"]["haq-paper"] else ")")),
        Option("batch_lowering", str, "batched", "'batched': the batch is one im2col matrix (weights stay on chip "
               "when they fit); 'per-sample': one product per image (weights re-fetched per image)",
               choices=BATCH_LOWERINGS, source="per-sample: BISMO runtime bismo_inference_conv.cpp lowers one image"),
    )


class BismoEdge(Bismo):
    """BISMO on a Xilinx Zynq-7020 (HAQ's edge accelerator): 8x256x8 DPUs at 200 MHz, batch 1."""

    name: ClassVar[str] = "bismo-edge"
    description: ClassVar[str] = "BISMO bit-serial overlay, Zynq-7020 edge config (HAQ Table 2), latency only"
    options: ClassVar[tuple[Option, ...]] = _options({
        "dm": 8, "dn": 8, "array_src": "HAQ Table 2 (PE array 8 x 8); BISMO PYNQ-Z1 instance 8x256x8",
        "mhz": 200.0, "mhz_src": "BISMO PYNQ-Z1 instance 8x256x8 at 200 MHz (6.5 binary TOPS)",
        "axi": 64, "bram": 140, "device": "Zynq-7020", "batch": 1, "presets": haq_presets.BISMO_EDGE,
    })
    presets: ClassVar[dict[str, dict[str, Any]]] = haq_presets.BISMO_EDGE


class BismoCloud(Bismo):
    """BISMO on a Xilinx VU9P (HAQ's cloud accelerator): 16x256x16 DPUs at 250 MHz, batch 16."""

    name: ClassVar[str] = "bismo-cloud"
    description: ClassVar[str] = "BISMO bit-serial overlay, VU9P cloud config (HAQ Table 2), latency only"
    options: ClassVar[tuple[Option, ...]] = _options({
        "dm": 16, "dn": 16, "array_src": "HAQ Table 2 (PE array 16 x 16)",
        "mhz": 250.0, "mhz_src": "assumption: AWS F1 (VU9P) shell default clock clk_main_a0 = 250 MHz",
        "axi": 256, "bram": 2160, "device": "VU9P", "batch": 16, "presets": haq_presets.BISMO_CLOUD,
    })
    presets: ClassVar[dict[str, dict[str, Any]]] = haq_presets.BISMO_CLOUD


@hookimpl
def haq_hardware_models() -> list[type[HardwareModel]]:
    return [BismoEdge, BismoCloud]

