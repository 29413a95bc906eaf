"""Run every benchmark and write ``benchmarks/RESULTS.md`` and ``benchmarks/results.json``.

    python -m benchmarks            # full run (about 20-30 minutes on 2 CPU cores)
    python -m benchmarks --quick    # under 5 minutes: fewer networks, one seed, short searches

Sections:

1. Hardware: zoo networks at uniform bits on every hardware model, cost-table
   build times, BISMO-cloud against HAQ's table (:mod:`benchmarks.hardware`);
   BitFusion fast versus exhaustive tiling search (:mod:`benchmarks.bitfusion_speed`).
2. Search quality on the demo: uniform, random and DDPG at equal budgets
   (:mod:`benchmarks.search_quality`), with a Pareto plot (``benchmarks/pareto.png``).
3. Search speed: backend episode costs against a float forward pass
   (:mod:`benchmarks.backend_speed`) and the search loop's overhead, episodes per
   minute and peak memory (:mod:`benchmarks.search_overhead`).

Sections 4 and later of an existing RESULTS.md are kept unchanged: each comes
from its own script and names the command that prints it (backend agreement,
quantization quality, the paper's figures, sweeps, scale-out in
:mod:`benchmarks.scale`, the peer workload in :mod:`benchmarks.peer`).

Each section runs in its own process so that peak-memory figures are its own.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_section(module: str, *args: str, json_out: bool = False) -> tuple[str, dict | None]:
    """Run ``python -m benchmarks.MODULE ARGS`` and return its stdout (and JSON record, if asked)."""
    with tempfile.TemporaryDirectory() as tmp:
        extra = ["--json", str(Path(tmp) / "out.json")] if json_out else []
        print(f"== benchmarks.{module} {' '.join(args)}", flush=True)
        proc = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args, *extra], cwd=HERE.parent,
                              capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            raise SystemExit(f"benchmarks.{module} failed with exit code {proc.returncode}")
        data = json.loads((Path(tmp) / "out.json").read_text()) if json_out else None
    print(proc.stdout, flush=True)
    return proc.stdout, data


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
            f"{platform.system()} {platform.release()}")


#: Sections 4 and later come from their own scripts (each names its command) and are kept as they are.
FIRST_KEPT_SECTION = "## 4."


def kept_sections(path: Path) -> str:
    """The part of an existing RESULTS.md from section 4 on, which this runner does not regenerate."""
    if not path.is_file():
        return ""
    text = path.read_text()
    start = text.find("\n" + FIRST_KEPT_SECTION)
    return "" if start < 0 else "\n" + text[start + 1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the under-5-minutes variant")
    parser.add_argument("--out", type=Path, default=HERE, help="directory for RESULTS.md, results.json, pareto.png")
    args = parser.parse_args()
    quick = ["--quick"] if args.quick else []
    started = datetime.datetime.now(datetime.timezone.utc)

    hardware_md, hardware = run_section("hardware", *quick, json_out=True)
    bitfusion_md, _ = run_section("bitfusion_speed", "--repeats", "1" if args.quick else "3")
    quality_md, quality = run_section("search_quality", *quick, json_out=True)
    backend_md = {name: run_section("backend_speed", "--backend", name, "--episodes", "5" if args.quick else "20")[0]
                  for name in ("torch.ao", "brevitas")}
    overhead_md, overhead = run_section("search_overhead", *quick, "--hw", "bitfusion", json_out=True)

    from benchmarks.search_quality import Run, plot

    runs = [Run(**r) for r in quality["runs"]]
    pareto = plot(runs, args.out / "pareto.png")
    elapsed = datetime.datetime.now(datetime.timezone.utc) - started
    report = [
        "# haq-plugin benchmark results\n\n",
        f"Run {started:%Y-%m-%d %H:%M} UTC ({'quick' if args.quick else 'full'} mode, {elapsed.seconds // 60} min) "
        f"on {machine()}. Regenerate with `python -m benchmarks{' --quick' if args.quick else ''}`. Times are "
        "medians; the machine is shared and noisy.\n\n",
        "## 1. Hardware models\n\n", hardware_md, "\n### BitFusion tiling search: exhaustive against fast\n\n```\n",
        bitfusion_md, "```\n\n",
        "## 2. Search quality on the demo\n\n", quality_md,
        "\n![accuracy against achieved cost](pareto.png)\n\n" if pareto else "\n",
        "## 3. Search speed\n\n### Backend episode cost against a float forward pass\n\n",
        *[f"```\n{text}```\n\n" for text in backend_md.values()],
        "### Search loop overhead\n\n", overhead_md,
    ]
    (args.out / "RESULTS.md").write_text("".join(report) + kept_sections(args.out / "RESULTS.md"))
    (args.out / "results.json").write_text(json.dumps(
        {"date": started.isoformat(), "machine": machine(), "quick": args.quick, "hardware": hardware,
         "search_quality": quality, "search_overhead": overhead}, indent=2, default=str))
    print(f"wrote {args.out / 'RESULTS.md'} and {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
