"""How well ``llamacpp-cpu``'s lookup table predicts llama.cpp's whole-file latency of mixed policies.

Writes the table's calibration files and five mixed-type GGUFs of SmolLM2-135M-Instruct
with the GGUF export's writer (the functions ``haq-plugin export --format gguf``
calls), times all of them in one session with llama.cpp (the table's protocol:
fixed threads, files loaded together, decode steps interleaved and paired with
the reference file, medians; ``hardware_models/llamacpp/timing.py``), fits the
table on the calibration files only (what ``llamacpp-cpu`` caches), and prints
its prediction for each mixed file beside the measurement.  The mixed files are
not among those the table is fitted on.

Timing them in the same session as the calibration files keeps the machine's
load out of the comparison: on 2 shared cores single steps ranged from 15 ms to
1.7 s during these runs, and the load level drifts by 2x within minutes, which
no table measured at another moment can know.

    python -m benchmarks.llamacpp_table --threads 2
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from haq_plugin import load_hardware
from haq_plugin.hardware_models.llamacpp.table import LookupTable, fit, plan
from haq_plugin.hardware_models.llamacpp.timing import time_files
from haq_plugin.hardware_models.llamacpp.variants import REFERENCE, TYPES, Calibration, shape_label

ROLES_UP = ("attn_v", "ffn_down")  # llama.cpp's Q*_K_M rule: one step wider for these


def policies(calibration: Calibration, seed: int) -> dict[str, dict[str, str]]:
    """Mixed assignments ``{name: {tensor: type}}`` of the kinds a search returns."""
    tensors = calibration.tensors
    rng = random.Random(seed)
    block = lambda t: int(t.name.split(".")[1]) if t.name.startswith("blk.") else -1  # noqa: E731
    return {
        "K_M rule: v, down Q5_1, rest Q4_1": {t.name: "Q5_1" if any(r in t.name for r in ROLES_UP) else "Q4_1"
                                              for t in tensors},
        "attention Q8_0, MLP Q4_1": {t.name: "Q8_0" if ".attn_" in t.name else "Q4_1" for t in tensors},
        "even blocks Q8_0, odd Q4_1, head Q8_0": {t.name: "Q8_0" if block(t) % 2 == 0 else "Q4_1"
                                                  for t in tensors},
        "random types": {t.name: rng.choice(TYPES) for t in tensors},
        "random, mostly Q4_1": {t.name: rng.choices(TYPES, weights=(6, 2, 1))[0] for t in tensors},
    }


def print_table(table: LookupTable, calibration: Calibration) -> None:
    print(f"reference file (all {REFERENCE}): decode {table.base['decode'] * 1e3:.2f} ms/token, "
          f"prompt {table.base['prompt'] * 1e3:.3f} ms/token")
    print(f"{'shape (out x in)':>18} {'tensors':>7} | decode us per tensor: " + "  ".join(f"{q:>7}" for q in TYPES)
          + " | Q4_1 < Q5_1 < Q8_0")
    for label, shape in {shape_label(t.shape): t.shape for t in calibration.tensors}.items():
        costs = [table.cost("decode", shape, q) * 1e6 for q in TYPES]
        floored = any(table.floored("decode", label, q) for q in TYPES)
        print(f"{label:>18} {table.counts[label]:>7} | {'':21}" + "  ".join(f"{c:7.1f}" for c in costs)
              + f" | {'yes' if costs[0] < costs[1] < costs[2] else 'no'}{' (floored)' if floored else ''}")


def report(table: LookupTable, calibration: Calibration, mixes: dict, timings: list) -> list[float]:
    """Measured and predicted per mixed file; returns the absolute decode errors."""
    errors = []
    print(f"\n{'file':>40} | {'phase':>6} {'measured':>9} {'predicted':>9} {'error':>7}")
    for phase in ("decode", "prompt"):
        for (name, types), timing in zip(mixes.items(), timings):
            measured, predicted = getattr(timing, f"{phase}_s"), table.predict(phase, calibration.tensors, types)
            error = (predicted - measured) / measured
            if phase == "decode":
                errors.append(abs(error))
            print(f"{name:>40} | {phase:>6} {measured * 1e3:6.2f} ms {predicted * 1e3:6.2f} ms {error:+7.1%}")
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llm:smollm2-135m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    hardware = load_hardware("llamacpp-cpu", model=args.model, threads=args.threads, repeats=args.repeats,
                             decode_tokens=args.decode_tokens, prompt_tokens=args.prompt_tokens)
    start = time.perf_counter()
    calibration = Calibration(hardware.source())
    configs, mixes = plan(calibration.tensors), policies(calibration, args.seed)
    print(f"{hardware.source().name}: {len(calibration.tensors)} searched tensors; {len(configs)} calibration "
          f"files, {len(mixes)} mixed; {hardware.protocol}", flush=True)
    with tempfile.TemporaryDirectory(prefix="haq-llamacpp-check-") as directory:
        types = [c.types for c in configs] + list(mixes.values())
        paths = [calibration.write(Path(directory) / f"file-{i}.gguf", t) for i, t in enumerate(types)]
        timings = time_files(paths, hardware.protocol)
    base, delta = fit(calibration.tensors, configs, timings[:len(configs)])
    counts = dict(Counter(shape_label(t.shape) for t in calibration.tensors))
    table = LookupTable(counts, base, delta, [], {})
    print_table(table, calibration)
    for config, timing in zip(configs, timings):
        print(f"  calibration file {config.name:>16}: decode {timing.decode_s * 1e3:6.2f} ms, "
              f"prompt {timing.prompt_s * 1e3:6.3f} ms per token")
    errors = report(table, calibration, mixes, timings[len(configs):])
    print(f"\ndecode error of the table on {len(errors)} mixed files: median {statistics.median(errors):.1%}, "
          f"max {max(errors):.1%} (target: within 10%); {time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
