"""``hw show``, the limits in ``hw list``, DDPG values that would hang, and ``export`` of a user's policy."""

import json
from pathlib import Path

import pytest

from tests.helpers import run_cli

HERE = Path(__file__).parent


def test_hw_show_gives_supported_bits_and_option_limits():
    proc = run_cli("hw", "show", "bitfusion")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("bitfusion  (")
    assert "supported_bits: [1, 2, 3, 4, 5, 6, 7, 8]" in proc.stdout
    assert "--hw-option rows=8 (int; >= 1)" in proc.stdout
    assert "bismo" not in proc.stdout.split("\n", 1)[0]


def test_hw_show_unknown_name_exits_2_with_the_installed_names():
    proc = run_cli("hw", "show", "nope")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Unknown hardware model 'nope'" in proc.stderr and "bitfusion" in proc.stderr


def test_hw_list_json_has_supported_bits_choices_and_minimum():
    proc = run_cli("hw", "list", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    entries = {entry["name"]: entry for entry in json.loads(proc.stdout)}
    bismo = entries["bismo-edge"]
    assert bismo["supported_bits"] == list(range(1, 9))
    options = {option["name"]: option for option in bismo["options"]}
    assert options["preset"]["choices"] and "haq-paper" in options["preset"]["choices"]
    assert all({"minimum", "choices"} <= set(option) for option in options.values())
    assert any(option["minimum"] is not None for option in options.values())


@pytest.mark.parametrize("flag", ["--lr-actor=inf", "--initial-sigma=inf", "--tau=nan"])
def test_non_finite_ddpg_values_exit_2_instead_of_hanging(flag):
    proc = run_cli("search", flag, "--episodes", "2", "--quiet", "--output", "unused", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "must be a finite number" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_export_uses_the_model_and_mode_the_policy_was_searched_with(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("search", "--model", "user_task:model", "--data", "user_task:data", "--constraint", "size",
                   "--budget", "0.6", "--no-keep-last-layer-8bit", "--strategy", "uniform", "--quiet", "--output", str(out), cwd=HERE)
    assert proc.returncode == 0, proc.stderr
    policy = json.loads((out / "policy.json").read_text())
    assert policy["provenance"]["search"]["quantize"] == "weights"  # the default under size
    assert policy["provenance"]["hardware"]["distribution"] == "haq-plugin"
    target = tmp_path / "qconfig.json"
    proc = run_cli("export", "--policy", str(out / "policy.json"), "--backend", "torch.ao", "-o", str(target),
                   cwd=HERE)
    assert proc.returncode == 0, proc.stderr  # no --model: the policy's own --model is used
    exported = json.loads(target.read_text())
    assert exported["quantize"] == "weights"
    assert [layer["name"] for layer in exported["layers"]] == [layer["name"] for layer in policy["layers"]]


def test_export_into_a_path_that_cannot_be_a_directory_exits_2(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    out = tmp_path / "run"
    proc = run_cli("search", "--strategy", "uniform", "--quiet", "--output", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("export", "--policy", str(out / "policy.json"), "--backend", "brevitas",
                   "-o", str(blocker / "policy.json"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"Cannot write {blocker / 'policy.json'}" in proc.stderr and "directory you can write to" in proc.stderr
    proc = run_cli("search", "--episodes", "2", "--quiet", "--output", str(blocker / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "Not a directory" in proc.stderr
