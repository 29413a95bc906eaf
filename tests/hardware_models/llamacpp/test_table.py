"""The attribution of whole-file timings to (shape, type): which files are timed, and the least-squares fit.

Runs without llama.cpp: the timings here are constructed to be exactly additive, so
the fit must give back the per-tensor figures they were built from.
"""

from __future__ import annotations

import pytest

from haq_plugin.hardware_models.llamacpp.table import LookupTable, columns, fit, plan
from haq_plugin.hardware_models.llamacpp.timing import Timing
from haq_plugin.hardware_models.llamacpp.variants import REFERENCE, TYPES, Tensor, shape_label

TENSORS = [Tensor(f"blk.{b}.{role}.weight", f"model.layers.{b}.{role}", shape)
           for b in range(2) for role, shape in (("attn_q", (64, 64)), ("attn_k", (32, 64)), ("ffn_down", (64, 128)))]
TRUE_BASE = {"decode": 1e-3, "prompt": 2e-4}
# extra seconds per tensor against Q8_0; Q5_1 slower than Q4_1 on the small shape, as a CPU may be
TRUE_DELTA = {"64x64": {"Q4_1": -4e-5, "Q5_1": -1e-5}, "32x64": {"Q4_1": 2e-6, "Q5_1": 5e-6},
              "64x128": {"Q4_1": -9e-5, "Q5_1": -6e-5}}


def additive(types: dict[str, str]) -> Timing:
    def total(phase: str, scale: float) -> float:
        return TRUE_BASE[phase] + sum(scale * TRUE_DELTA[shape_label(t.shape)][types[t.name]]
                                      for t in TENSORS if types[t.name] != REFERENCE)
    return Timing(decode_s=total("decode", 1.0), prompt_s=total("prompt", 0.2))


def test_the_plan_times_the_reference_every_uniform_file_and_one_file_per_shape_and_type():
    configs = plan(TENSORS)
    names = [c.name for c in configs]
    assert names[0] == f"all {REFERENCE}" and set(configs[0].types.values()) == {REFERENCE}
    assert {f"all {t}" for t in TYPES} <= set(names)
    assert len(configs) == len(TYPES) + 3 * (len(TYPES) - 1)  # 3 shapes
    assert len({tuple(sorted(c.types.items())) for c in configs}) == len(configs)
    assert len(plan(TENSORS[:1])) == len(TYPES)  # one shape: its files are the uniform ones


def test_the_fit_gives_back_additive_per_tensor_figures_and_predicts_a_mixed_file():
    configs = plan(TENSORS)
    base, delta = fit(TENSORS, configs, [additive(c.types) for c in configs])
    assert base["decode"] == pytest.approx(TRUE_BASE["decode"], rel=1e-9)
    for label, qtype in columns(TENSORS):
        assert delta["decode"][label][qtype] == pytest.approx(TRUE_DELTA[label][qtype], rel=1e-6, abs=1e-12)
        assert delta["prompt"][label][qtype] == pytest.approx(0.2 * TRUE_DELTA[label][qtype], rel=1e-6, abs=1e-12)
    table = LookupTable({"64x64": 2, "32x64": 2, "64x128": 2}, base, delta, [], {})
    mixed = {t.name: TYPES[i % len(TYPES)] for i, t in enumerate(TENSORS)}
    assert table.predict("decode", TENSORS, mixed) == pytest.approx(additive(mixed).decode_s, rel=1e-9)
    reference = {t.name: REFERENCE for t in TENSORS}
    assert table.predict("prompt", TENSORS, reference) == pytest.approx(TRUE_BASE["prompt"], rel=1e-9)
