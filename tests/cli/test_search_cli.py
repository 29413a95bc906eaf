"""`haq-plugin search` and `export` run as a user runs them (subprocesses, real files)."""

import csv
import json
import re
from pathlib import Path

import pytest

from haq_plugin.api.policy import Policy
from tests.helpers import run_cli as haq, start_cli

HERE = Path(__file__).parent


@pytest.mark.slow
@pytest.mark.parametrize("backend, export_file", [("brevitas", "brevitas_policy.json"),
                                                  ("torch.ao", "qconfig_mapping.json")])
def test_demo_search_writes_every_output(tmp_path, backend, export_file):
    out = tmp_path / "run"
    proc = haq("search", "--backend", backend, "--hw", "bitfusion", "--episodes", "6", "--warmup-episodes", "3",
               "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    for name in ("policy.json", export_file, "episodes.csv", "summary.md", "policy.png", "checkpoint.pt"):
        assert (out / name).is_file(), name
    policy = Policy.load(out / "policy.json")
    assert policy.provenance["hardware"]["name"] == "bitfusion"
    assert policy.provenance["backend"]["name"] == backend
    with open(out / "episodes.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 6
    assert "float" in proc.stdout and "haq-plugin export" in proc.stdout
    # the summary states accuracy and cost against the 8-bit baseline
    summary = (out / "summary.md").read_text()
    assert "8-bit" in summary and "uniform" in summary.lower()
    # a second run into the same directory is refused without --force
    again = haq("search", "--backend", backend, "--episodes", "2", "--output", str(out))
    assert again.returncode == 2 and "--force" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.slow
def test_bring_your_own_model_and_data(tmp_path):
    out = tmp_path / "mine"
    proc = haq("search", "--model", "user_task:model", "--data", "user_task:data", "--backend", "torch.ao",
               "--hw", "bismo-edge", "--budget", "0.6", "--no-keep-last-layer-8bit", "--episodes", "4",
               "--warmup-episodes", "2", "--output", str(out), cwd=HERE)
    assert proc.returncode == 0, proc.stderr
    # the --data callable's test_data gives the best policy's held-out accuracy
    assert re.search(r"Held-out test accuracy of the best policy: [\d.]+% \(float [\d.]+%\)", proc.stdout)
    policy = Policy.load(out / "policy.json")
    assert list(policy.bits) == ["0", "3"]
    assert policy.bits["0"] == (8, 8)  # the first layer is kept at 8 bits by default
    assert policy.provenance["achieved"]["cost_fraction"] <= 0.6
    # the exported mapping is written and the export command reproduces it
    exported = tmp_path / "again.json"
    proc = haq("export", "--policy", str(out / "policy.json"), "--backend", "torch.ao", "--model",
               "user_task:model", "-o", str(exported), cwd=HERE)
    assert proc.returncode == 0, proc.stderr
    first = json.loads((out / "qconfig_mapping.json").read_text())
    assert json.loads(exported.read_text())["qconfig_mapping"] == first["qconfig_mapping"]


def test_infeasible_budget_and_bad_options_exit_2(tmp_path):
    proc = haq("search", "--model", "user_task:model", "--data", "user_task:data", "--hw", "bitfusion",
               "--budget", "0.01", "--output", str(tmp_path / "x"), "--quiet", cwd=HERE)
    assert proc.returncode == 2 and "smallest feasible" in proc.stderr.lower(), proc.stderr
    for args, message in ([("--min-bits", "6", "--max-bits", "4"), "min"],
                          [("--budget", "1.5"), "budget"],
                          [("--hw", "bismo-edge", "--constraint", "energy"), "energy"],
                          [("--pin", "nolayer=4/4"), "nolayer"]):
        proc = haq("search", "--model", "user_task:model", "--data", "user_task:data", *args,
                   "--output", str(tmp_path / "y"), "--quiet", cwd=HERE)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr.lower() and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_ctrl_c_then_resume_gives_the_uninterrupted_policy(tmp_path):
    import signal
    import time

    args = ["search", "--model", "user_task:model", "--data", "user_task:data", "--backend", "torch.ao",
            "--hw", "bismo-edge", "--budget", "0.6", "--no-keep-last-layer-8bit", "--episodes", "400",
            "--warmup-episodes", "5", "--quiet"]
    out = tmp_path / "interrupted"
    proc = start_cli(*args, "--output", str(out), cwd=HERE)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert f"haq-plugin search --resume {out}" in stderr
    resumed = haq("search", "--resume", str(out), "--quiet", cwd=HERE)
    assert resumed.returncode == 0, resumed.stderr
    straight = haq(*args, "--output", str(tmp_path / "straight"), cwd=HERE)
    assert straight.returncode == 0, straight.stderr
    assert Policy.load(out / "policy.json").bits == Policy.load(tmp_path / "straight" / "policy.json").bits
    with open(out / "episodes.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 400
    refused = haq("search", "--resume", str(out), "--hw", "bitfusion", cwd=HERE)
    assert refused.returncode == 2 and "only --episodes" in refused.stderr
