"""Search overhead: what a HAQ search costs beyond evaluating policies.

Runs a real search on the embedded demo (compact MobileNet-V2 on the digits)
with a real backend and hardware model, checkpointing into a temporary
directory, and splits the time of each episode into the backend evaluation
(set bits, calibrate, evaluate) and everything else: agent actions, budget
enforcement, DDPG updates, the checkpoint, observers and the progress bar.
Warmup episodes (random actions, no learning) and learning episodes (one DDPG
update per step) are reported separately, because they differ.

    python -m benchmarks.search_overhead            # 60 episodes, 20 of them warmup
    python -m benchmarks.search_overhead --quick    # 24 episodes, 8 of them warmup
    python -m benchmarks.search_overhead --updates-per-episode 0 6   # compare DDPG update counts
    python -m benchmarks.search_overhead --hw bitfusion --updates-per-episode 0 6 --quality-seeds 0 1 2

The DDPG learning time of each learning episode (storing it and the gradient
updates) is timed around ``DDPGAgent.observe_episode`` and reported as a
median against the median evaluation time: the figure the updates must keep
small.  ``--updates-per-episode 0`` is HAQ's one update per stored transition.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from haq_plugin.engine.agent import DDPGAgent, DDPGConfig
from haq_plugin.tasks.demo import load_demo
from haq_plugin.storage.formatting import markdown_table
from haq_plugin.api.plugins import get_plugin_manager
from haq_plugin.engine.search import search

from benchmarks.heldout import held_out_accuracy


def pick_backend() -> str:
    names = get_plugin_manager().backends.names()
    for name in ("torch.ao", "brevitas"):
        if name in names:
            return name
    sys.exit(f"no torch.ao or brevitas backend is registered (found: {', '.join(names) or 'none'})")


class LearningTimer:
    """Times every ``DDPGAgent.observe_episode`` call while active (the agent's whole learning step)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._original = DDPGAgent.observe_episode

    def __enter__(self) -> "LearningTimer":
        original, seconds = self._original, self.seconds

        def timed(agent, *args, **kwargs):
            start = time.perf_counter()
            original(agent, *args, **kwargs)
            seconds.append(time.perf_counter() - start)

        DDPGAgent.observe_episode = timed
        return self

    def __exit__(self, *exc) -> None:
        DDPGAgent.observe_episode = self._original


def measure(backend: str, hardware: str, constraint: str, budget: float, episodes: int, warmup: int,
            threads: int, updates_per_episode: int = 0) -> dict:
    """One search; per-episode timing split into evaluation and overhead."""
    torch.set_num_threads(threads)
    demo = load_demo()
    with tempfile.TemporaryDirectory() as out, LearningTimer() as learning:
        start = time.perf_counter()
        result = search(demo.model, demo.example_input, hardware=hardware, backend=backend,
                        constraint=constraint, budget=budget, eval_fn=demo.eval_fn,
                        calibration_data=demo.calibration_data, episodes=episodes,
                        ddpg=DDPGConfig(warmup_episodes=warmup, updates_per_episode=updates_per_episode),
                        output_dir=Path(out), progress=False)
        total = time.perf_counter() - start
        checkpoint_bytes = (Path(out) / "checkpoint.pt").stat().st_size
    t = result.timings
    checkpoint_each = t["checkpoint"] / episodes
    phases = {}
    for phase, records in (("warmup", result.history[:warmup]), ("learning", result.history[warmup:])):
        if not records:
            continue
        evals = [r.eval_seconds for r in records]
        # record.seconds covers proposal, evaluation and learning; the checkpoint comes after it
        overheads = [r.seconds - r.eval_seconds + checkpoint_each for r in records]
        phases[phase] = {"episodes": len(records), "eval_ms": 1e3 * statistics.median(evals),
                         "overhead_ms": 1e3 * statistics.median(overheads),
                         "overhead_share": statistics.median(overheads) / statistics.median(evals)}
    learn = learning.seconds[warmup:]
    learning_evals = [r.eval_seconds for r in result.history[warmup:]]
    if learn and learning_evals:
        phases["learning"]["ddpg_ms"] = 1e3 * statistics.median(learn)
        phases["learning"]["ddpg_share"] = statistics.median(learn) / statistics.median(learning_evals)
    loop_overhead = t["loop"] - t["eval"]
    return {
        "backend": backend, "hardware": hardware, "constraint": constraint, "budget": budget,
        "episodes": episodes, "warmup": warmup, "threads": threads, "layers": len(result.layers),
        "updates_per_episode": updates_per_episode or 2 * len(result.layers),
        "steps_per_episode": 2 * len(result.layers), "total_s": total, "setup_s": t["setup"],
        "loop_s": t["loop"], "eval_s": t["eval"], "agent_s": t["agent"], "checkpoint_s": t["checkpoint"],
        "overhead_share": loop_overhead / t["eval"], "episodes_per_minute": 60 * episodes / t["loop"],
        "checkpoint_ms": 1e3 * checkpoint_each, "checkpoint_mb": checkpoint_bytes / 1e6,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "phases": phases, "best_accuracy": result.accuracy, "float_accuracy": result.float_accuracy,
        "device": "cpu", "torch": torch.__version__,
    }


def quality(backend: str, hardware: str, constraint: str, budget: float, updates_per_episode: int,
            seeds: list[int], episodes: int) -> dict:
    """Best validation and held-out test accuracy over seeds: does capping the updates cost quality?"""
    demo = load_demo()
    runs = []
    for seed in seeds:
        result = search(demo.model, demo.example_input, hardware=hardware, backend=backend, constraint=constraint,
                        budget=budget, eval_fn=demo.eval_fn, calibration_data=demo.calibration_data,
                        episodes=episodes, seed=seed, ddpg=DDPGConfig(updates_per_episode=updates_per_episode),
                        progress=False)
        test = held_out_accuracy(demo, backend, result)
        runs.append({"seed": seed, "val": result.accuracy, "test": test, "agent_s": result.timings["agent"],
                     "eval_s": result.timings["eval"]})
    return {"updates_per_episode": updates_per_episode, "episodes": episodes, "runs": runs}


def quality_markdown(records: list[dict], hardware: str, constraint: str, budget: float) -> str:
    rows = []
    for r in records:
        runs = r["runs"]
        rows.append([str(r["updates_per_episode"] or "0 (one per step)"), str(len(runs)),
                     f"{statistics.median(x['val'] for x in runs):.2f}",
                     f"{statistics.median(x['test'] for x in runs):.2f}",
                     " / ".join(f"{x['test']:.2f}" for x in runs),
                     f"{100 * statistics.median(x['agent_s'] / x['eval_s'] for x in runs):.0f}%"])
    return (f"Demo search, {records[0]['episodes']} episodes, {hardware} {constraint} {budget}, seeds "
            f"{[x['seed'] for x in records[0]['runs']]}:\n\n" + markdown_table(
                ["updates per episode", "runs", "val (median)", "test (median)", "test per seed",
                 "agent / evaluation time"], rows) + "\n")


def to_markdown(record: dict) -> str:
    r = record
    head = (f"Demo search, {r['episodes']} episodes ({r['warmup']} warmup), backend {r['backend']}, hardware "
            f"{r['hardware']} ({r['constraint']} budget {r['budget']}), {r['layers']} layers = "
            f"{r['steps_per_episode']} steps per episode, torch {r['torch']} on CPU with {r['threads']} thread(s).\n\n")
    rows = [[phase, p["episodes"], f"{p['eval_ms']:.1f} ms", f"{p['overhead_ms']:.1f} ms",
             f"{100 * p['overhead_share']:.1f}%"] for phase, p in r["phases"].items()]
    table = markdown_table(["episodes", "count", "evaluation (median)", "overhead (median)", "overhead / evaluation"],
                           rows)
    learning = r["phases"].get("learning", {})
    if "ddpg_ms" in learning:
        table += (f"\nDDPG learning per learning episode ({r['updates_per_episode']} updates): "
                  f"{learning['ddpg_ms']:.1f} ms (median) = {100 * learning['ddpg_share']:.1f}% of the median "
                  "evaluation.\n")
    tail = (f"\nWhole loop: overhead {100 * r['overhead_share']:.1f}% of evaluation time, "
            f"{r['episodes_per_minute']:.0f} episodes per minute; DDPG learning {r['agent_s']:.2f} s in total, "
            f"checkpoint {r['checkpoint_ms']:.1f} ms per episode ({r['checkpoint_mb']:.1f} MB); "
            f"setup (layers, cost table, float and uniform evaluation) {r['setup_s']:.1f} s; "
            f"peak resident memory {r['peak_rss_mb']:.0f} MB.\n")
    return head + table + tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="24 episodes, 8 warmup")
    parser.add_argument("--backend", default=None, help="torch.ao or brevitas (default: torch.ao if installed)")
    parser.add_argument("--hw", default="bismo-edge")
    parser.add_argument("--constraint", default="latency")
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--updates-per-episode", type=int, nargs="+", default=[0],
                        help="DDPGConfig.updates_per_episode values to measure (0: one per step, HAQ)")
    parser.add_argument("--quality-seeds", type=int, nargs="*", default=[],
                        help="also run full searches with these seeds per updates setting and compare quality")
    parser.add_argument("--quality-episodes", type=int, default=150)
    parser.add_argument("--json", type=Path, help="also write the record as JSON")
    args = parser.parse_args()
    episodes, warmup = (24, 8) if args.quick else (60, 20)
    records = [measure(args.backend or pick_backend(), args.hw, args.constraint, args.budget, episodes, warmup,
                       args.threads, updates) for updates in args.updates_per_episode]
    for record in records:
        print(to_markdown(record))
    if args.quality_seeds:
        torch.set_num_threads(args.threads)
        found = [quality(args.backend or pick_backend(), args.hw, args.constraint, args.budget, updates,
                         args.quality_seeds, args.quality_episodes) for updates in args.updates_per_episode]
        print(quality_markdown(found, args.hw, args.constraint, args.budget))
    if args.json:
        args.json.write_text(json.dumps(records[0] if len(records) == 1 else records, indent=2))


if __name__ == "__main__":
    main()
