"""What one search episode costs each backend on the peer workload (:mod:`benchmarks.peer_workload`).

Prepares each backend once per quantize mode on the trained peer network, then
applies the same seeded random mixed policies (weight and input bits 2..8) and
prints the median milliseconds of ``set_policy``, ``calibrate`` (256
calibration images) and ``evaluate`` (the 300 validation images) as a markdown
table, next to the float model's evaluation.

    python -m benchmarks.peer_episode_cost [--backends torch.ao brevitas] [--episodes 20]
"""

from __future__ import annotations

import argparse
import random
import statistics

import torch

from haq_plugin.api.plugins import load_backend
from haq_plugin.storage.formatting import markdown_table

from benchmarks.backend_speed import timed
from benchmarks.peer_workload import PeerTask, load_peer_task

STEPS = ("set_policy", "calibrate", "evaluate")
MODES = ("weights", "weights+activations")


def measure(task: PeerTask, backend_name: str, quantize: str, episodes: int) -> dict[str, float]:
    """Median seconds of each episode step (and of the float evaluation) over ``episodes`` random policies."""
    backend = load_backend(backend_name)
    backend.quantize = quantize
    backend.prepare(task.model, task.example_input, task.calibration_data)
    rng = random.Random(0)
    times: dict[str, list[float]] = {step: [] for step in STEPS + ("float evaluate",)}
    for _ in range(episodes):
        bits = {name: (rng.randint(2, 8), rng.randint(2, 8)) for name in backend.layer_names}
        times["set_policy"].append(timed(lambda: backend.set_policy(bits)))
        times["calibrate"].append(timed(backend.calibrate))
        times["evaluate"].append(timed(lambda: backend.evaluate(task.eval_fn)))
        times["float evaluate"].append(timed(lambda: task.eval_fn(task.model)))
    return {step: statistics.median(values) for step, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["torch.ao", "brevitas"])
    parser.add_argument("--quantize", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = load_peer_task()
    rows = []
    for backend in args.backends:
        for quantize in args.quantize:
            m = measure(task, backend, quantize, args.episodes)
            episode = sum(m[step] for step in STEPS)
            rows.append([backend, quantize] + [f"{m[step] * 1e3:.1f}" for step in STEPS]
                        + [f"{episode * 1e3:.1f}", f"{m['float evaluate'] * 1e3:.1f}"])
    print(f"Peer workload, {args.episodes} random mixed policies, {args.threads} thread(s); medians in ms.\n")
    print(markdown_table(["backend", "quantize", *STEPS, "episode", "float evaluate"], rows))


if __name__ == "__main__":
    main()
