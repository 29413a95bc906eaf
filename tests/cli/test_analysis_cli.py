"""`haq-plugin sweep` and `haq-plugin sensitivity` run as a user runs them (subprocesses, real files)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from haq_plugin.cli import main
from haq_plugin.api.policy import Policy

HERE = Path(__file__).parent
USER_TASK = ("--model", "user_task:model", "--data", "user_task:data")


def haq(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "haq_plugin.cli", *args], capture_output=True, text=True,
                          cwd=HERE, env=env, timeout=900)


def pareto_rows(directory: Path) -> list[dict[str, str]]:
    with open(directory / "pareto.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_sweep_on_your_own_model_then_resume_with_another_budget(tmp_path):
    out = tmp_path / "sweep"
    proc = haq("sweep", *USER_TASK, "--backend", "torch.ao", "--hw", "bitfusion", "--budgets", "0.7,0.9",
               "--no-keep-last-layer-8bit", "--strategy", "random", "--episodes", "3", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = pareto_rows(out)
    assert [r["budget"] for r in rows if r["strategy"] == "random"] == ["0.7", "0.9"]
    for row in rows:
        assert 0.0 < float(row["test_accuracy"]) <= 100.0  # measured on the test_data the --data callable gave
        achieved = Policy.load(out / row["policy_file"]).provenance["achieved"]
        assert float(row["val_accuracy"]) == pytest.approx(achieved["accuracy"], abs=1e-4)
    assert "pareto.csv" in proc.stdout and "budget-0.7/policy.json" in proc.stdout
    assert "test accuracy" in (out / "summary.md").read_text()
    stamp = (out / "budget-0.7" / "policy.json").stat().st_mtime_ns
    # resume with the stored settings: only the new budget is searched
    proc = haq("sweep", "--resume", str(out), "--budgets", "0.7,0.8,0.9", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert {r["budget"]: r["status"] for r in pareto_rows(out)} == {"0.7": "kept", "0.8": "searched", "0.9": "kept"}
    assert (out / "budget-0.7" / "policy.json").stat().st_mtime_ns == stamp
    assert Policy.load(out / "budget-0.8" / "policy.json").provenance["backend"]["name"] == "torch.ao"


@pytest.mark.slow
def test_a_quiet_sweep_still_names_each_skipped_budget(tmp_path):
    proc = haq("sweep", *USER_TASK, "--backend", "torch.ao", "--hw", "bitfusion", "--budgets", "0.01,0.9",
               "--no-keep-last-layer-8bit", "--strategy", "random", "--episodes", "2", "--quiet",
               "--output", str(tmp_path / "sweep"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert "budget 0.01 skipped: infeasible, the smallest feasible budget is" in proc.stderr
    assert [r["budget"] for r in pareto_rows(tmp_path / "sweep")] == ["0.9", "0.9"]  # searched and uniform


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_sensitivity_refuses_a_device_this_machine_lacks(tmp_path):
    proc = haq("sensitivity", *USER_TASK, "--backend", "torch.ao", "--device", "cuda", "--output", str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cuda" in proc.stderr.lower()


@pytest.mark.slow
def test_sensitivity_on_your_own_model(tmp_path):
    out = tmp_path / "sens"
    proc = haq("sensitivity", *USER_TASK, "--backend", "torch.ao", "--hw", "bismo-edge", "--bits", "2,3",
               "--device", "cpu", "--threads", "1", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "2 layers x 2 bit widths x 2 (weights, activations) = 8 evaluations" in proc.stderr
    with open(out / "sensitivity.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["layer"] for r in rows] == ["0", "3"]
    assert float(rows[0]["w8"]) == float(rows[1]["a8"])
    assert sum(float(r["cost_share"]) for r in rows) == pytest.approx(1.0, abs=1e-5)
    assert "| 0 | `0` |" in proc.stdout and (out / "sensitivity.png").is_file()
    # Each layer's input has an observer of its own here: every entry ran as asked, and none is marked.
    assert [r["effective"] for r in rows] == ["", ""] and "\u2020" not in proc.stdout
    assert "at other bits" not in proc.stderr


@pytest.mark.parametrize("args, message", [
    (("sweep", "--budgets", "0.3,abc"), "--budgets '0.3,abc'"),
    (("sweep", "--budgets", "0.3,1.2"), "1.2"),
    (("sweep", "--budgets", "0.01"), "smallest feasible"),
    (("sweep", "--resume", "{tmp}/missing"), "no sweep.json"),
    (("sweep", "--resume", "{tmp}", "--episodes", "4"), "only --budgets, --quiet, --no-cache, --device, --threads and --ray-address"),
    (("sensitivity", "--bits", "1"), "1 bits are not supported"),
    (("sensitivity", "--bits", "2,x"), "--bits '2,x'"),
    (("sensitivity", "--hw", "bismo-edge", "--constraint", "energy"), "no energy model"),
])
def test_bad_input_exits_2_with_a_message(tmp_path, capsys, args, message):
    argv = [a.format(tmp=tmp_path) for a in args]
    if "--resume" not in args:  # a resumed sweep takes its settings from the directory
        argv += [*USER_TASK, "--output", str(tmp_path / "out"), "--quiet"]
    old = os.getcwd()
    os.chdir(HERE)  # the user task module is importable from the current directory, as for a user
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
    finally:
        os.chdir(old)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert message in err and "Traceback" not in err
