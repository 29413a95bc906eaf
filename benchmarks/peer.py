"""Search quality on the peer workload (:mod:`benchmarks.peer_workload`), through ``haq_plugin.engine.search()``.

Runs DDPG, random and uniform at size budgets 0.5 and 0.375 and latency and
energy budgets 0.5 on ``bitfusion``, with both built-in backends, 100 episodes,
no finetuning, seeds 0, 1, 2 (uniform is deterministic: one run), and prints
the median best validation accuracy, the median test accuracy of the same
policy and the seconds per episode as a markdown table.  Latency and energy
0.5 are infeasible on this network (its smallest fractions on ``bitfusion`` are
0.749 and 0.763) and show as such; ``--budgets latency:0.8 energy:0.8`` runs.

    python -m benchmarks.peer                       # everything (about an hour on one core)
    python -m benchmarks.peer --quick               # size 0.375, brevitas, 1 seed, 30 episodes
    python -m benchmarks.peer --backends brevitas --budgets size:0.375 size:0.5 -o peer.md
    python -m benchmarks.peer --quantize weights+activations   # the default is search()'s per constraint
    python -m benchmarks.peer --budgets size:0.3 --finetune-steps 20   # finetune every episode's policy
    python -m benchmarks.peer --strategies ddpg --updates-per-episode 6  # capped DDPG updates
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from haq_plugin.engine.agent import DDPGConfig
from haq_plugin.api.errors import InfeasibleBudget
from haq_plugin.storage.formatting import markdown_table
from haq_plugin.engine.search import search

from benchmarks.heldout import held_out_accuracy
from benchmarks.peer_workload import PeerTask, load_peer_task

BUDGETS = ("size:0.5", "size:0.375", "latency:0.5", "energy:0.5")
STRATEGIES = ("ddpg", "random", "uniform")


@dataclass
class Run:
    backend: str
    constraint: str
    budget: float
    strategy: str
    seed: int
    val: float | None = None
    test: float | None = None
    cost_fraction: float | None = None
    seconds_per_episode: float | None = None
    infeasible: str | None = None
    finetune_steps: int = 0


def one(task: PeerTask, backend: str, constraint: str, budget: float, strategy: str, seed: int, episodes: int,
        quantize: str | None, finetune_steps: int = 0, updates_per_episode: int = 0) -> Run:
    run = Run(backend, constraint, budget, strategy, seed, finetune_steps=finetune_steps)
    extra = {}
    if quantize is not None:
        if "quantize" not in inspect.signature(search).parameters:
            sys.exit("this haq_plugin.engine.search() has no 'quantize' argument yet")
        extra["quantize"] = quantize
    try:
        result = search(task.model, task.example_input, hardware="bitfusion", backend=backend,
                        constraint=constraint, budget=budget, eval_fn=task.eval_fn,
                        calibration_data=task.calibration_data, train_data=task.train_data,
                        finetune_steps=finetune_steps, episodes=episodes, strategy=strategy, seed=seed,
                        ddpg=DDPGConfig(updates_per_episode=updates_per_episode), progress=False,
                        float_accuracy=task.float_val_accuracy, **extra)
    except InfeasibleBudget as exc:
        run.infeasible = f"{exc.smallest:.3f}"
        return run
    run.val, run.cost_fraction = result.accuracy, result.cost_fraction
    run.seconds_per_episode = result.timings["loop"] / max(len(result.history), 1)
    run.test = held_out_accuracy(task, backend, result)
    return run


def median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(runs: list[Run]) -> list[list[str]]:
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault((run.backend, run.constraint, run.budget, run.strategy), []).append(run)
    rows = []
    for (backend, constraint, budget, strategy), group in groups.items():
        if group[0].infeasible:
            rows.append([backend, f"{constraint} {budget:g}", strategy, "-", f"infeasible (>= {group[0].infeasible})",
                         "", "", ""])
            continue
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        rows.append([backend, f"{constraint} {budget:g}", strategy, str(len(group)),
                     fmt(median([r.val for r in group]), ".2f"), fmt(median([r.test for r in group]), ".2f"),
                     " / ".join(fmt(r.test, ".2f") for r in group),
                     fmt(median([r.seconds_per_episode for r in group]), ".3f")])
    return rows


def to_markdown(runs: list[Run], task: PeerTask, episodes: int, note: str, finetune_steps: int = 0) -> str:
    finetune = f"{finetune_steps} finetune steps per episode" if finetune_steps else "no finetuning"
    head = (f"Peer workload (MobileNet-V2-style digits CNN, float val {task.float_val_accuracy:.2f}%, test "
            f"{task.float_test_accuracy:.2f}%), hardware bitfusion, {episodes} episodes, {finetune}. "
            f"{note}\n\n")
    return head + markdown_table(["backend", "budget", "strategy", "runs", "val (median)", "test (median)",
                                  "test per seed", "s / episode"], summarise(runs)) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="size 0.375, brevitas, seed 0, 30 episodes")
    parser.add_argument("--backends", nargs="+", default=["torch.ao", "brevitas"])
    parser.add_argument("--budgets", nargs="+", default=list(BUDGETS), metavar="CONSTRAINT:FRACTION")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--quantize", default=None, help="weights or weights+activations (needs search(quantize=))")
    parser.add_argument("--finetune-steps", type=int, default=0,
                        help="finetune steps (batches of 64 training images) per episode; 0: none")
    parser.add_argument("--updates-per-episode", type=int, default=0,
                        help="DDPGConfig.updates_per_episode (0: one update per stored transition, HAQ's)")
    parser.add_argument("--note", default="", help="a line to print under the table's title")
    parser.add_argument("-o", "--output", type=Path, help="also write the markdown table here")
    parser.add_argument("--json", type=Path, help="also write every run as JSON")
    args = parser.parse_args()
    if args.quick:
        args.backends, args.budgets, args.seeds, args.episodes = ["brevitas"], ["size:0.375"], [0], 30
    task = load_peer_task()
    runs = []
    for backend in args.backends:
        for spec in args.budgets:
            constraint, fraction = spec.split(":")
            for strategy in args.strategies:
                for seed in (args.seeds[:1] if strategy == "uniform" else args.seeds):
                    start = time.perf_counter()
                    run = one(task, backend, constraint, float(fraction), strategy, seed, args.episodes,
                              args.quantize, args.finetune_steps, args.updates_per_episode)
                    runs.append(run)
                    print(f"{backend} {spec} {strategy} seed {seed}: val {run.val} test {run.test} "
                          f"cost {run.cost_fraction} ({time.perf_counter() - start:.0f} s)", file=sys.stderr,
                          flush=True)
    text = to_markdown(runs, task, args.episodes, args.note, args.finetune_steps)
    print(text)
    if args.output:
        args.output.write_text(text)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=2))


if __name__ == "__main__":
    main()
