"""HAQ's published hardware figures beside ours, with the defaults and the ``haq-paper`` presets.

Rows:

* MobileNet-V1 on Bit Fusion (``bitfusion``), first layer at 8/8, W4A4 / W6A4 /
  W6A6 / W8A8: latency and energy per image, and their ratios to W8A8;
* MobileNet-V1 and V2 on BISMO edge and cloud at uniform 8 bits: latency per
  batch (edge batch 1, cloud batch 16), and uniform 4/5/6-bit ratios to 8 bits;
  HAQ's published MobileNet-V2 cloud table gives the reference ratios for the
  cloud V2 row.

    python -m benchmarks.paper_figures            # markdown to stdout
    python -m benchmarks.paper_figures --json F   # also the numbers as JSON

Why the presets are what they are: :mod:`haq_plugin.hardware_models.haq_presets`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from haq_plugin import extract_layers, load_hardware
from haq_plugin.engine.costs import build_cost_table
from haq_plugin.storage.formatting import markdown_table
from haq_plugin.hardware_models.haq_presets import PAPER_BISMO_8BIT_MS, PAPER_BITFUSION_MOBILENET_V1
from haq_plugin.tasks.zoo import IMAGENET_INPUT_SHAPE, ZOO

BITFUSION_PAIRS = ((4, 4), (6, 4), (6, 6), (8, 8))
RATIO_BITS = (4, 5, 6)
HAQ_TABLE = Path(__file__).resolve().parent.parent / "tests" / "data" / "haq" / \
    "qmobilenetv2_imagenet100_batch16_latency_table.npy"


def network_layers(name: str) -> list:
    return extract_layers(ZOO[name]().eval(), torch.zeros(IMAGENET_INPUT_SHAPE))


def bitfusion_rows(preset: str = "") -> dict[str, Any]:
    """Per-image latency (ms) and energy (mJ) of MobileNet-V1 with the first layer at 8/8."""
    hw = load_hardware("bitfusion", preset=preset)
    layers = network_layers("mobilenet_v1")
    table = build_cost_table(hw, layers, cache=False)
    batch = hw.config["batch"]
    out: dict[str, Any] = {"latency_ms": {}, "energy_mj": {}}
    for pair in BITFUSION_PAIRS:
        bits = [(8, 8)] + [pair] * (len(layers) - 1)
        out["latency_ms"][pair] = table.policy_cost("latency", bits) / batch * 1e3
        out["energy_mj"][pair] = table.policy_cost("energy", bits) / batch * 1e3
    return out


def bismo_rows(preset: str = "") -> dict[tuple[str, str], dict[str, Any]]:
    """Uniform 8-bit latency (ms per batch) and uniform 4/5/6-bit ratios for both networks and configs."""
    rows = {}
    for net in ("mobilenet_v1", "mobilenet_v2"):
        layers = network_layers(net)
        for hw_name in ("bismo-edge", "bismo-cloud"):
            table = build_cost_table(load_hardware(hw_name, preset=preset), layers, cache=False)
            eight = table.uniform_cost("latency", 8)
            rows[(hw_name, net)] = {"latency_8bit_ms": eight * 1e3,
                                    "ratios": {b: table.uniform_cost("latency", b) / eight for b in RATIO_BITS}}
    return rows


def reference_ratios() -> dict[int, float] | None:
    """Uniform-bit ratios of HAQ's published MobileNet-V2 cloud table (None when it is not checked out)."""
    if not HAQ_TABLE.exists():
        return None
    table = np.load(HAQ_TABLE).astype(np.float64)
    eight = table[:, 7, 7].sum()
    return {b: float(table[:, b - 1, b - 1].sum() / eight) for b in RATIO_BITS}


def _ratio(values: dict, key: Any) -> float:
    return values[key] / values[(8, 8)]


def bitfusion_markdown(default: dict, preset: dict) -> str:
    paper = PAPER_BITFUSION_MOBILENET_V1
    headers = ["MobileNet-V1 on Bit Fusion", *(f"W{w}A{a}" for w, a in BITFUSION_PAIRS)]
    rows = []
    for metric, unit in (("latency_ms", "ms"), ("energy_mj", "mJ")):
        what = metric.split("_")[0]
        rows.append([f"paper {what} ({unit})", *(f"{paper[metric][p]:.2f}" for p in BITFUSION_PAIRS)])
        for label, ours in (("ours, default", default), ("ours, preset=haq-paper", preset)):
            rows.append([f"{label} {what} ({unit})", *(f"{ours[metric][p]:.2f}" for p in BITFUSION_PAIRS)])
        rows.append([f"paper {what}, ratio to W8A8", *(f"{_ratio(paper[metric], p):.3f}" for p in BITFUSION_PAIRS)])
        for label, ours in (("ours, default", default), ("ours, preset=haq-paper", preset)):
            rows.append([f"{label}, ratio", *(f"{_ratio(ours[metric], p):.3f}" for p in BITFUSION_PAIRS)])
    return markdown_table(headers, rows)


def bismo_markdown(default: dict, preset: dict, reference: dict[int, float] | None) -> str:
    headers = ["network", "hardware", "paper 8-bit", "ours default", "ours haq-paper",
               "4/5/6-bit ratios default", "4/5/6-bit ratios haq-paper", "HAQ table ratios"]
    rows = []
    for (hw_name, net), paper_ms in PAPER_BISMO_8BIT_MS.items():
        d, p = default[(hw_name, net)], preset[(hw_name, net)]
        ref = reference if reference and (hw_name, net) == ("bismo-cloud", "mobilenet_v2") else None
        rows.append([net, hw_name, f"{paper_ms:.2f} ms", f"{d['latency_8bit_ms']:.1f} ms",
                     f"{p['latency_8bit_ms']:.1f} ms", _ratios(d["ratios"]), _ratios(p["ratios"]),
                     _ratios(ref) if ref else ""])
    return markdown_table(headers, rows)


def _ratios(ratios: dict[int, float]) -> str:
    return " / ".join(f"{ratios[b]:.3f}" for b in RATIO_BITS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON")
    args = parser.parse_args()
    bf = {"default": bitfusion_rows(), "haq-paper": bitfusion_rows("haq-paper")}
    bi = {"default": bismo_rows(), "haq-paper": bismo_rows("haq-paper")}
    print("### HAQ's MobileNet-V1 figures on Bit Fusion (first layer 8/8, per image)\n")
    print(bitfusion_markdown(bf["default"], bf["haq-paper"]))
    print("\n### HAQ's BISMO figures (uniform 8-bit latency per batch; ratios of uniform 4/5/6 bits to 8)\n")
    print(bismo_markdown(bi["default"], bi["haq-paper"], reference_ratios()))
    if args.json:
        args.json.write_text(json.dumps({"bitfusion": bf, "bismo": bi}, indent=2, default=str))


if __name__ == "__main__":
    main()
