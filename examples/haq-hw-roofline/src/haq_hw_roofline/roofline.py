"""A roofline model of an inference GPU with integer tensor cores of several widths.

A roofline (Williams, Waterman and Patterson, CACM 2009) bounds the time of a
kernel from below by the larger of two times: its arithmetic at the chip's peak
rate, and its DRAM traffic at the peak bandwidth.  It ignores everything in
between (caches, occupancy, launch overhead), which makes it a useful first
answer to "does 4-bit help on this chip?": mixed precision only pays where a
layer is compute bound and narrower operands reach a faster tensor-core rate, or
where it is memory bound and narrower operands shrink the bytes moved.

The model, per layer and per batch of ``batch`` samples:

* operations: ``2 * macs * batch`` (a multiply-accumulate counts as two
  operations, the convention of the TOPS figures in GPU datasheets);
* compute rate: the operands of a product have ``max(weight_bits, act_bits)``
  bits, rounded up to the narrowest enabled tensor-core width (2, 4 or 8 bits);
  16-bit operands run at the FP16 rate; 9 to 15 bits are rejected;
* DRAM bytes: weights ``params * weight_bits / 8`` (read once per batch),
  inputs ``in_activations * act_bits / 8 * batch`` and outputs
  ``out_activations * output_bits / 8 * batch``; every tensor crosses DRAM
  exactly once, the roofline's compulsory-traffic assumption;
* latency: ``max(ops / rate, bytes / bandwidth)``;
* energy (illustrative): ``ops * pJ/op of the width used + bytes * pJ/byte``.
"""

from __future__ import annotations

from dataclasses import dataclass

from haq_plugin import HaqError, HardwareModel, LayerCost, LayerSpec, Option

T4_DATASHEET = ("NVIDIA T4 Tensor Core GPU datasheet (2019), "
                "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/tesla-t4/"
                "t4-tensor-core-datasheet.pdf")
HOROWITZ_2014 = ("Illustrative: M. Horowitz, 'Computing's energy problem (and what we can do about it)', "
                 "ISSCC 2014, 45 nm figures")


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


@dataclass(frozen=True)
class ComputeUnit:
    """One throughput tier: the widest operand it takes, its peak rate and energy per operation."""

    name: str
    bits: int
    ops_per_s: float
    pj_per_op: float


# (tier name, widest operand bits, throughput option, energy option), narrowest first.
TIERS = (
    ("int2", 2, "int2_tops", "int2_pj_per_op"),
    ("int4", 4, "int4_tops", "int4_pj_per_op"),
    ("int8", 8, "int8_tops", "int8_pj_per_op"),
    ("fp16", 16, "fp16_tflops", "fp16_pj_per_op"),
)


class RooflineModel(HardwareModel):
    """Latency = max(compute time at the operand width's peak rate, DRAM bytes / bandwidth)."""

    name = "roofline"
    description = ("Roofline of an inference GPU (default NVIDIA T4): max(ops at the tensor-core rate "
                   "of the operand width, DRAM bytes / bandwidth)")
    citation = ("S. Williams, A. Waterman, D. Patterson, 'Roofline: an insightful visual performance model "
                "for multicore architectures', CACM 52(4), 2009; defaults from the " + T4_DATASHEET)
    has_energy = True
    options = (
        Option("int8_tops", float, 130.0, "peak INT8 tensor-core rate, 10^12 ops/s",
               source=T4_DATASHEET, check=_positive),
        Option("int4_tops", float, 260.0, "peak INT4 rate, 10^12 ops/s (0: no INT4 units, 3-4 bit runs as INT8)",
               minimum=0.0, source=T4_DATASHEET),
        Option("int2_tops", float, 0.0, "peak INT2 rate, 10^12 ops/s (0: no INT2 units, the T4 has none)",
               minimum=0.0, source=T4_DATASHEET),
        Option("fp16_tflops", float, 65.0, "peak FP16 rate for 16-bit operands, 10^12 ops/s",
               source=T4_DATASHEET, check=_positive),
        Option("bandwidth_gbps", float, 320.0, "DRAM bandwidth, 10^9 bytes/s",
               source=T4_DATASHEET, check=_positive),
        Option("batch", int, 1, "samples per batch; costs are per batch", minimum=1),
        Option("output_bits", int, 8, "bits per output value written to DRAM (8: requantized epilogue, "
                                      "32: raw accumulators)", choices=(8, 16, 32)),
        Option("int2_pj_per_op", float, 0.056, "energy per INT2 op, pJ", minimum=0.0, source=HOROWITZ_2014),
        Option("int4_pj_per_op", float, 0.075, "energy per INT4 op, pJ", minimum=0.0, source=HOROWITZ_2014),
        Option("int8_pj_per_op", float, 0.15, "energy per INT8 op, pJ", minimum=0.0, source=HOROWITZ_2014),
        Option("fp16_pj_per_op", float, 1.0, "energy per FP16 op, pJ", minimum=0.0, source=HOROWITZ_2014),
        Option("dram_pj_per_byte", float, 160.0, "energy per DRAM byte, pJ", minimum=0.0, source=HOROWITZ_2014),
    )

    def setup(self) -> None:
        """Turn the options into the enabled compute units once, narrowest first."""
        self.units = tuple(
            ComputeUnit(name, bits, self.config[rate] * 1e12, self.config[energy])
            for name, bits, rate, energy in TIERS if self.config[rate] > 0
        )
        self.bytes_per_s = self.config["bandwidth_gbps"] * 1e9

    @property
    def supported_bits(self) -> tuple[int, ...]:
        return (1, 2, 3, 4, 5, 6, 7, 8, 16)

    def unit_for(self, weight_bits: int, act_bits: int) -> ComputeUnit:
        """The narrowest enabled unit whose width holds both operands."""
        width = max(weight_bits, act_bits)
        for unit in self.units:
            if width <= unit.bits:
                return unit
        raise HaqError(f"hardware model '{self.name}' has no compute unit for {width}-bit operands.")

    def dram_bytes(self, layer: LayerSpec, weight_bits: int, act_bits: int) -> dict[str, float]:
        """Bytes each tensor moves through DRAM for one batch."""
        batch = self.config["batch"]
        return {
            "weight_bytes": layer.params * weight_bits / 8,
            "input_bytes": layer.in_activations * act_bits / 8 * batch,
            "output_bytes": layer.out_activations * self.config["output_bits"] / 8 * batch,
        }

    def layer_cost(self, layer: LayerSpec, weight_bits: int, act_bits: int) -> LayerCost:
        self.check_bits(weight_bits, act_bits)
        unit = self.unit_for(weight_bits, act_bits)
        ops = 2.0 * layer.macs * self.config["batch"]
        traffic = self.dram_bytes(layer, weight_bits, act_bits)
        total_bytes = sum(traffic.values())
        compute_s = ops / unit.ops_per_s
        memory_s = total_bytes / self.bytes_per_s
        energy_pj = ops * unit.pj_per_op + total_bytes * self.config["dram_pj_per_byte"]
        details = {"unit": unit.name, "ops": ops, "dram_bytes": total_bytes, **traffic,
                   "compute_s": compute_s, "memory_s": memory_s,
                   "bound": "compute" if compute_s >= memory_s else "memory",
                   "ops_per_byte": ops / total_bytes}
        return LayerCost(latency_s=max(compute_s, memory_s), energy_j=energy_pj * 1e-12, details=details)
