"""Scale: parallel episodes on Ray workers, and how a search's cost grows with the network.

Three figures, each printed as a markdown table:

* ``workers``: wall time of a demo search (torch.ao, bitfusion, latency 0.5)
  with 1 and with N workers, at ``--finetune-steps`` per episode so that the
  evaluation dominates, as the median of ``--repeats`` runs;
* ``quality``: the best validation and held-out test accuracy of the same
  searches over seeds, 1 worker beside N (a round of N episodes learns from N
  rewards at once, so the searches differ; they should be equally good);
* ``zoo``: for MobileNet-V1/V2 and ResNet-18/50 at 224x224 (random weights and
  synthetic inputs: timing only), the cost-table build time on bitfusion, the
  seconds per episode of the torch.ao backend (set bits, calibrate on one
  batch, evaluate one batch) and the process's peak memory, each network in a
  fresh process so that peaks do not mix.

    python -m benchmarks.scale                      # all three (about 20 minutes on 2 cores)
    python -m benchmarks.scale --only workers --episodes 100 --finetune-steps 20
    python -m benchmarks.scale --only zoo --networks mobilenet_v2 resnet18
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from haq_plugin.tasks.demo import load_demo
from haq_plugin.storage.formatting import markdown_table
from haq_plugin.engine.search import search

from benchmarks.heldout import held_out_accuracy

ZOO = ("mobilenet_v1", "mobilenet_v2", "resnet18", "resnet50")


# -- workers and quality ------------------------------------------------------------------
def demo_search(workers: int, seed: int, episodes: int, finetune_steps: int) -> dict[str, Any]:
    """One demo search; its wall time and the best policy's validation and test accuracy."""
    demo = load_demo()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = search(demo.model, demo.example_input, hardware="bitfusion", backend="torch.ao",
                        constraint="latency", budget=0.5, eval_fn=demo.eval_fn,
                        calibration_data=demo.calibration_data, train_data=demo.train_data,
                        finetune_steps=finetune_steps, episodes=episodes, seed=seed, workers=workers,
                        output_dir=out, progress=False)
    wall = time.perf_counter() - started
    test = held_out_accuracy(demo, "torch.ao", result)
    return {"workers": workers, "seed": seed, "wall_s": wall, "val": result.accuracy, "test": test}


def workers_table(runs: list[dict[str, Any]], episodes: int, finetune_steps: int) -> str:
    by_workers: dict[int, list[dict[str, Any]]] = {}
    for run in runs:
        by_workers.setdefault(run["workers"], []).append(run)
    one = statistics.median(r["wall_s"] for r in by_workers[1])
    rows = []
    for workers, group in sorted(by_workers.items()):
        wall = statistics.median(r["wall_s"] for r in group)
        rows.append([str(workers), str(len(group)), f"{wall:.1f} s", f"{wall / episodes:.3f} s",
                     f"{wall / one:.2f}x", f"{statistics.median(r['val'] for r in group):.2f}",
                     f"{statistics.median(r['test'] for r in group):.2f}",
                     " / ".join(f"{r['test']:.2f}" for r in group)])
    title = (f"Demo search, torch.ao, bitfusion latency 0.5, {episodes} episodes, --finetune-steps "
             f"{finetune_steps}, medians over seeds {sorted({r['seed'] for r in runs})}; 1 worker runs in this "
             f"process on {torch.get_num_threads()} thread(s), each of N workers on 1:")
    return title + "\n\n" + markdown_table(
        ["workers", "runs", "wall", "per episode", "vs 1 worker", "val (median)", "test (median)", "test per seed"],
        rows)


# -- the zoo ----------------------------------------------------------------------------
def zoo_figures(name: str, episodes: int) -> dict[str, Any]:
    """Cost-table time, seconds per episode and peak memory for one zoo network (run in a fresh process)."""
    from haq_plugin.tasks import zoo
    from haq_plugin.api.backend import prepare_for_search
    from haq_plugin.engine.costs import build_cost_table
    from haq_plugin.api.layers import extract_layers
    from haq_plugin.api.plugins import load_backend, load_hardware

    torch.manual_seed(0)
    model = getattr(zoo, name)().eval()
    batch = torch.randn(2, 3, 224, 224)
    layers = extract_layers(model, batch[:1])
    started = time.perf_counter()
    build_cost_table(load_hardware("bitfusion"), layers, cache=False)
    table_s = time.perf_counter() - started
    backend = load_backend("torch.ao")
    started = time.perf_counter()
    prepare_for_search(backend, model, batch[:1], [batch], layers)
    prepare_s = time.perf_counter() - started
    names = [layer.name for layer in layers]
    seconds = []
    for episode in range(episodes):
        bits = 4 if episode % 2 else 6
        started = time.perf_counter()
        backend.set_policy({n: (bits, bits) for n in names})
        backend.calibrate()
        backend.evaluate(lambda m: float(m(batch).argmax(1).float().mean() * 0))  # timing only: synthetic
        seconds.append(time.perf_counter() - started)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"network": name, "layers": len(layers), "macs_g": sum(l.macs for l in layers) / 1e9,
            "table_s": table_s, "prepare_s": prepare_s, "episode_s": statistics.median(seconds), "peak_mib": peak_mib}


def zoo_table(rows: list[dict[str, Any]], threads: int) -> str:
    title = (f"Zoo networks at 224x224 (random weights, synthetic batch of 2: timing only), bitfusion cost table, "
             f"torch.ao episodes (calibrate on 1 batch, evaluate 1 batch), {threads} thread(s), one process each:")
    return title + "\n\n" + markdown_table(
        ["network", "layers", "GMACs", "cost table", "prepare", "s / episode", "peak memory"],
        [[r["network"], str(r["layers"]), f"{r['macs_g']:.2f}", f"{r['table_s']:.2f} s", f"{r['prepare_s']:.1f} s",
          f"{r['episode_s']:.2f}", f"{r['peak_mib']:.0f} MiB"] for r in rows])


def run_zoo_in_subprocess(name: str, episodes: int) -> dict[str, Any]:
    code = (f"import json, benchmarks.scale as s; print('ZOO ' + json.dumps(s.zoo_figures({name!r}, {episodes})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parent.parent)
    line = next(line for line in proc.stdout.splitlines() if line.startswith("ZOO "))
    return json.loads(line[4:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("workers", "zoo"), default=None,
                        help="workers: the workers and quality tables; zoo: the zoo table")
    parser.add_argument("--workers", type=int, default=2, help="the N compared with 1 worker")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--finetune-steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of this process (the 1-worker search); each Ray worker uses 1")
    parser.add_argument("--networks", nargs="+", default=list(ZOO), choices=ZOO)
    parser.add_argument("--zoo-episodes", type=int, default=3)
    parser.add_argument("-o", "--output", type=Path, default=None, help="also write the tables here")
    args = parser.parse_args(argv)
    tables = []
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only in (None, "workers"):
        runs = [demo_search(w, seed, args.episodes, args.finetune_steps)
                for seed in args.seeds for w in (1, args.workers)]
        tables.append(workers_table(runs, args.episodes, args.finetune_steps))
        print(tables[-1] + "\n", flush=True)
    if args.only in (None, "zoo"):
        rows = [run_zoo_in_subprocess(name, args.zoo_episodes) for name in args.networks]
        tables.append(zoo_table(rows, torch.get_num_threads()))
        print(tables[-1] + "\n", flush=True)
    if args.output:
        args.output.write_text("\n\n".join(tables) + "\n")


if __name__ == "__main__":
    main()
