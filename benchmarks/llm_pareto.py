"""The language-model trade-off as a picture: test perplexity against bits per weight and decode latency.

Reads the rows of ``benchmarks/llm_quality.py`` (one or more JSON files) and
draws every strategy's policies.  Decode latency is ``llm-decode``'s, on its
default device: at one token every SmolLM2 linear is memory bound there (a
2-bit weight in groups of 64 needs about 6 operations per byte, the device's
ridge point is 11), so a policy's latency is its weight bytes over the
bandwidth, which its bits per weight give exactly: the block linears at the
policy's bits per weight plus the kept 8-bit ``lm_head`` (tied to the
embedding, read once per token).

``python -m benchmarks.llm_pareto benchmarks/llm_results.json`` writes
``benchmarks/llm_pareto.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from haq_plugin import LayerSpec, load_hardware

HIDDEN, INTERMEDIATE, KV, BLOCKS, VOCAB = 576, 1536, 192, 30, 49152
BLOCK_SHAPES = ((HIDDEN, HIDDEN), (HIDDEN, KV), (HIDDEN, KV), (HIDDEN, HIDDEN),
                (HIDDEN, INTERMEDIATE), (HIDDEN, INTERMEDIATE), (INTERMEDIATE, HIDDEN))
MARKERS = {"greedy": "s", "ddpg": "o", "random": "x", "uniform": "^", "llama.cpp rule": "D"}


def decode_ms(bits_per_weight: float) -> float:
    """llm-decode's per-token latency of SmolLM2's linears at this many bits per weight of the blocks."""
    hardware = load_hardware("llm-decode")
    block_params = BLOCKS * sum(i * o for i, o in BLOCK_SHAPES)
    head = LayerSpec(name="lm_head", kind="linear", in_channels=HIDDEN, out_channels=VOCAB)
    head_bytes = hardware.layer_cost(head, 8, 8).details["bytes"]
    total = bits_per_weight * block_params / 8 + head_bytes
    bandwidth = hardware.config["bandwidth_gbps"] * 1e9 * hardware.config["efficiency"]
    return 1e3 * total / bandwidth


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+")
    parser.add_argument("--output", default=str(Path(__file__).with_name("llm_pareto.png")))
    args = parser.parse_args(argv)
    rows, reference = [], None
    for path in args.results:
        report = json.loads(Path(path).read_text())
        rows += report["rows"]
        reference = reference or report["reference"]["test"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for strategy, marker in MARKERS.items():
        points: dict[float, list[dict]] = {}
        for row in rows:
            if row["strategy"] == strategy:
                points.setdefault(row["budget_bpw"], []).append(row)
        if not points:
            continue
        bpw = [statistics.median(r["bpw"] for r in group) for group in points.values()]
        ppl = [statistics.median(r["test_ppl"] for r in group) for group in points.values()]
        for ax, xs in ((axes[0], bpw), (axes[1], [decode_ms(b) for b in bpw])):
            ax.scatter(xs, ppl, marker=marker, label=strategy)
    for ax in axes:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=0.8, label="float (dequantized Q4_1)")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    axes[0].set_xlabel("bits per weight of the block linears (scales included)")
    axes[1].set_xlabel("llm-decode latency per token (ms, ddr5-desktop)")
    axes[0].set_ylabel("test perplexity (text:pydoc, held out)")
    axes[0].legend(fontsize=7)
    fig.suptitle("SmolLM2-135M, groupwise weights (groups of 64), medians over seeds")
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
