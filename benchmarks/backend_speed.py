"""What one search episode costs in a quantization backend, next to the float model.

Builds the demo network (untrained: speed does not depend on the weights) on the
digits data, prepares the backend once, then runs episodes with random mixed
policies and prints the median time of each step: ``set_policy``,
``calibrate`` (256 calibration images) and ``evaluate`` (the 359 validation
images), against evaluating the float model on the same images.

    python benchmarks/backend_speed.py [--backend torchao torch.ao brevitas] [--episodes 10] [--threads 1]

With several backends, each is measured on the same policies and a last table
puts their medians side by side.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from haq_plugin import extract_layers, load_backend
from haq_plugin.tasks.demo import accuracy_fn, build_demo_model, digits_splits


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", nargs="+", default=["torchao", "torch.ao", "brevitas"])
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    splits = digits_splits()
    model = build_demo_model().eval()
    example = torch.zeros(1, 1, 8, 8)
    calibration = [splits["train"][0][:256]]
    eval_fn = accuracy_fn(*splits["val"])
    names = [spec.name for spec in extract_layers(model, example)]
    medians = {name: measure(name, model, example, calibration, eval_fn, names, args) for name in args.backend}
    if len(medians) > 1:
        steps = ("set_policy", "calibrate", "evaluate")
        print(f"medians in ms ({args.episodes} episodes, {args.threads} thread(s))")
        print(f"  {'backend':10s} " + " ".join(f"{s:>11s}" for s in steps + ("episode",)))
        for name, m in medians.items():
            values = [m[s] for s in steps] + [sum(m[s] for s in steps)]
            print(f"  {name:10s} " + " ".join(f"{v * 1e3:11.1f}" for v in values))


def measure(backend_name: str, model, example, calibration, eval_fn, names, args) -> dict[str, float]:
    """Prepare one backend, run the episodes, print its figures; the median seconds of each step."""
    backend = load_backend(backend_name)
    prepare_s = timed(lambda: backend.prepare(model, example, calibration))
    rng = random.Random(0)
    steps: dict[str, list[float]] = {"set_policy": [], "calibrate": [], "evaluate": [], "float evaluate": []}
    for _ in range(args.episodes):
        bits = {name: (rng.randint(2, 8), rng.randint(2, 8)) for name in names}
        steps["set_policy"].append(timed(lambda: backend.set_policy(bits)))
        steps["calibrate"].append(timed(backend.calibrate))
        steps["evaluate"].append(timed(lambda: backend.evaluate(eval_fn)))
        steps["float evaluate"].append(timed(lambda: eval_fn(model)))

    print(f"backend {backend_name}: demo network ({len(names)} layers), {args.threads} thread(s), "
          f"{args.episodes} episodes")
    print(f"  {'prepare (once)':16s} {prepare_s * 1e3:9.1f} ms")
    for step, times in steps.items():
        print(f"  {step:16s} {statistics.median(times) * 1e3:9.1f} ms  (median)")
    episode = sum(statistics.median(steps[s]) for s in ("set_policy", "calibrate", "evaluate"))
    print(f"  {'episode total':16s} {episode * 1e3:9.1f} ms = "
          f"{episode / statistics.median(steps['float evaluate']):.1f} x the float evaluation")
    return {step: statistics.median(times) for step, times in steps.items()}


if __name__ == "__main__":
    main()
