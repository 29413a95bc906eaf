"""The lookup table: llama.cpp's seconds per token, attributed to (tensor shape, GGUF type), measured once.

Why differences of whole-model timings, not a split by bytes
------------------------------------------------------------
llama.cpp can only be timed a whole model at a time, so per-tensor figures have
to be attributed.  Splitting a uniform model's time by bytes assumes that every
tensor streams at the same rate in every type; on a CPU it does not: small
matrices (k and v) are bound by per-operation overhead rather than bandwidth,
and Q8_0's dot product needs less arithmetic per weight than Q4_1's or Q5_1's
unpacking, so a byte is cheaper in Q8_0.  Instead each type's cost is measured
for each tensor shape: the reference file holds every searched tensor in Q8_0
(what a search's 8-bit baseline exports), and one file per (shape, type) moves
every tensor of that shape to that type; two more files are uniform in Q4_1 and
Q5_1.  The difference to the reference, divided by the number of tensors of the
shape, is that type's extra seconds per tensor.  All files are fitted together
by least squares (a file's time = the reference's + the sum of its tensors'
differences), so the uniform files check the additivity the search relies on.

What is left, the reference time (attention over the cache, norms, the embedding
lookup, the per-token call), does not depend on the policy.  It is spread over
the searched tensors in proportion to their Q8_0 bytes, so that a policy's sum of
layer costs is the predicted time of its whole file, while the differences
between policies are the measured ones.

Where a tensor's time is below the timing noise (a tiny model: microseconds per
tensor, against tens of microseconds of jitter on a shared machine), a fitted
difference can exceed the tensor's share and make its cost negative; such an
entry is floored at :data:`FLOOR` of its share (no layer is free) and marked
(``floored`` in the layer's details).  On SmolLM2 no entry needs it
(``benchmarks/llamacpp_table.py`` prints the table).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from haq_plugin.api.errors import HaqError
from haq_plugin.hardware_models.llamacpp.timing import Protocol, time_files
from haq_plugin.hardware_models.llamacpp.variants import (
    REFERENCE, TYPES, Calibration, Shape, Tensor, shape_label, type_bytes,
)

PHASES = ("decode", "prompt")
FLOOR = 0.05
"""Least cost of a tensor, as a fraction of its share of the reference time (see the module docstring)."""


@dataclass(frozen=True)
class Config:
    """One calibration file: a name and the type of every searched tensor."""

    name: str
    types: dict[str, str]


def plan(tensors: Sequence[Tensor]) -> list[Config]:
    """The reference, the uniform files and one file per (shape, type), duplicates dropped."""
    configs = [Config(f"all {qtype}", {t.name: qtype for t in tensors}) for qtype in (REFERENCE, *TYPES)]
    for label in dict.fromkeys(shape_label(t.shape) for t in tensors):
        for qtype in TYPES:
            if qtype != REFERENCE:
                configs.append(Config(f"{label} {qtype}", {t.name: qtype if shape_label(t.shape) == label
                                                           else REFERENCE for t in tensors}))
    unique: dict[tuple, Config] = {}
    for config in configs:
        unique.setdefault(tuple(sorted(config.types.items())), config)
    return list(unique.values())


def columns(tensors: Sequence[Tensor]) -> list[tuple[str, str]]:
    """The unknowns beside the base: (shape, type) for every shape and non-reference type."""
    labels = dict.fromkeys(shape_label(t.shape) for t in tensors)
    return [(label, qtype) for label in labels for qtype in TYPES if qtype != REFERENCE]


def design(tensors: Sequence[Tensor], types: Sequence[Mapping[str, str]]) -> np.ndarray:
    """Rows ``[1, count of tensors of shape s in type q, ...]``, one per file."""
    cols = columns(tensors)
    rows = []
    for assignment in types:
        counts = Counter((shape_label(t.shape), assignment[t.name]) for t in tensors)
        rows.append([1.0] + [float(counts[c]) for c in cols])
    return np.array(rows)


@dataclass
class LookupTable:
    """Fitted seconds per token: ``base[phase]`` of the reference file, ``delta[phase][shape][type]`` per tensor."""

    counts: dict[str, int]
    base: dict[str, float]
    delta: dict[str, dict[str, dict[str, float]]]
    measured: list[dict[str, Any]]
    key: dict[str, Any]
    seconds: float = 0.0

    def share(self, phase: str, label: str) -> float:
        """The reference time spread over the tensors by Q8_0 bytes: one tensor's part."""
        total = sum(n * type_bytes(parse_label(s), REFERENCE) for s, n in self.counts.items())
        return self.base[phase] * type_bytes(parse_label(label), REFERENCE) / total

    def cost(self, phase: str, shape: Shape, qtype: str) -> float:
        """Seconds per token of one tensor of ``shape`` in ``qtype``: its share plus the type's difference."""
        label = shape_label(shape)
        if label not in self.counts:
            raise HaqError(f"hardware model 'llamacpp-cpu': no tensor of shape {label} (out x in) in the calibration "
                           f"model (it has {', '.join(self.counts)}); give --hw-option model= the GGUF you search.")
        share = self.share(phase, label)
        extra = 0.0 if qtype == REFERENCE else self.delta[phase][label][qtype]
        return max(share + extra, FLOOR * share)

    def floored(self, phase: str, label: str, qtype: str) -> bool:
        """Whether the noise exceeded this entry's share, so that :meth:`cost` gives its floor."""
        extra = 0.0 if qtype == REFERENCE else self.delta[phase][label][qtype]
        return extra < (FLOOR - 1.0) * self.share(phase, label)

    def predict(self, phase: str, tensors: Sequence[Tensor], types: Mapping[str, str]) -> float:
        """Predicted seconds per token of a whole file with ``types[tensor name]``."""
        return sum(self.cost(phase, t.shape, types[t.name]) for t in tensors)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_label(label: str) -> Shape:
    out, _, fan_in = label.partition("x")
    return int(out), int(fan_in)


