"""Token generation (decode) of a language model, as a roofline hardware model (``--hw llm-decode``).

Generating one token runs every decoder linear once on one activation vector: a
matrix-vector product that reads each weight once and does one
multiply-accumulate with it.  At two operations per weight byte (8-bit weights),
four (4-bit) or about six (2-bit with group scales), this is below the ridge
point (peak operations / peak bandwidth) of every preset device, 9 to 82
operations per byte, so single-batch decode is bound by the bandwidth of the
memory that streams the weights, not by arithmetic (Kim et al., SqueezeLLM,
ICML 2024, show this for generative LLM inference at batch 1).  The roofline
model (Williams, Waterman, Patterson, CACM 2009) states it: a kernel
takes at least the longer of its arithmetic at peak rate and its memory traffic
at peak bandwidth.

Per linear layer, per decode step of ``batch`` sequences, at ``w``-bit weights:

* weight bytes = ``params * w / 8 + n_groups * scale_bits / 8`` with
  ``n_groups = out_features * ceil(in_features / group_size)`` (``group_size = 0``:
  one group per output channel).  A group size that does not divide
  ``in_features`` leaves a shorter last group in each row, with its own scale
  and zero point (hence the ceil).  16-bit weights are float16: ``params * 2``
  bytes and no groups.  Weights are read once per step, whatever ``batch``;
* memory time = ``bytes / (bandwidth_gbps * 1e9 * efficiency)``;
* compute time = ``2 * macs * batch / (peak_gops * 1e9)`` (one MAC = two operations);
* latency = ``max(memory time, compute time) + layer_overhead_us * 1e-6``;
* energy = ``bytes * energy_pj_per_byte * 1e-12``: DRAM reads of the weights only.
  No compute energy is added: there is no cited per-operation figure for the
  dequantize-and-multiply of these devices, and at batch 1 DRAM dominates.

Activation bits are accepted and ignored: in weight-only quantization of a
language model the activations stay float (float16 or float32), and the
activations read and written per token (``in + out`` values) are a few KB against
hundreds of KB of weights per layer, so they are not counted.  The cost of
dequantizing the weights is inside ``peak_gops`` (the float rate of the kernel).

``efficiency`` defaults to 1.0: the presets hold the vendors' peak figures and
the default answer is the roofline's lower bound.  Set it to the fraction a
measured kernel reaches (e.g. a STREAM run) to model sustained bandwidth; in the
memory bound regime it scales every policy alike, so it does not change which policy a
search prefers, only absolute latencies and where the compute roof binds.

Where BitFusion and BISMO apply to decoder linears at sequence length 1
-----------------------------------------------------------------------
Both map an ``nn.Linear`` as a matrix product with ``M = batch`` rows
(BitFusion: ``IC = in_features``, ``OC = out_features``, no im2col; BISMO: one
product ``M = batch``, ``K = in_features``, ``N = out_features``), so with
``batch = 1`` they cost a decode-step GEMV, and on both the weight traffic from
DRAM scales with the weight bits, as here.  What they model and decode does not
do:

* both quantize *both* operands to 1..8-bit integers and run integer MAC arrays
  whose speed depends on the two widths together (BitFusion's fusion of 2-bit
  BitBricks, BISMO's ``w * a`` bit-serial binary products).  Weight-only
  quantization keeps activations float (16 or 32 bits), which neither array
  runs, so their ``act_bits`` axis has no counterpart;
* neither counts group scales and zero points: their weight bytes are
  ``params * w / 8`` (BISMO adds padding of each bit-plane row to ``Dk = 256``
  bits: a 576-wide row costs 768 bits per plane), so at 2 to 4 bits they
  undercount the 0.5 bits per weight that float16 scale+zero per 64 weights add;
* they model accelerator-local DRAM ports (BitFusion 128 bits per 500 MHz cycle
  = 8 GB/s; BISMO 64-bit AXI ports) and on-chip buffers; at ``M = 1`` most of
  their arrays are idle (one of BISMO's ``Dm`` rows is used), so their compute
  term is a property of that array, not of the CPU or GPU that decodes;
* neither runs 16-bit float weights.
"""

from __future__ import annotations

import math
from typing import ClassVar, Sequence

from haq_plugin import HardwareModel, LayerCost, LayerSpec, Option, hookimpl

from .presets import BY_NAME, DEFAULT_DEVICE, PRESETS, preset_help, preset_sources

FLOAT16_BITS = 16
"""Weights kept in float16: no groups, no scales."""

SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8, FLOAT16_BITS)

HOROWITZ_DRAM = ("M. Horowitz, 'Computing's energy problem (and what we can do about it)', ISSCC 2014: "
                 "640 pJ per 32-bit DRAM read (45 nm) = 160 pJ/byte, as tabulated by Han et al., "
                 "'Learning both weights and connections for efficient neural networks', NeurIPS 2015")

CITATION = ("S. Williams, A. Waterman, D. Patterson, 'Roofline: an insightful visual performance model for "
            "multicore architectures', CACM 52(4), 2009; decode is memory bound: S. Kim et al., 'SqueezeLLM: "
            "Dense-and-Sparse Quantization', ICML 2024; DRAM energy: " + HOROWITZ_DRAM)


