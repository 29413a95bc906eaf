"""End-to-end searches on a small trained CNN with a real backend and hardware model.

Each search is short (6 episodes, 3 of them warmup) so the whole file runs in
seconds; the checks are about behaviour (budget, determinism, resume, outputs),
not about how good a 6-episode policy is.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from haq_plugin.engine.agent import DDPGConfig
from haq_plugin.tasks.demo import accuracy_fn, digits_splits
from haq_plugin.api.errors import HaqError
from haq_plugin.api.hookspecs import hookimpl
from haq_plugin.api.plugins import get_plugin_manager, load_hardware, reset_plugin_manager
from haq_plugin.api.policy import Policy
from haq_plugin.engine.results import SearchInterrupted
from haq_plugin.engine.search import search
from tests.helpers import Interrupter

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

EPISODES = 6
QUICK = DDPGConfig(warmup_episodes=3, hidden=64, batch_size=16)
HARDWARE = "bitfusion"


def registered(kind: str, name: str) -> bool:
    manager = get_plugin_manager()
    return name in (manager.hardware if kind == "hw" else manager.backends).names()


@pytest.fixture(scope="module")
def backend_name() -> str:
    for name in ("torch.ao", "brevitas"):
        if registered("backend", name):
            return name
    pytest.skip("neither the torch.ao nor the brevitas backend is registered in this installation")


@pytest.fixture(scope="module")
def task():
    """A 5-layer CNN trained for a few seconds on the digits (about 90% validation accuracy)."""
    if not registered("hw", HARDWARE):
        pytest.skip(f"the {HARDWARE} hardware model is not registered in this installation")
    splits = digits_splits()
    x, y = splits["train"]
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
        nn.Conv2d(16, 24, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(300):
        idx = torch.randint(0, len(y), (64,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.eval()
    return {"model": model, "example_input": torch.zeros(1, 1, 8, 8), "eval_fn": accuracy_fn(*splits["val"]),
            "calibration_data": [x[:128]], "float": accuracy_fn(*splits["val"])(model)}


def run(task, backend_name, **overrides):
    options = dict(hardware=HARDWARE, backend=backend_name, constraint="bops", budget=0.35,
                   eval_fn=task["eval_fn"], calibration_data=task["calibration_data"], episodes=EPISODES,
                   ddpg=QUICK, seed=0, progress=False)
    options.update(overrides)
    return search(task["model"], task["example_input"], **options)


def history_key(result):
    return [(r.bits, r.accuracy, r.reward) for r in result.history]


@pytest.fixture(scope="module")
def reference(task, backend_name, tmp_path_factory):
    """One uninterrupted search with outputs, shared by the comparisons below."""
    out = tmp_path_factory.mktemp("reference")
    return run(task, backend_name, output_dir=out)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    @hookimpl
    def haq_search_started(self, info):
        self.calls.append(("started", info))

    @hookimpl
    def haq_episode_finished(self, record):
        self.calls.append(("episode", record))

    @hookimpl
    def haq_search_finished(self, result):
        self.calls.append(("finished", result))


@pytest.fixture
def observer():
    """Register an observer plugin object for one test, then forget all registrations."""
    def register(plugin, name="test-observer"):
        get_plugin_manager().register(plugin, name=name)
        return plugin
    yield register
    reset_plugin_manager()


# -- the result ----------------------------------------------------------------------------
def test_every_evaluated_policy_fits_and_the_best_is_returned(reference, task):
    r = reference
    assert len(r.history) == EPISODES and not r.interrupted
    assert [rec.episode for rec in r.history] == list(range(EPISODES))
    for rec in r.history:
        assert rec.cost_fraction <= 0.35 + 1e-9
        assert rec.bits[0] == (8, 8) and rec.bits[-1] == (8, 8), "first and last layer kept at 8 bits"
        assert rec.reward == pytest.approx(0.1 * (rec.accuracy - r.float_accuracy))
        assert all(2 <= b <= 8 for pair in rec.bits for b in pair)
    best = max(r.history, key=lambda rec: rec.accuracy)
    assert r.policy.as_list() == best.bits and r.accuracy == best.accuracy
    assert [rec.sigma is None for rec in r.history] == [True] * 3 + [False] * 3
    assert r.history[3].sigma == 0.5 and r.history[5].sigma == pytest.approx(0.5 * 0.99 ** 2)
    assert r.float_accuracy == pytest.approx(task["float"])
    assert r.policy.provenance["achieved"]["accuracy"] == r.accuracy
    assert r.policy.provenance["budget"]["fraction"] == 0.35
    assert r.policy.provenance["search"]["seed"] == 0


def test_uniform_baseline_is_the_highest_uniform_width_within_budget(reference):
    u = reference.uniform
    assert u.cost_fraction <= 0.35
    inner = u.policy.as_list()[1:-1]
    assert all(pair == (u.bits, u.bits) for pair in inner)
    # bops = MACs x w x a: one more bit on every free layer must exceed the budget
    macs = [layer.macs for layer in reference.layers]
    kept = 64 * (macs[0] + macs[-1])
    fraction = lambda b: (kept + b * b * sum(macs[1:-1])) / (64 * sum(macs))  # noqa: E731
    assert fraction(u.bits) == pytest.approx(u.cost_fraction)
    assert fraction(u.bits) <= 0.35 < fraction(u.bits + 1)
    assert "uniform" in reference.summary and f"w{u.bits}/a{u.bits}" in reference.summary


def test_same_seed_gives_the_same_policy_bit_for_bit(reference, task, backend_name):
    again = run(task, backend_name)
    assert again.policy.bits == reference.policy.bits
    assert history_key(again) == history_key(reference)
    other = run(task, backend_name, seed=1, episodes=3)
    assert [r.bits for r in other.history] != [r.bits for r in reference.history[:3]]


# -- resume --------------------------------------------------------------------------------
def test_interrupted_then_resumed_equals_uninterrupted(reference, task, backend_name, tmp_path, observer):
    interrupter = observer(Interrupter(after=4))
    with pytest.raises(SearchInterrupted) as info:
        run(task, backend_name, output_dir=tmp_path)
    partial = info.value.result
    assert isinstance(info.value, KeyboardInterrupt)
    assert partial is not None and partial.interrupted and len(partial.history) == 4
    assert info.value.checkpoint == tmp_path / "checkpoint.pt"
    with open(tmp_path / "episodes.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 4
    assert not (tmp_path / "policy.json").exists(), "final files only after a finished search"
    interrupter.after = -1  # do not interrupt again
    resumed = run(task, backend_name, output_dir=tmp_path, resume=True)
    assert resumed.policy.bits == reference.policy.bits
    assert history_key(resumed) == history_key(reference)
    assert Policy.load(tmp_path / "policy.json").bits == reference.policy.bits


def test_shorter_run_extended_on_resume_equals_uninterrupted(reference, task, backend_name, tmp_path):
    first = run(task, backend_name, output_dir=tmp_path, episodes=2)
    assert len(first.history) == 2
    resumed = run(task, backend_name, output_dir=tmp_path, resume=True)
    assert history_key(resumed) == history_key(reference)


def test_resume_restores_the_global_random_state(task, backend_name, tmp_path):
    """An eval_fn that samples a random validation subset draws from the global generator."""
    x, y = digits_splits()["val"]

    def sampled_eval(model):
        idx = torch.randperm(len(y))[:150]
        return accuracy_fn(x[idx], y[idx])(model)

    straight = run(task, backend_name, eval_fn=sampled_eval, episodes=4)
    run(task, backend_name, eval_fn=sampled_eval, episodes=2, output_dir=tmp_path)
    resumed = run(task, backend_name, eval_fn=sampled_eval, episodes=4, output_dir=tmp_path, resume=True)
    assert history_key(resumed) == history_key(straight)


@pytest.mark.parametrize("backend", ["torch.ao", "brevitas"])
def test_resume_with_finetuning_equals_uninterrupted(task, backend, tmp_path):
    """Finetuning changes weights every episode: the backend must start each one afresh."""
    if not registered("backend", backend):
        pytest.skip(f"the {backend} backend is not registered in this installation")
    x, y = digits_splits()["train"]
    train = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)]
    options = dict(train_data=train, finetune_steps=3, episodes=4)
    straight = run(task, backend, **options)
    run(task, backend, output_dir=tmp_path, **{**options, "episodes": 2})
    resumed = run(task, backend, output_dir=tmp_path, resume=True, **options)
    assert history_key(resumed) == history_key(straight)


def test_resume_refuses_changed_settings_and_missing_checkpoint(reference, task, backend_name, tmp_path):
    with pytest.raises(HaqError, match="budget: checkpoint 0.35, now 0.3"):
        run(task, backend_name, output_dir=reference.output_dir, resume=True, budget=0.3)
    with pytest.raises(HaqError, match="Cannot resume: .*checkpoint.pt does not exist"):
        run(task, backend_name, output_dir=tmp_path / "empty", resume=True)


# -- outputs -------------------------------------------------------------------------------
def test_output_files(reference, backend_name):
    out = reference.output_dir
    names = {p.name for p in out.iterdir()}
    backend_file = reference.files["export"].name
    assert {"policy.json", "episodes.csv", "summary.md", "policy.png", "checkpoint.pt", backend_file} <= names
    assert not [n for n in names if n.startswith(".")], "no temporary files left behind"
    loaded = Policy.load(out / "policy.json")
    assert loaded.bits == reference.policy.bits and loaded.provenance == reference.policy.provenance
    with open(out / "episodes.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == EPISODES
    assert rows[0].keys() >= {"episode", "strategy", "bits", "cost", "cost_fraction", "accuracy", "reward",
                              "sigma", "is_best"}
    assert rows[2]["bits"] == " ".join(f"{w}/{a}" for w, a in reference.history[2].bits)
    assert float(rows[4]["accuracy"]) == pytest.approx(reference.history[4].accuracy, abs=1e-4)
    summary = (out / "summary.md").read_text()
    for layer in reference.layers:
        assert f"`{layer.name}`" in summary and layer.describe() in summary
    assert f"{reference.accuracy:.2f}" in summary and "| budget |" in summary
    assert (out / "policy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_non_empty_output_dir_needs_force(reference, task, backend_name, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(HaqError, match="is not empty .*force=True"):
        run(task, backend_name, output_dir=tmp_path, episodes=1)
    result = run(task, backend_name, output_dir=tmp_path, episodes=1, force=True)
    assert (tmp_path / "policy.json").exists() and (tmp_path / "notes.txt").exists()
    assert len(result.history) == 1


# -- strategies and observers --------------------------------------------------------------
def test_random_strategy_uses_the_same_budget_enforcement(task, backend_name):
    result = run(task, backend_name, strategy="random", budget=0.3)
    assert len(result.history) == EPISODES
    assert all(r.strategy == "random" and r.sigma is None and r.cost_fraction <= 0.3 + 1e-9
               for r in result.history)
    assert len({tuple(r.bits) for r in result.history}) == EPISODES, "random policies differ"
    assert "ddpg" not in result.policy.provenance["search"]


def test_uniform_strategy_evaluates_only_the_uniform_policy(task, backend_name):
    result = run(task, backend_name, strategy="uniform")
    assert len(result.history) == 1
    assert result.policy.bits == result.uniform.policy.bits
    assert result.accuracy == result.uniform.accuracy


def test_observers_see_start_episodes_and_finish(task, backend_name, observer):
    recorder = observer(Recorder())
    result = run(task, backend_name, episodes=3)
    kinds = [kind for kind, _ in recorder.calls]
    assert kinds == ["started", "episode", "episode", "episode", "finished"]
    info = recorder.calls[0][1]
    assert info["layers"] == [layer.name for layer in result.layers]
    assert info["budget"]["fraction"] == 0.35 and info["hardware"]["name"] == HARDWARE
    assert recorder.calls[2][1]["accuracy"] == result.history[1].accuracy
    assert recorder.calls[-1][1] is not None and recorder.calls[-1][1].policy.bits == result.policy.bits


# -- bad options ---------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,message", [
    ({"min_bits": 6, "max_bits": 4}, r"min_bits \(6\) is larger than max_bits \(4\)"),
    ({"budget": 0}, r"budget must be a fraction of the 8-bit cost in \(0, 1\]"),
    ({"budget": 1.5}, r"budget must be a fraction of the 8-bit cost in \(0, 1\]"),
    ({"strategy": "genetic"}, "Unknown search strategy 'genetic'. Choose one of: ddpg, random, uniform"),
    ({"constraint": "area"}, "Unknown constraint 'area'"),
    ({"episodes": 0}, "episodes must be a positive integer"),
    ({"finetune_steps": 5}, "needs train_data"),
    ({"resume": True}, "resume=True needs the output_dir"),
    ({"pins": {"nope": (4, 4)}}, "no quantizable layer named 'nope'"),
    ({"min_bits": 1, "max_bits": 1}, "No bit width in min_bits..max_bits = 1..1 is supported by both"),
])
def test_bad_options_raise_clear_errors(task, backend_name, overrides, message):
    with pytest.raises(HaqError, match=message):
        run(task, backend_name, **overrides)


def test_energy_constraint_needs_a_hardware_model_with_energy(task, backend_name):
    without = [name for name in ("bismo-edge", "bismo-cloud") if registered("hw", name)]
    if not without:
        pytest.skip("no hardware model without an energy model (bismo) is registered")
    assert not load_hardware(without[0]).has_energy
    with pytest.raises(HaqError, match=f"hardware model '{without[0]}' has no energy model"):
        run(task, backend_name, hardware=without[0], constraint="energy")


def test_infeasible_budget_names_the_smallest_feasible_fraction(task, backend_name):
    with pytest.raises(HaqError, match="smallest feasible budget is") as info:
        run(task, backend_name, budget=0.01)
    stated = float(re.search(r"smallest feasible budget is ([0-9.]+)", str(info.value)).group(1))
    result = run(task, backend_name, budget=stated, strategy="uniform")
    assert result.uniform.bits == 2 and result.cost_fraction <= stated


def test_policy_json_provenance_is_json_and_complete(reference):
    data = json.loads((reference.output_dir / "policy.json").read_text())
    prov = data["provenance"]
    assert {"haq_plugin_version", "hardware", "backend", "constraint", "budget", "achieved",
            "uniform_baseline", "search"} <= prov.keys()
    assert prov["hardware"]["name"] == HARDWARE and prov["hardware"]["config"]
    assert prov["budget"]["absolute"] == pytest.approx(0.35 * prov["budget"]["reference_8bit"])
    assert [entry["name"] for entry in data["layers"]] == [layer.name for layer in reference.layers]
    assert reference.files["policy"] == Path(reference.output_dir) / "policy.json"