def fit(tensors: Sequence[Tensor], configs: Sequence[Config], timings: Sequence[Any]) -> tuple[dict, dict]:
    """``(base, delta)`` per phase: the reference file's time as measured, the differences by least squares.

    The base is not a free parameter of the fit: on a busy machine a few noisy
    files could pull a fitted intercept far from the reference (even below zero on
    a tiny model), while the reference is measured as directly as any file.
    """
    reference = next(i for i, c in enumerate(configs) if set(c.types.values()) == {REFERENCE})
    matrix = design(tensors, [c.types for c in configs])[:, 1:]
    base, delta = {}, {}
    for phase in PHASES:
        observed = np.array([getattr(t, f"{phase}_s") for t in timings])
        base[phase] = float(observed[reference])
        solution = np.linalg.lstsq(matrix, observed - base[phase], rcond=None)[0]
        delta[phase] = {}
        for (label, qtype), value in zip(columns(tensors), solution):
            delta[phase].setdefault(label, {})[qtype] = float(value)
    return base, delta


def measure(source: Path, protocol: Protocol, key: dict[str, Any], progress: bool = True) -> LookupTable:
    """Write the calibration files of ``source``, time them with llama.cpp and fit the table."""
    start = time.perf_counter()
    calibration = Calibration(source)
    configs = plan(calibration.tensors)
    if progress:
        print(f"haq-plugin: llamacpp-cpu: timing {len(configs)} calibration files of {source.name} x "
              f"{protocol.repeats} rounds on {protocol.threads} threads (once; then cached) ...",
              file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="haq-llamacpp-") as directory:
        paths = [calibration.write(Path(directory) / f"calibration-{i}.gguf", c.types) for i, c in enumerate(configs)]
        timings = time_files(paths, protocol)
    base, delta = fit(calibration.tensors, configs, timings)
    counts = dict(Counter(shape_label(t.shape) for t in calibration.tensors))
    measured = [{"file": c.name, "decode_s": t.decode_s, "prompt_s": t.prompt_s} for c, t in zip(configs, timings)]
    return LookupTable(counts, base, delta, measured, key, time.perf_counter() - start)
