"""Language-model search quality: SmolLM2-135M, weight-only group-wise bits, budgets in bits per weight.

For each budget (bits per weight of the block linears, scales included) and
strategy, the searched policy's perplexity on the held-out test windows of
``text:pydoc``; DDPG and random are medians over seeds, greedy and the rules
are deterministic.  Strategies:

* ``ddpg``, ``random``: the search with that strategy, ``--episodes`` each;
* ``greedy``: the sensitivity-greedy strategy (its losses measured once and
  shared by every budget);
* ``uniform``: the highest uniform width that fits;
* ``llama.cpp rule``: llama.cpp's Q*_K_M idea, one more bit for ``v_proj``
  and ``down_proj`` than for the other linears, the highest base that fits.

Run ``python -m benchmarks.llm_quality`` (full: about an hour on 2 cores) or
``--quick``; it prints a table and writes ``benchmarks/llm_results.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from haq_plugin import search
from haq_plugin.adapters.groupwise import GroupwiseBackend
from haq_plugin.engine.bits_per_weight import policy_bits_per_weight
from haq_plugin.tasks.llm.spec import language_model_task

RESULTS = Path(__file__).with_name("llm_results.json")
RULE_BOOSTED = ("v_proj", "down_proj")


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def rule_policy(names: list[str], base: int, top: int = 8) -> dict[str, tuple[int, int]]:
    """llama.cpp's Q*_K_M rule: ``base`` bits, one more for v_proj and down_proj; lm_head at ``top``."""
    bits = {}
    for name in names:
        if name == "lm_head":
            bits[name] = (top, 8)
        else:
            bits[name] = (base + 1 if name.endswith(RULE_BOOSTED) else base, 8)
    return bits


def best_rule(names: list[str], layers: Any, backend: GroupwiseBackend, budget_bpw: float) -> dict | None:
    """The rule's highest base width whose bits per weight are at most the budget."""
    searched = [name for name in names if name != "lm_head"]
    for base in range(7, 1, -1):
        bits = rule_policy(names, base)
        if policy_bits_per_weight(layers, bits, backend, names=searched) <= budget_bpw + 1e-9:
            return bits
    return None


def test_perplexity(backend: GroupwiseBackend, bits: dict, test_fn: Callable) -> float:
    backend.set_policy(bits)
    backend.calibrate()
    return float(test_fn(backend.model))


def run(budgets: list[float], seeds: list[int], episodes: int, decisions: str, strategies: list[str],
        threads: int, max_bits: int, random_seeds: list[int], output: Path, rounding: str = "nearest",
        calibration_windows: int = 1) -> dict[str, Any]:
    torch.set_num_threads(threads)
    task = language_model_task("llm:smollm2-135m", None, {"calibration_windows": calibration_windows})
    model, example = task.model, task.example_input
    calibration = list(task.windows.calibration.split(1))
    val_fn, test_fn = task.val_eval_fn(), task.test_eval_fn()
    backend = GroupwiseBackend(group_size=64, rounding=rounding)
    backend.reuse_prepared = True  # as in a sweep: one prepare (and one set of GPTQ Hessians) for every search
    reference = {"val": val_fn(model), "test": test_fn(model)}
    rows: list[dict[str, Any]] = []
    common = dict(hardware="llm-decode", backend=backend, constraint="size", metric="perplexity",
                  decisions=decisions, keep_first_layer_8bit=False, quantize="weights", eval_fn=val_fn,
                  calibration_data=calibration, progress=False, float_accuracy=reference["val"], max_bits=max_bits)
    report = {"reference": reference, "rows": rows, "python": sys.version.split()[0], "episodes": episodes,
              "decisions": decisions, "threads": threads, "seeds": seeds, "random_seeds": random_seeds,
              "max_bits": max_bits, "group_size": 64, "rounding": rounding,
              "calibration_windows": calibration_windows}
    runs = {"ddpg": seeds, "random": random_seeds}
    for budget in budgets:
        for strategy in strategies:
            for seed in runs.get(strategy, seeds[:1]):
                start = time.perf_counter()
                result = search(model, example, budget=f"{budget}bpw", strategy=strategy, seed=seed,
                                episodes=episodes if strategy in ("ddpg", "random") else 1, **common)
                seconds = time.perf_counter() - start
                bits = result.policy.bits
                rows.append({"budget_bpw": budget, "strategy": strategy, "seed": seed, "seconds": seconds,
                             "val_ppl": result.accuracy, "test_ppl": test_perplexity(backend, bits, test_fn),
                             "bpw": result.bits_per_weight,
                             "peak_rss_gb": _peak_rss_gb()})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
                output.write_text(json.dumps(report, indent=2) + "\n")  # partial results survive an interruption
        layers = result.layers
        names = [layer.name for layer in layers]
        rule = best_rule(names, layers, backend, budget)
        if rule is not None:
            rows.append({"budget_bpw": budget, "strategy": "llama.cpp rule", "seed": 0, "seconds": 0.0,
                         "val_ppl": test_perplexity(backend, rule, val_fn),
                         "test_ppl": test_perplexity(backend, rule, test_fn),
                         "bpw": policy_bits_per_weight(layers, rule, backend,
                                                       names=[n for n in names if n != "lm_head"]),
                         "peak_rss_gb": _peak_rss_gb()})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return report


def medians(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (budget, strategy): median test perplexity over seeds."""
    groups: dict[tuple[float, str], list[dict]] = {}
    for row in report["rows"]:
        groups.setdefault((row["budget_bpw"], row["strategy"]), []).append(row)
    return [{"budget_bpw": budget, "strategy": strategy,
             "test_ppl": statistics.median(r["test_ppl"] for r in rows),
             "val_ppl": statistics.median(r["val_ppl"] for r in rows),
             "bpw": statistics.median(r["bpw"] for r in rows),
             "seconds": statistics.median(r["seconds"] for r in rows), "runs": len(rows)}
            for (budget, strategy), rows in sorted(groups.items())]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one budget, one seed, 20 episodes")
    parser.add_argument("--budgets", default="3.0,3.25,3.5,3.75")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--decisions", default="block")
    parser.add_argument("--strategies", default="greedy,ddpg,random,uniform")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-bits", type=int, default=5, help="widest width any strategy may choose")
    parser.add_argument("--random-seeds", default="0", help="seeds of the random strategy")
    parser.add_argument("--rounding", default="nearest", choices=("nearest", "gptq"),
                        help="the groupwise backend's rounding")
    parser.add_argument("--calibration-windows", type=int, default=1,
                        help="calibration windows of 256 tokens (what GPTQ's Hessians are measured on)")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    budgets = [3.5] if args.quick else [float(b) for b in args.budgets.split(",")]
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    report = run(budgets, seeds, 20 if args.quick else args.episodes, args.decisions,
                 args.strategies.split(","), args.threads, args.max_bits,
                 [int(s) for s in args.random_seeds.split(",")], Path(args.output), args.rounding,
                 args.calibration_windows)
    report["medians"] = medians(report)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"reference perplexity: val {report['reference']['val']:.3f}, test {report['reference']['test']:.3f} "
          f"(Python {report['python']}, text:pydoc)")
    print(f"{'bpw':>5} {'strategy':<15} {'test ppl':>9} {'val ppl':>8} {'bpw used':>8} {'s':>6} runs")
    for row in report["medians"]:
        print(f"{row['budget_bpw']:>5} {row['strategy']:<15} {row['test_ppl']:>9.3f} {row['val_ppl']:>8.3f} "
              f"{row['bpw']:>8.3f} {row['seconds']:>6.0f} {row['runs']}")


if __name__ == "__main__":
    main()
