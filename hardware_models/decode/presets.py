"""Named devices of the ``llm-decode`` model: peak memory bandwidth and peak compute.

Bandwidth is the device's theoretical peak (transfer rate times bus width), the
figure vendors publish; the model's ``efficiency`` option scales it to what a
kernel sustains.  Peak compute is in 10^9 arithmetic operations per second with
one multiply-accumulate counted as two operations (the convention of FLOPS
figures), at the float rate that a weight-only decode kernel uses after
dequantizing: the FP32 vector (SIMD or CUDA-core) rate.  Where the vendor
publishes it, it is quoted; where it does not, it is derived from core count,
clock and FMA width, and labelled an estimate.  At one token per step every
preset is memory bound by two to three orders of magnitude, so the compute
figures matter only for large ``batch`` values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Device:
    """One preset: its figures and where each comes from."""

    name: str
    bandwidth_gbps: float
    bandwidth_source: str
    peak_gops: float
    peak_source: str

    def values(self) -> dict[str, Any]:
        """The option values the preset sets."""
        return {"bandwidth_gbps": self.bandwidth_gbps, "peak_gops": self.peak_gops}

    def summary(self) -> str:
        """``name (B GB/s, P GOP/s)``, for the ``preset`` option's help."""
        return f"{self.name} ({self.bandwidth_gbps:g} GB/s, {self.peak_gops:g} GOP/s)"


DEVICES: tuple[Device, ...] = (
    Device("raspberry-pi-5", 17.068,
           "Raspberry Pi 5 product brief: LPDDR4X-4267; BCM2712's 32-bit memory bus: 4267 MT/s x 4 bytes",
           153.6, "estimate: 4 Cortex-A76 cores x 2.4 GHz x two 128-bit NEON FMA pipes (8 FP32 FMA/cycle) x 2"),
    Device("apple-m2", 100.0,
           "Apple M2 announcement (June 2022): 100GB/s unified memory bandwidth",
           3600.0, "Apple M2 announcement: 10-core GPU, 3.6 TFLOPS FP32 (1280 ALUs x ~1.4 GHz x 2)"),
    Device("jetson-orin-nano", 68.0,
           "NVIDIA Jetson Orin Nano 8GB module data sheet: 128-bit LPDDR5, 68 GB/s (original power modes)",
           1280.0, "estimate: 1024 Ampere CUDA cores x 625 MHz (data sheet max GPU clock) x 2 FP32 ops"),
    Device("ddr5-desktop", 89.6,
           "JEDEC DDR5-5600, two 64-bit channels: 5600 MT/s x 8 bytes x 2",
           1024.0, "estimate: 8 x86 cores x 4.0 GHz x 2 256-bit FMA units (16 FP32 FMA/cycle) x 2"),
    Device("rtx-4090", 1008.0,
           "NVIDIA GeForce RTX 4090 specifications: 24 GB GDDR6X, 384-bit, 21 Gbps = 1008 GB/s",
           82600.0, "NVIDIA Ada Lovelace architecture whitepaper: RTX 4090 peak FP32 82.6 TFLOPS"),
    Device("h100-sxm", 3350.0,
           "NVIDIA H100 Tensor Core GPU data sheet: H100 SXM 80 GB HBM3, 3.35 TB/s",
           67000.0, "NVIDIA H100 data sheet: H100 SXM FP32 67 teraFLOPS"),
)

DEFAULT_DEVICE = "ddr5-desktop"
"""A CPU-class default: a desktop running a CPU inference engine such as llama.cpp."""

BY_NAME: dict[str, Device] = {d.name: d for d in DEVICES}
PRESETS: dict[str, dict[str, Any]] = {d.name: d.values() for d in DEVICES}


def preset_help() -> str:
    """Help of the ``preset`` option: every device with its figures."""
    return ("named device, sets bandwidth_gbps and peak_gops (options given with it override them): "
            + "; ".join(d.summary() for d in DEVICES))


def preset_sources() -> str:
    """Source of every preset figure, shown by ``haq-plugin hw show``."""
    return " | ".join(f"{d.name}: bandwidth {d.bandwidth_source}; compute {d.peak_source}" for d in DEVICES)
