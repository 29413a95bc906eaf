"""A fast end-to-end search: the loop, checkpoint and resume, and every report, in seconds.

The hardware model and the backend are small but real: the hardware's cost is an
analytic formula (bit operations plus weight traffic) that the test recomputes,
and the backend really rounds weights and layer inputs to the policy's bits.  So
``-m "not slow"`` still runs the whole search path.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from haq_plugin import HaqError, HardwareModel, LayerCost, QuantBackend, search
from haq_plugin.engine.agent import DDPGConfig
from haq_plugin.tasks.demo import accuracy_fn, digits_splits
from haq_plugin.engine.eval_fn import EvaluationError
from haq_plugin.api.plugins import get_plugin_manager, reset_plugin_manager
from haq_plugin.api.policy import Policy
from haq_plugin.engine.results import SearchInterrupted
from tests.helpers import Interrupter

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = DDPGConfig(warmup_episodes=2, hidden=16, batch_size=8)
EPISODES = 5


class BitOpsHardware(HardwareModel):
    """Latency = 1 ps per bit operation + 1 ps per weight bit: cost falls with every bit."""

    name = "bitops-test"
    description = "analytic test hardware"

    def layer_cost(self, layer, weight_bits, act_bits):
        return LayerCost(latency_s=1e-12 * (layer.macs * weight_bits * act_bits + layer.params * weight_bits))


def fake_quantize(x: torch.Tensor, bits: int, bound: float, signed: bool) -> torch.Tensor:
    levels = 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1
    scale = max(bound, 1e-8) / levels
    return torch.clamp(torch.round(x / scale), -levels if signed else 0, levels) * scale


class RoundingBackend(QuantBackend):
    """Rounds each Linear layer's weights (symmetric) and inputs (calibrated range) to the policy's bits."""

    name = "rounding-test"
    export_filename = "rounding_policy.json"

    def prepare(self, model, example_input, calibration_data, layers=None):
        self._model = copy.deepcopy(model).eval()
        self.linears = {n: m for n, m in self._model.named_modules() if isinstance(m, nn.Linear)}
        self.float_weights = {n: m.weight.detach().clone() for n, m in self.linears.items()}
        self.calibration = list(calibration_data)
        self.bits = {n: (8, 8) for n in self.linears}
        self.ranges = {n: (0.0, 1.0) for n in self.linears}
        self.observing = False
        for name, module in self.linears.items():
            module.register_forward_pre_hook(lambda m, args, name=name: self._quantize_input(name, args[0]))

    def _quantize_input(self, name, x):
        if self.observing:  # calibration sees the float inputs
            return None
        low, high = self.ranges[name]
        signed = low < 0
        return (fake_quantize(x, self.bits[name][1], max(abs(low), abs(high)), signed),)

    def set_policy(self, bits):
        self.bits = dict(bits)
        with torch.no_grad():
            for name, module in self.linears.items():
                weight = self.float_weights[name]
                module.weight.copy_(fake_quantize(weight, self.bits[name][0], float(weight.abs().max()), True))

    def calibrate(self):
        seen = {}
        hooks = [m.register_forward_pre_hook(lambda m, args, n=n: seen.setdefault(n, []).append(args[0]))
                 for n, m in self.linears.items()]
        self.observing = True
        try:
            with torch.no_grad():
                for batch in self.calibration:
                    self._model(batch)
        finally:
            for hook in hooks:
                hook.remove()
            self.observing = False
        self.ranges = {n: (float(min(x.min() for x in xs)), float(max(x.max() for x in xs))) for n, xs in seen.items()}

    @property
    def model(self):
        return self._model

    def export(self, policy, path):
        path.write_text(json.dumps({name: list(bits) for name, bits in policy.bits.items()}))
        return path


@pytest.fixture(scope="module")
def task():
    splits = digits_splits()
    x, y = splits["train"]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(),
                          nn.Linear(24, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        idx = torch.randint(0, len(y), (64,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return {"model": model.eval(), "example_input": torch.zeros(1, 1, 8, 8), "eval_fn": accuracy_fn(*splits["val"]),
            "calibration_data": [x[:128]]}


def run(task, **overrides):
    options = dict(hardware=BitOpsHardware(), backend=RoundingBackend(), constraint="latency", budget=0.85,
                   eval_fn=task["eval_fn"], calibration_data=task["calibration_data"], episodes=EPISODES,
                   ddpg=QUICK, seed=0, progress=False, keep_last_layer_8bit=False)
    options.update(overrides)
    return search(task["model"], task["example_input"], **options)


def history_key(result):
    return [(r.bits, r.accuracy, r.reward, r.sigma) for r in result.history]


@pytest.fixture(scope="module")
def reference(task, tmp_path_factory):
    return run(task, output_dir=tmp_path_factory.mktemp("smoke"))


def test_loop_fits_the_budget_and_rewards_accuracy(reference):
    r = reference
    assert [rec.episode for rec in r.history] == list(range(EPISODES))
    macs = [layer.macs for layer in r.layers]
    params = [layer.params for layer in r.layers]
    eight = sum(1e-12 * (m * 64 + p * 8) for m, p in zip(macs, params))
    for rec in r.history:
        cost = sum(1e-12 * (m * w * a + p * w) for (w, a), m, p in zip(rec.bits, macs, params))
        assert rec.cost == pytest.approx(cost) and rec.cost_fraction == pytest.approx(cost / eight)
        assert rec.cost_fraction <= 0.85 + 1e-9 and rec.bits[0] == (8, 8)
        assert rec.reward == pytest.approx(0.1 * (rec.accuracy - r.float_accuracy))
    assert [rec.sigma for rec in r.history[:2]] == [None, None] and r.history[2].sigma == 0.5
    assert r.accuracy == max(rec.accuracy for rec in r.history) and r.float_accuracy > 80
    assert r.settings.episodes == EPISODES and r.hardware.name == "bitops-test" and r.backend.name == "rounding-test"


def test_reports_are_written_from_the_result(reference):
    out = reference.output_dir
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "episodes.csv", "policy.json", "policy.png",
                                                     "rounding_policy.json", "summary.md"]
    policy = Policy.load(out / "policy.json")
    assert policy.bits == reference.policy.bits
    assert policy.provenance["search"]["episodes_run"] == EPISODES
    assert policy.provenance["achieved"]["accuracy"] == reference.accuracy
    with open(out / "episodes.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["sigma"] for row in rows[:3]] == ["", "", "0.5"]
    assert float(rows[3]["accuracy"]) == pytest.approx(reference.history[3].accuracy, abs=1e-4)
    summary = (out / "summary.md").read_text()
    assert "`1`" in summary and f"{reference.accuracy:.2f}" in summary and "- episodes_run: 5" in summary
    assert json.loads((out / "rounding_policy.json").read_text())["1"] == [8, 8]
    assert (out / "policy.png").read_bytes()[:4] == b"\x89PNG"
    assert set(reference.files) == {"policy", "export", "episodes", "summary", "figure", "checkpoint"}


def test_interrupted_and_resumed_equals_uninterrupted(reference, task, tmp_path):
    get_plugin_manager().register(Interrupter(after=3), name="interrupter")
    try:
        with pytest.raises(SearchInterrupted) as info:
            run(task, output_dir=tmp_path)
    finally:
        reset_plugin_manager()
    assert len(info.value.result.history) == 3 and not (tmp_path / "search.lock").exists()
    (tmp_path / ".checkpoint.stale1.pt").write_bytes(b"")  # left by a write killed halfway
    resumed = run(task, output_dir=tmp_path, resume=True)
    assert history_key(resumed) == history_key(reference)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("answer, message", [
    (ValueError("no labels"), "eval_fn raised ValueError: no labels while evaluating the float model"),
    ("91.0", "eval_fn returned '91.0' (str)"), (None, "eval_fn returned None"),
    (math.nan, "eval_fn returned NaN"), (0.93 * 1000, "eval_fn returned 930, outside 0..100"),
])
def test_a_meaningless_eval_fn_is_refused_before_the_first_episode(task, tmp_path, answer, message):
    def eval_fn(model):
        if isinstance(answer, Exception):
            raise answer
        return answer
    with pytest.raises(HaqError, match="percent") as info:
        run(task, eval_fn=eval_fn, output_dir=tmp_path)
    assert message in str(info.value)
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "search.lock").exists()


def test_eval_fn_failing_later_keeps_the_finished_episodes(reference, task, tmp_path):
    calls = []

    def flaky(model):
        calls.append(1)
        if len(calls) == 5:  # float model, uniform baseline, episodes 0 and 1, then episode 2 fails
            raise RuntimeError("validation server went away")
        return task["eval_fn"](model)
    with pytest.raises(EvaluationError, match="episode 2") as info:
        run(task, eval_fn=flaky, output_dir=tmp_path)
    assert info.value.checkpoint == tmp_path / "checkpoint.pt" and "resume" in str(info.value)
    assert "2 finished episode(s)" in str(info.value)
    resumed = run(task, output_dir=tmp_path, resume=True)
    assert history_key(resumed) == history_key(reference)


def test_api_mistakes_are_haq_errors(task, tmp_path):
    with pytest.raises(HaqError, match="model must be a torch.nn.Module, got dict"):
        search({}, None, hardware=BitOpsHardware(), backend=RoundingBackend(), eval_fn=task["eval_fn"],
               calibration_data=[])
    with pytest.raises(HaqError, match=r"seed must be an integer from 0 to 4294967295"):
        run(task, seed=2**64)
    with pytest.raises(HaqError, match="finetune_steps must be an integer >= 0"):
        run(task, finetune_steps=-1)


def test_a_running_search_locks_its_output_directory(task, tmp_path):
    (tmp_path / "search.lock").write_text(f"{os.getppid()} host\n")
    with pytest.raises(HaqError, match=f"Another search is running in .*process {os.getppid()}"):
        run(task, output_dir=tmp_path, episodes=1)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "search.lock").write_text(f"{int(dead.stdout)} host\n")
    result = run(task, output_dir=tmp_path, episodes=1, strategy="random")
    assert len(result.history) == 1 and not (tmp_path / "search.lock").exists()


def test_greedy_strategy_on_a_classifier_fits_the_budget_and_beats_uniform(task, tmp_path):
    """The sensitivity-greedy baseline works for any model: one evaluated policy, within the budget."""
    result = run(task, strategy="greedy", budget=0.8, output_dir=tmp_path / "greedy")
    assert len(result.history) == 1 and result.history[0].strategy == "greedy"
    assert result.cost_fraction <= 0.8 * (1 + 1e-9)
    assert result.timings["greedy_measurements"] > 0
    bits = result.policy.as_list()
    assert len({pair for pair in bits}) > 1  # mixed precision: not one width everywhere
    assert all(w == a for w, a in bits[1:])  # weights and inputs of a unit move together under w+a
    uniform = result.uniform
    assert uniform is not None and result.accuracy >= uniform.accuracy
    rows = list(csv.DictReader((tmp_path / "greedy" / "episodes.csv").open()))
    assert [row["strategy"] for row in rows] == ["greedy"]


def test_threads_are_set_for_the_search_said_once_and_restored(task, capsys):
    seen = []

    def counting_eval(model):
        seen.append(torch.get_num_threads())
        return task["eval_fn"](model)

    before = torch.get_num_threads()  # the one_thread fixture: 1
    run(task, eval_fn=counting_eval, threads=2, progress=True, episodes=2, strategy="random")
    assert set(seen) == {2}
    assert torch.get_num_threads() == before
    assert "torch threads: 2 of" in capsys.readouterr().err


@pytest.mark.parametrize("threads", [0, -1, 1.5, "2", True])
def test_bad_thread_counts_are_refused_before_any_work(task, threads):
    with pytest.raises(HaqError, match="threads must be a positive whole number"):
        run(task, threads=threads, episodes=1)
