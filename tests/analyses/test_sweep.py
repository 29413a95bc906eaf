"""Budget sweeps on the demo with a real backend and hardware model, a few random-strategy episodes each.

The checks are about the sweep's own behaviour: its rows describe the per-budget
policy files, the shared backend gives the same policies as separate searches,
resuming reruns no finished budget, infeasible budgets are skipped, and bad
input is refused with a clear message.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest

from haq_plugin.api.errors import HaqError
from haq_plugin.tasks.specs import load_model, load_task_data
from haq_plugin.api.plugins import load_backend
from haq_plugin.api.policy import Policy
from haq_plugin.engine.search import search
from haq_plugin.analyses.sweep import budget_folder, check_budgets, parse_budgets, sweep

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

BACKEND, HARDWARE = "brevitas", "bitfusion"
OPTIONS = {"strategy": "random", "episodes": 3, "seed": 3}
BUDGETS = (0.2, 0.5, 0.7)  # 0.2 is below what BitFusion can reach for the demo (about 0.39)


@pytest.fixture(scope="module")
def demo():
    source, data = load_model("demo"), load_task_data(None, "demo")
    return source, data


def run_sweep(demo, output: Path, budgets=BUDGETS, backend=None, **kwargs):
    source, data = demo
    return sweep(source.model, source.example_input, budgets=budgets, hardware=HARDWARE,
                 backend=backend or load_backend(BACKEND), eval_fn=data.eval_fn,
                 calibration_data=data.calibration_data, test_eval_fn=data.test_eval_fn, output_dir=output,
                 progress=False, **{**OPTIONS, **kwargs})


@pytest.fixture(scope="module")
def swept(demo, tmp_path_factory):
    backend = load_backend(BACKEND)
    result = run_sweep(demo, tmp_path_factory.mktemp("sweep") / "out", backend=backend)
    return result, backend


def read_rows(directory: Path) -> list[dict[str, str]]:
    with open(directory / "pareto.csv") as handle:
        return list(csv.DictReader(handle))


def test_csv_rows_match_the_per_budget_policy_files(swept, demo):
    result, _ = swept
    rows = read_rows(result.output_dir)
    assert [(r["budget"], r["strategy"]) for r in rows] == [("0.5", "random"), ("0.5", "uniform"),
                                                            ("0.7", "random"), ("0.7", "uniform")]
    source, data = demo
    checker = load_backend(BACKEND)
    checker.prepare(source.model, source.example_input, data.calibration_data)
    for row in rows:
        policy = Policy.load(result.output_dir / row["policy_file"])
        achieved = policy.provenance["achieved"]
        assert float(row["cost_fraction"]) == pytest.approx(achieved["cost_fraction"], abs=1e-6)
        assert float(row["cost_fraction"]) <= float(row["budget"]) * (1 + 1e-9)
        assert float(row["val_accuracy"]) == pytest.approx(achieved["accuracy"], abs=1e-4)
        # the test column is the policy measured on the demo's held-out split by an independent backend
        checker.set_policy(policy.bits)
        checker.calibrate()
        assert float(row["test_accuracy"]) == pytest.approx(checker.evaluate(data.test_eval_fn), abs=1e-4)
        if row["strategy"] == "random":
            assert policy.provenance["search"]["strategy"] == "random"
            assert policy.provenance["budget"]["fraction"] == float(row["budget"])
            assert Path(row["policy_file"]).parent.name == budget_folder(float(row["budget"]))
    # the uniform row is the search's own best uniform baseline
    uniform = Policy.load(result.output_dir / rows[1]["policy_file"])
    baseline = Policy.load(result.output_dir / rows[0]["policy_file"]).provenance["uniform_baseline"]
    assert {w for w, _ in list(uniform.bits.values())[1:-1]} == {baseline["bits"]}
    assert float(rows[1]["val_accuracy"]) == pytest.approx(baseline["accuracy"], abs=1e-4)


def test_infeasible_budget_is_reported_and_skipped(swept):
    result, _ = swept
    assert list(result.infeasible) == [0.2]
    assert 0.2 < result.infeasible[0.2] < 0.5
    assert not (result.output_dir / budget_folder(0.2)).exists()
    summary = (result.output_dir / "summary.md").read_text()
    assert f"0.2: the smallest feasible budget is {result.infeasible[0.2]:.4f}" in summary
    assert (result.output_dir / "pareto.png").stat().st_size > 10_000
    for budget in (0.5, 0.7):
        folder = result.output_dir / budget_folder(budget)
        for name in ("policy.json", "brevitas_policy.json", "episodes.csv", "summary.md", "checkpoint.pt"):
            assert (folder / name).is_file(), (budget, name)


def test_shared_backend_gives_the_same_policy_as_a_separate_search(swept, demo, tmp_path):
    result, backend = swept
    # one prepare for the whole sweep: every later search (and the test evaluations) reused it
    assert backend.prepared_on is not None and backend.prepared_on.reuses >= 1
    assert backend.reuse_prepared is False  # the sweep restores the instance's setting
    source, data = demo
    alone = search(source.model, source.example_input, hardware=HARDWARE, backend=load_backend(BACKEND),
                   budget=0.7, eval_fn=data.eval_fn, calibration_data=data.calibration_data, progress=False,
                   output_dir=tmp_path / "alone", **OPTIONS)
    swept_policy = Policy.load(result.output_dir / budget_folder(0.7) / "policy.json")
    assert swept_policy.bits == alone.policy.bits
    assert swept_policy.provenance["achieved"]["accuracy"] == alone.accuracy
    assert result.float_accuracy == alone.float_accuracy
    assert result.eight_bit_accuracy >= max(p.val_accuracy for p in result.points) - 1.0


def test_resume_reruns_no_finished_budget(swept, demo, tmp_path):
    result, _ = swept
    out = tmp_path / "resumed"
    shutil.copytree(result.output_dir, out)
    finished = out / budget_folder(0.5)
    stamps = {p.name: p.stat().st_mtime_ns for p in finished.iterdir()}
    interrupted = out / budget_folder(0.7)
    before = Policy.load(interrupted / "policy.json").bits
    (interrupted / "policy.json").unlink()  # its checkpoint remains, as after a Ctrl-C at the end
    again = run_sweep(demo, out, budgets=(0.5, 0.7, 0.8), resume=True)
    assert sorted(again.searches) == [0.7, 0.8]
    assert {p.budget: p.status for p in again.points} == {0.5: "kept", 0.7: "resumed", 0.8: "searched"}
    assert {p.name: p.stat().st_mtime_ns for p in finished.iterdir()} == stamps
    assert Policy.load(interrupted / "policy.json").bits == before
    rows = read_rows(out)
    assert [r["budget"] for r in rows if r["strategy"] == "random"] == ["0.5", "0.7", "0.8"]
    # a second resume finds every budget finished and searches nothing
    assert run_sweep(demo, out, budgets=(0.5, 0.7, 0.8), resume=True).searches == {}


def test_resume_refuses_other_settings_and_missing_sweeps(swept, demo, tmp_path):
    result, _ = swept
    out = tmp_path / "other"
    shutil.copytree(result.output_dir, out)
    with pytest.raises(HaqError, match="settings differ.*episodes"):
        run_sweep(demo, out, resume=True, episodes=5)
    with pytest.raises(HaqError, match="no sweep.json"):
        run_sweep(demo, tmp_path / "empty", resume=True)
    with pytest.raises(HaqError, match="not empty"):
        run_sweep(demo, out)


@pytest.mark.parametrize("budgets, message", [
    ([], "at least one budget"), ([0.5, 1.5], "1.5"), ([0.0], "0.0"), ([0.4, 0.4], "repeat 0.4"),
    ([True], "True"), (["0.5"], "'0.5'"),
])
def test_bad_budget_lists_are_refused(budgets, message):
    with pytest.raises(HaqError, match=message):
        check_budgets(budgets)


def test_budget_text_is_parsed_and_checked():
    assert parse_budgets("0.8, 0.3,0.5") == (0.3, 0.5, 0.8)
    with pytest.raises(HaqError, match="--budgets '0.3;0.4'"):
        parse_budgets("0.3;0.4")


def test_no_feasible_budget_and_foreign_options_are_refused(demo, tmp_path):
    with pytest.raises(HaqError, match="No budget of the sweep is feasible.*smallest feasible latency budget is 0.3"):
        run_sweep(demo, tmp_path / "low", budgets=(0.1, 0.2))
    with pytest.raises(HaqError, match="budget.*set by the sweep itself"):
        run_sweep(demo, tmp_path / "budget", budget=0.5)
    with pytest.raises(HaqError, match="episodez"):
        run_sweep(demo, tmp_path / "typo", episodez=3)


def test_a_sweep_refuses_a_directory_another_process_is_sweeping(demo, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "sweep.json").write_text('{"budgets": [0.5], "settings": {}}\n')  # the other sweep's file
    (out / "search.lock").write_text(f"{os.getppid()} host\n")  # held by a live process
    with pytest.raises(HaqError, match=f"Another search is running in {out} \\(process {os.getppid()}"):
        run_sweep(demo, out, budgets=(0.5,), force=True)
    assert (out / "sweep.json").read_text() == '{"budgets": [0.5], "settings": {}}\n'  # force cleared nothing
    assert sorted(p.name for p in out.iterdir()) == ["search.lock", "sweep.json"]


def test_a_finished_sweep_releases_its_lock(swept):
    result, _ = swept
    assert not (result.output_dir / "search.lock").exists()
