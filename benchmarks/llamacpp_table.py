"""How well ``llamacpp-cpu``'s lookup table predicts llama.cpp's whole-file latency of mixed policies.

Measures (or reads from the cache) the table for SmolLM2-135M-Instruct, prints it
per tensor shape and GGUF type, then writes mixed-type GGUFs with the GGUF
export's writer (the functions ``haq-plugin export --format gguf`` calls), times
each whole file with llama.cpp under the table's protocol (same threads,
context, prompt and decode tokens, interleaved rounds, medians) and prints the
table's prediction beside the measurement.  The mixed files are not among the
calibration files the table was fitted on.

On a machine shared with other work the timings are noisy: the figures are
paired medians (see ``hardware_models/llamacpp/timing.py``).  The reference file
is timed again with the mixed files: "error" compares the prediction with the
measurement as they stand, "vs ref now" compares their ratios to the reference,
which cancels a change of the machine's load between the table's measurement and
this one (the table cannot know the load of another moment).

    python -m benchmarks.llamacpp_table --threads 2
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from haq_plugin import load_hardware
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


def print_table(hardware, calibration: Calibration) -> None:
    table = hardware.table()
    print(f"table: measured in {table.seconds:.0f} s; reference file (all {REFERENCE}): "
          f"decode {table.base['decode'] * 1e3:.2f} ms/token, prompt {table.base['prompt'] * 1e3:.3f} ms/token")
    print(f"{'shape (out x in)':>18} {'tensors':>7} | decode us per tensor: " + "  ".join(f"{q:>6}" for q in TYPES)
          + " | falls with bits")
    shapes = {shape_label(t.shape): t.shape for t in calibration.tensors}
    for label, shape in shapes.items():
        costs = [table.cost("decode", shape, q) * 1e6 for q in TYPES]
        falls = costs[0] <= costs[1] <= costs[2]
        print(f"{label:>18} {table.counts[label]:>7} | {'':21}" + "  ".join(f"{c:6.1f}" for c in costs)
              + f" | {'yes' if falls else 'no'}")
    for row in table.measured:
        fitted = table.predict("decode", calibration.tensors, _types_of(row["file"], calibration))
        print(f"  calibration file {row['file']:>16}: measured {row['decode_s'] * 1e3:.2f} ms, "
              f"fit {fitted * 1e3:.2f} ms")


def _types_of(name: str, calibration: Calibration) -> dict[str, str]:
    from haq_plugin.hardware_models.llamacpp.table import plan

    return next(c.types for c in plan(calibration.tensors) if c.name == name)


def validate(hardware, calibration: Calibration, seed: int) -> list[float]:
    """Time the reference and the mixed files together; print measured, predicted, and both errors."""
    table, mixes = hardware.table(), policies(calibration, seed)
    reference = {t.name: REFERENCE for t in calibration.tensors}
    with tempfile.TemporaryDirectory(prefix="haq-llamacpp-check-") as directory:
        paths = [calibration.write(Path(directory) / f"mix-{i}.gguf", types)
                 for i, types in enumerate([reference, *mixes.values()])]
        timings = time_files(paths, hardware.protocol)
    errors = []
    print(f"\n{'file':>40} | {'phase':>6} {'measured':>9} {'predicted':>9} {'error':>7} {'vs ref now':>10}")
    for phase in ("decode", "prompt"):
        now, then = getattr(timings[0], f"{phase}_s"), table.base[phase]
        print(f"{'reference (all Q8_0), timed again':>40} | {phase:>6} {now * 1e3:6.2f} ms {then * 1e3:6.2f} ms "
              f"{(then - now) / now:+7.1%}")
        for (name, types), timing in zip(mixes.items(), timings[1:]):
            measured, predicted = getattr(timing, f"{phase}_s"), table.predict(phase, calibration.tensors, types)
            absolute = (predicted - measured) / measured
            relative = (predicted / then - measured / now) / (measured / now)  # the load of the moment cancelled
            if phase == "decode":
                errors.append(abs(relative))
            print(f"{name:>40} | {phase:>6} {measured * 1e3:6.2f} ms {predicted * 1e3:6.2f} ms {absolute:+7.1%} "
                  f"{relative:+10.1%}")
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llm:smollm2-135m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    hardware = load_hardware("llamacpp-cpu", model=args.model, threads=args.threads, repeats=args.repeats)
    start = time.perf_counter()
    calibration = Calibration(hardware.source())
    print(f"{hardware.source().name}: {len(calibration.tensors)} searched tensors; protocol {hardware.protocol}")
    print_table(hardware, calibration)
    errors = validate(hardware, calibration, args.seed)
    print(f"\ndecode error of the table on {len(errors)} mixed files, relative to the reference timed with them: "
          f"median {statistics.median(errors):.1%}, max {max(errors):.1%} (target: within 10%); "
          f"{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
