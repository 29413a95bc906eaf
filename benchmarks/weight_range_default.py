"""Each backend's ``weight_range`` default, measured: min-max against MSE-clipped weight ranges.

For each workload (the demo, the peer workload of :mod:`benchmarks.peer_workload`),
each built-in backend with per-channel ranges (torch.ao, torchao, brevitas) and
each value of its ``weight_range`` option, this prints

* the held-out test accuracy of uniform 2-, 3- and 4-bit weights (first and
  last layer at 8 bits, activations in floating point), and
* the median held-out test accuracy of three searches (seeds 0, 1, 2) at one
  size budget (weights only, as ``--constraint size`` searches), on hardware
  ``bitfusion``, through :func:`haq_plugin.engine.search.search`.

The searches use ``strategy="random"``: its policies depend on the seed alone,
so both values of the option are measured on the same policies, and the
comparison is of the ranges, not of the agent.  Test accuracy is the best
(validation) policy re-applied on the held-out split by a backend prepared
once with the same options (no finetuning, so this is what
:func:`benchmarks.heldout.held_out_accuracy` measures, without preparing
torchao's exported graph again for every seed).

    python -m benchmarks.weight_range_default                    # about 11 min on 2 busy cores
    python -m benchmarks.weight_range_default --episodes 20 --workloads demo --backends torch.ao
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from haq_plugin.api.backend import QuantBackend, prepare_for_search
from haq_plugin.api.plugins import load_backend
from haq_plugin.api.quantize_mode import WEIGHTS_ONLY, use_quantize_mode
from haq_plugin.engine.evaluate import evaluate_policy
from haq_plugin.engine.search import search
from haq_plugin.storage.formatting import markdown_table
from haq_plugin.tasks.demo import load_demo

from benchmarks.peer_workload import load_peer_task

WORKLOADS: dict[str, Callable[[], Any]] = {"demo": load_demo, "peer": load_peer_task}
BACKENDS = ("torch.ao", "torchao", "brevitas")
WEIGHT_RANGES = ("minmax", "mse")
UNIFORM_BITS = (2, 3, 4)


@dataclass
class Measurement:
    """One workload, backend and ``weight_range``: uniform and searched test accuracies."""

    workload: str
    backend: str
    weight_range: str
    uniform: dict[int, float] = field(default_factory=dict)
    searched: list[float] = field(default_factory=list)
    searched_val: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def median(self) -> float:
        return statistics.median(self.searched)


def test_backend(task: Any, backend_name: str, weight_range: str) -> QuantBackend:
    """A backend prepared weight-only with ``weight_range``, to evaluate policies on the test split."""
    backend = load_backend(backend_name, weight_range=weight_range)
    use_quantize_mode(backend, WEIGHTS_ONLY)
    prepare_for_search(backend, task.model, task.example_input, task.calibration_data)
    return backend


def uniform_accuracies(task: Any, backend: QuantBackend) -> dict[int, float]:
    """Test accuracy of uniform weight bits, first and last layer kept at 8, activations float."""
    names = backend.layer_names
    accuracies = {}
    for bits in UNIFORM_BITS:
        policy = {name: (8, 8) if name in (names[0], names[-1]) else (bits, 8) for name in names}
        accuracies[bits] = evaluate_policy(backend, policy, task.test_eval_fn, 0, task.train_data)
    return accuracies


def searched_accuracy(task: Any, backend: QuantBackend, seed: int, args: argparse.Namespace) -> tuple[float, float]:
    """Best validation accuracy of one random search and its policy's test accuracy on ``backend``."""
    result = search(task.model, task.example_input, hardware="bitfusion",
                    backend=load_backend(backend.name, weight_range=backend.config["weight_range"]),
                    constraint="size",
                    budget=args.budget, eval_fn=task.eval_fn, calibration_data=task.calibration_data,
                    train_data=task.train_data, episodes=args.episodes, strategy="random", seed=seed,
                    progress=False, float_accuracy=task.float_val_accuracy)
    assert result.settings.quantize == WEIGHTS_ONLY and result.settings.finetune_steps == 0
    return result.accuracy, evaluate_policy(backend, result.policy.bits, task.test_eval_fn, 0, task.train_data)


def measure(workload: str, task: Any, backend_name: str, weight_range: str, args: argparse.Namespace) -> Measurement:
    start = time.perf_counter()
    backend = test_backend(task, backend_name, weight_range)
    row = Measurement(workload, backend_name, weight_range, uniform_accuracies(task, backend))
    for seed in args.seeds:
        val, test = searched_accuracy(task, backend, seed, args)
        row.searched_val.append(val)
        row.searched.append(test)
    row.seconds = time.perf_counter() - start
    print(f"{workload} {backend_name} {weight_range}: uniform {row.uniform}, searched test {row.searched} "
          f"({row.seconds:.0f} s)", file=sys.stderr, flush=True)
    return row


def to_markdown(rows: list[Measurement], args: argparse.Namespace) -> str:
    header = ["workload", "backend", "weight_range", *(f"uniform w{b}" for b in UNIFORM_BITS),
              f"search test (median of {len(args.seeds)})", "test per seed", "val (median)"]
    body = [[r.workload, r.backend, r.weight_range, *(f"{r.uniform[b]:.2f}" for b in UNIFORM_BITS),
             f"{r.median:.2f}", " / ".join(f"{v:.2f}" for v in r.searched),
             f"{statistics.median(r.searched_val):.2f}"] for r in rows]
    return markdown_table(header, body) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--budget", type=float, default=0.375, help="size budget, a fraction of the 8-bit size")
    parser.add_argument("-o", "--output", type=Path, help="also write the markdown table here")
    parser.add_argument("--json", type=Path, help="also write every measurement as JSON")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = []
    for workload in args.workloads:
        task = WORKLOADS[workload]()
        for backend_name in args.backends:
            rows.extend(measure(workload, task, backend_name, value, args) for value in WEIGHT_RANGES)
    table = to_markdown(rows, args)
    print(table)
    print(f"total {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if args.output:
        args.output.write_text(table)
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()
