"""How fast the Bit Fusion model searches tilings, exhaustive versus fast.

Prints the median time per layer of the literal reference search (every loop
order times every tiling, one candidate at a time) and of the vectorised search
on a few MobileNet-V2 layers, then the time to cost all 53 MobileNet-V2 layers
for all 64 weight/activation pairs (1..8 bits), for both hardware names.

    python benchmarks/bitfusion_speed.py [--repeats 3] [--pair 8 8]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from haq_plugin import extract_layers, load_hardware
from haq_plugin.engine.costs import build_cost_table
from haq_plugin.hardware_models.bitfusion.exhaustive import exhaustive_layer_counters
from haq_plugin.tasks.zoo import MobileNetV2

SAMPLE = ("features.0.0", "features.2.conv.1.0", "features.4.conv.0.0", "features.14.conv.2.0", "classifier")
"""Stem (im2col), a depthwise conv, a 1x1 expansion, a 1x1 projection and the classifier."""

ALL_PAIRS = [(w, a) for w in range(1, 9) for a in range(1, 9)]


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pair", type=int, nargs=2, default=(8, 8), metavar=("W", "A"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    layers = extract_layers(MobileNetV2(), torch.zeros(1, 3, 224, 224))
    by_name = {layer.name: layer for layer in layers}
    w, a = args.pair
    for hw_name in ("bitfusion", "bitfusion-cloud"):
        hw = load_hardware(hw_name)
        print(f"\n{hw_name} ({hw.describe_config()})")
        print(f"{'layer':24s} {'shape':34s} {'exhaustive':>11s} {'fast 1 pair':>12s} {'fast 64 pairs':>14s}")
        ratios = []
        for name in SAMPLE:
            layer = by_name[name]
            slow = median_seconds(lambda: exhaustive_layer_counters(layer, hw.array, hw.energy, hw.config["batch"],
                                                                    w, a), args.repeats)
            # a fresh instance per run: nothing cached from the previous run
            fast = median_seconds(lambda: load_hardware(hw_name).layer_cost(layer, w, a), args.repeats)
            table = median_seconds(lambda: load_hardware(hw_name).layer_costs(layer, ALL_PAIRS), args.repeats)
            ratios.append(slow / fast)
            print(f"{name:24s} {layer.describe():34s} {slow * 1e3:9.1f}ms {fast * 1e3:10.2f}ms {table * 1e3:12.1f}ms")
        print(f"median speed-up for one {w}/{a}-bit pair: {statistics.median(ratios):.0f}x")
        table = build_cost_table(load_hardware(hw_name), layers, cache=False)
        print(f"MobileNet-V2 full cost table ({len(layers)} layers x {len(table.bits) ** 2} pairs): "
              f"{table.build_seconds:.2f} s")


if __name__ == "__main__":
    main()
