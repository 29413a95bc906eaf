"""What a sweep saves by sharing the prepared backend and the float evaluation between budgets.

Runs the same budgets on the demo twice, with one-episode random searches so
that the set-up dominates: once as a sweep (one prepare, one float evaluation,
the cost table from the disk cache) and once as separate searches, each with a
fresh backend instance.  A warm-up search comes first.  Prints the median set-up time of a search (everything
before its first episode, ``SearchResult.timings["setup"]``) for the budgets
after the first, and the wall time of each variant.

    python benchmarks/sweep_setup.py [--backend torch.ao] [--budgets 0.45,0.5,0.6,0.7,0.8] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from haq_plugin import load_backend, search, sweep
from haq_plugin.tasks.specs import load_model, load_task_data
from haq_plugin.analyses.sweep import parse_budgets

OPTIONS = {"strategy": "random", "episodes": 1, "seed": 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="torch.ao")
    parser.add_argument("--hw", default="bitfusion")
    parser.add_argument("--budgets", default="0.45,0.5,0.6,0.7,0.8")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budgets = parse_budgets(args.budgets)
    source, data = load_model("demo"), load_task_data(None, "demo")
    common = dict(hardware=args.hw, eval_fn=data.eval_fn, calibration_data=data.calibration_data, progress=False,
                  **OPTIONS)
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up: the first search of a process pays one-off costs (imports, first traces, figure fonts)
        search(source.model, source.example_input, budget=budgets[-1], backend=load_backend(args.backend),
               output_dir=Path(tmp) / "warm-up", **common)
        start = time.perf_counter()
        swept = sweep(source.model, source.example_input, budgets=budgets, backend=load_backend(args.backend),
                      output_dir=Path(tmp) / "sweep", **common)
        sweep_wall = time.perf_counter() - start
        start = time.perf_counter()
        separate = [search(source.model, source.example_input, budget=b, backend=load_backend(args.backend),
                           output_dir=Path(tmp) / f"alone-{b:g}", **common) for b in budgets]
        separate_wall = time.perf_counter() - start
    shared = [swept.searches[b].timings["setup"] for b in budgets[1:]]
    alone = [r.timings["setup"] for r in separate[1:]]
    print(f"sweep of {len(budgets)} budgets on the demo, backend {args.backend}, hardware {args.hw}, "
          f"{args.threads} thread(s), {OPTIONS['episodes']} random episode per budget")
    print(f"  search set-up (median of budgets 2..{len(budgets)}): shared {statistics.median(shared) * 1e3:.1f} ms, "
          f"separate {statistics.median(alone) * 1e3:.1f} ms")
    print(f"  wall time incl. outputs: sweep {sweep_wall:.2f} s (with pareto files and 8-bit reference), "
          f"separate searches {separate_wall:.2f} s")


if __name__ == "__main__":
    main()
