"""Hardware benchmark: zoo networks at uniform bits on every built-in hardware model.

For each network and hardware model: latency and energy of the uniform 2, 3, 4,
5, 6 and 8-bit policies, their ratio to 8-bit, and the cost-table build time cold
(simulating every layer at every bit pair) and cached (loading it back).  Also
prints BISMO-cloud against HAQ's published MobileNet-V2 table.

    python -m benchmarks.hardware            # all four zoo networks
    python -m benchmarks.hardware --quick    # MobileNet-V1/V2 only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from haq_plugin import extract_layers, load_hardware
from haq_plugin.engine.costs import build_cost_table
from haq_plugin.storage.formatting import markdown_table, si
from haq_plugin.tasks.zoo import IMAGENET_INPUT_SHAPE, ZOO

HARDWARE = ("bitfusion", "bitfusion-cloud", "bismo-edge", "bismo-cloud")
UNIFORM_BITS = (2, 3, 4, 5, 6, 8)
HAQ_TABLE = Path(__file__).resolve().parent.parent / "tests" / "data" / "haq" / \
    "qmobilenetv2_imagenet100_batch16_latency_table.npy"


def measure(networks: list[str], repeats: int = 3) -> list[dict]:
    """One record per (network, hardware): uniform-bit costs and table build times."""
    records = []
    for net in networks:
        layers = extract_layers(ZOO[net]().eval(), torch.zeros(IMAGENET_INPUT_SHAPE))
        for hw_name in HARDWARE:
            cold, cached = [], []
            for _ in range(repeats):
                hardware = load_hardware(hw_name)  # a fresh instance: no in-memory memo from the last repeat
                with tempfile.TemporaryDirectory() as cache:
                    os.environ["HAQ_PLUGIN_CACHE"] = cache
                    table = build_cost_table(hardware, layers)
                    cold.append(table.build_seconds)
                    cached.append(build_cost_table(hardware, layers).build_seconds)
            record = {"network": net, "hardware": hw_name, "layers": len(layers),
                      "table_cold_s": statistics.median(cold), "table_cached_s": statistics.median(cached),
                      "latency_s": {}, "energy_j": {}}
            for bits in UNIFORM_BITS:
                record["latency_s"][bits] = table.uniform_cost("latency", bits)
                if table.energy is not None:
                    record["energy_j"][bits] = table.uniform_cost("energy", bits)
            records.append(record)
    return records


def bismo_reference() -> dict | None:
    """BISMO-cloud against HAQ's table (None when the table file is not in this checkout)."""
    if not HAQ_TABLE.exists():
        return None
    from haq_plugin.hardware_models.bismo import compare_to_reference

    return compare_to_reference(np.load(HAQ_TABLE), load_hardware("bismo-cloud"))


def to_markdown(records: list[dict], reference: dict | None) -> str:
    out = ["### Latency and energy at uniform bits (ratio to 8/8 in brackets)\n"]
    headers = ["network", "hardware"] + [f"{b}/{b}" for b in UNIFORM_BITS] + ["table cold", "table cached"]
    rows = []
    for r in records:
        base = r["latency_s"][8]
        cells = [f"{si(r['latency_s'][b], 's')} ({r['latency_s'][b] / base:.2f})" for b in UNIFORM_BITS]
        rows.append([r["network"], r["hardware"] + " latency", *cells,
                     f"{r['table_cold_s']:.2f} s", f"{r['table_cached_s'] * 1e3:.1f} ms"])
        if r["energy_j"]:
            ebase = r["energy_j"][8]
            cells = [f"{si(r['energy_j'][b], 'J')} ({r['energy_j'][b] / ebase:.2f})" for b in UNIFORM_BITS]
            rows.append([r["network"], r["hardware"] + " energy", *cells, "", ""])
    out.append(markdown_table(headers, rows))
    out.append("\nLatency and energy are per batch of the model's configured batch size (edge 1, cloud 16). "
               "Table build times are medians of 3 runs over all 8x8 bit pairs.\n")
    if reference:
        out.append("\n### BISMO-cloud against HAQ's published MobileNet-V2 table\n")
        out.append("```\n" + _format_reference(reference) + "\n```\n")
    return "".join(out)


def _format_reference(reference: dict) -> str:
    from haq_plugin.hardware_models.bismo import format_comparison

    return format_comparison(reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="MobileNet-V1/V2 only, one repeat")
    parser.add_argument("--json", type=Path, help="also write the records as JSON")
    args = parser.parse_args()
    networks = ["mobilenet_v1", "mobilenet_v2"] if args.quick else list(ZOO)
    records = measure(networks, repeats=1 if args.quick else 3)
    reference = bismo_reference()
    print(to_markdown(records, reference))
    if args.json:
        args.json.write_text(json.dumps({"records": records}, indent=2, default=str))


if __name__ == "__main__":
    main()