def _positive(value: float) -> str | None:
    return None if value > 0 else f"must be greater than 0, got {value}"


def _fraction(value: float) -> str | None:
    return None if 0 < value <= 1 else f"must be in (0, 1], got {value}"


def _options() -> tuple[Option, ...]:
    default = BY_NAME[DEFAULT_DEVICE]
    return (
        Option("preset", str, DEFAULT_DEVICE, preset_help(), choices=tuple(PRESETS), source=preset_sources()),
        Option("bandwidth_gbps", float, default.bandwidth_gbps, "peak memory bandwidth that streams the "
               "weights, 10^9 bytes/s (scaled by efficiency)", check=_positive, source=default.bandwidth_source),
        Option("peak_gops", float, default.peak_gops, "peak float arithmetic rate of the decode kernel, "
               "10^9 operations/s, one multiply-accumulate = 2 operations", check=_positive,
               source=default.peak_source),
        Option("efficiency", float, 1.0, "fraction of bandwidth_gbps the kernel sustains, in (0, 1]",
               check=_fraction, source="1.0: the roofline's bound at the published peak"),
        Option("group_size", int, 64, "weights per scale group along in_features (0: one group per output "
               "channel); a size that does not divide in_features leaves a shorter last group", minimum=0,
               source="Q4_1/GPTQ-style group-wise weight-only quantization"),
        Option("scale_bits", int, 32, "bits of scale and zero point per group (32: two float16)", minimum=0,
               source="float16 scale + float16 zero point"),
        Option("layer_overhead_us", float, 0.0, "fixed cost per layer and step (kernel launch, dispatch), us",
               minimum=0.0, source="0: pure roofline"),
        Option("energy_pj_per_byte", float, 160.0, "DRAM energy per weight byte read, pJ", minimum=0.0,
               source=HOROWITZ_DRAM),
        Option("batch", int, 1, "sequences decoded together per step; weights are read once per step",
               minimum=1, source="1: single-stream generation"),
    )


class DecodeRoofline(HardwareModel):
    """Per-token cost of a decoder linear: max(weight bytes / bandwidth, MACs / peak) + overhead."""

    name: ClassVar[str] = "llm-decode"
    description: ClassVar[str] = ("LLM token generation (decode), roofline: weight bytes incl. group scales / "
                                  "bandwidth vs. MACs / peak, weight-only bits 2-8 and float16")
    citation: ClassVar[str] = CITATION
    has_energy: ClassVar[bool] = True
    options: ClassVar[tuple[Option, ...]] = _options()
    presets: ClassVar[dict[str, dict[str, float]]] = PRESETS

    def setup(self) -> None:
        c = self.config
        self._bytes_per_s = c["bandwidth_gbps"] * 1e9 * c["efficiency"]
        self._ops_per_s = c["peak_gops"] * 1e9
        self._overhead_s = c["layer_overhead_us"] * 1e-6

    @property
    def supported_bits(self) -> tuple[int, ...]:
        return SUPPORTED_BITS

    def weight_bytes(self, layer: LayerSpec, weight_bits: int) -> float:
        """Bytes of one layer's weights at ``weight_bits``, group scales and zero points included."""
        if weight_bits == FLOAT16_BITS:
            return layer.params * FLOAT16_BITS / 8
        return layer.params * weight_bits / 8 + self.groups(layer) * self.config["scale_bits"] / 8

    def groups(self, layer: LayerSpec) -> int:
        """Scale groups of a layer: ``ceil(K / group_size)`` per output row (one per row for size 0)."""
        size = self.config["group_size"]
        fan_in = layer.params // layer.out_channels
        return layer.out_channels * (1 if size == 0 else math.ceil(fan_in / size))

    def layer_cost(self, layer: LayerSpec, weight_bits: int, act_bits: int) -> LayerCost:
        self.check_bits(weight_bits, act_bits)
        return self._cost(layer, int(weight_bits))

    def layer_costs(self, layer: LayerSpec, bit_pairs: Sequence[tuple[int, int]]) -> list[LayerCost]:
        """One computation per weight width: activation bits do not change the cost."""
        for w, a in bit_pairs:
            self.check_bits(w, a)
        by_width = {int(w): self._cost(layer, int(w)) for w in {w for w, _ in bit_pairs}}
        return [by_width[int(w)] for w, _ in bit_pairs]

    def _cost(self, layer: LayerSpec, weight_bits: int) -> LayerCost:
        size = self.weight_bytes(layer, weight_bits)
        memory_s = size / self._bytes_per_s
        compute_s = 2.0 * layer.macs * self.config["batch"] / self._ops_per_s
        bound = "memory" if memory_s >= compute_s else "compute"
        details = {"bytes": size, "memory_s": memory_s, "compute_s": compute_s, "bound": bound,
                   "groups": 0 if weight_bits == FLOAT16_BITS else self.groups(layer)}
        return LayerCost(latency_s=max(memory_s, compute_s) + self._overhead_s,
                         energy_j=size * self.config["energy_pj_per_byte"] * 1e-12, details=details)


@hookimpl
def haq_hardware_models() -> list[type[HardwareModel]]:
    return [DecodeRoofline]
