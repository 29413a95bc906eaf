"""User mistakes and faults around ``haq-plugin search`` and ``cost``: exit 2, one message, nothing lost.

Tests that run a search in a subprocess are marked ``slow``; the rest stop before the first episode.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from haq_plugin.api.policy import Policy
from tests.helpers import run_cli

HERE = Path(__file__).parent
MINE = ("--model", "user_task:model", "--data", "user_task:data", "--budget", "0.6",
        "--no-keep-last-layer-8bit", "--quiet")


def search(*args: str, env: dict | None = None):
    if env:
        os.environ.update(env)
        try:
            return run_cli("search", *args, cwd=HERE)
        finally:
            for key in env:
                os.environ.pop(key)
    return run_cli("search", *args, cwd=HERE)


def assert_refused(proc, *messages: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    for message in messages:
        assert message in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished two-episode search (random strategy) whose directory can be resumed to more episodes."""
    out = tmp_path_factory.mktemp("finished") / "run"
    proc = search(*MINE, "--hw", "bismo-edge", "--strategy", "random", "--episodes", "2", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("payload, message", [
    ([1, 2, 3], "is not one of ours, or is damaged: it holds a list"),
    ({"format": 2, "settings": {}}, "is not one of ours, or is damaged: key 'run' (missing)"),
])
def test_a_foreign_checkpoint_names_what_is_wrong(tmp_path, payload, message):
    torch.save(payload, tmp_path / "checkpoint.pt")
    assert_refused(search("--resume", str(tmp_path)), message)


@pytest.mark.slow
def test_history_entries_with_missing_fields_are_named(finished, tmp_path):
    payload = torch.load(finished / "checkpoint.pt", weights_only=True)
    del payload["history"][1]["accuracy"]
    torch.save(payload, tmp_path / "checkpoint.pt")
    assert_refused(search("--resume", str(tmp_path)), "key 'history[1]' (lacks field(s) accuracy)")


def test_a_garbage_checkpoint_is_one_line(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"\x80\x04garbage that is no zip file")
    proc = search("--resume", str(tmp_path))
    assert_refused(proc, "Cannot read checkpoint", "start a new search in a fresh directory")
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flag", [("--output", "elsewhere"), ("--force",)])
def test_resume_refuses_output_and_force(tmp_path, flag):
    assert_refused(search("--resume", str(tmp_path), *flag), "only --episodes, --quiet, --no-cache, --device, --threads and --ray-address", flag[0])


@pytest.mark.parametrize("args, message", [
    (("--seed", "18446744073709551616"), "seed must be an integer from 0 to 4294967295"),
    (("--seed", "-1"), "seed must be an integer from 0 to 4294967295"),
    (("--finetune-steps=-1",), "finetune_steps must be an integer >= 0"),
])
def test_out_of_range_settings(tmp_path, args, message):
    assert_refused(search(*MINE, *args, "--output", str(tmp_path / "x")), message)


def test_cost_refuses_an_empty_bits_value():
    assert_refused(run_cli("cost", "--model", "zoo:resnet18", "--bits="), "--bits '': write weight/activation bits")


@pytest.mark.parametrize("data, message", [
    ("faulty_task:raising", "eval_fn raised KeyError: 'labels' while evaluating the float model"),
    ("faulty_task:string", "eval_fn returned 'ninety' (str)"),
    ("faulty_task:fraction_nan", "eval_fn returned NaN"),
])
def test_a_meaningless_eval_fn_stops_before_the_first_episode(tmp_path, data, message):
    out = tmp_path / "x"
    proc = search("--model", "user_task:model", "--data", data, "--quiet", "--output", str(out))
    assert_refused(proc, message, "accuracy in percent")
    assert not (out / "policy.json").exists()


@pytest.mark.slow
def test_eval_fn_failing_later_keeps_the_episodes_and_says_how_to_resume(tmp_path):
    out = tmp_path / "x"
    common = ("--model", "user_task:model", "--budget", "0.6", "--no-keep-last-layer-8bit", "--hw", "bismo-edge",
              "--strategy", "random", "--episodes", "4", "--quiet")
    proc = search(*common, "--data", "faulty_task:later_failure", "--output", str(out),
                  env={"HAQ_FAIL_AFTER": "5"})
    assert_refused(proc, "while evaluating episode 2", "2 finished episode(s) are saved",
                   f"haq-plugin search --resume {out}")
    assert (out / "checkpoint.pt").is_file() and not (out / "search.lock").exists()


@pytest.mark.slow
def test_the_closing_lines_list_what_was_written(tmp_path):
    out = tmp_path / "x"
    proc = run_cli("search", *MINE[:-1], "--hw", "bismo-edge", "--backend", "torch.ao", "--strategy", "uniform",
                   "--output", str(out), cwd=HERE)
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("Outputs in"))
    assert "checkpoint.pt" in line and "qconfig_mapping.json" in line and "episodes.csv" in line
    assert ("policy.png" in line) == (out / "policy.png").exists()
    assert "--backend torch.ao -o qconfig_mapping.json" in proc.stdout


def test_force_on_a_checkpoint_that_cannot_be_removed_is_one_line_naming_it(tmp_path):
    """A directory named checkpoint.pt cannot be unlinked, by root neither."""
    out = tmp_path / "x"
    (out / "checkpoint.pt").mkdir(parents=True)
    (out / "checkpoint.pt" / "kept").write_text("not ours")
    proc = search(*MINE, "--output", str(out), "--force")
    assert_refused(proc, f"Cannot overwrite output directory {out} (force)", f"checkpoint {out / 'checkpoint.pt'}",
                   "Is a directory", "use a new output directory")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (out / "search.lock").exists()
    assert (out / "checkpoint.pt" / "kept").read_text() == "not ours"


def test_a_second_search_on_a_locked_directory_names_the_running_one(tmp_path):
    out = tmp_path / "x"
    out.mkdir()
    (out / "search.lock").write_text(f"{os.getppid()} host\n")
    assert_refused(search(*MINE, "--output", str(out)), f"process {os.getppid()}", "Another search is running")


@pytest.mark.slow
@pytest.mark.parametrize("hw", ["bitfusion", "bitfusion-cloud", "bismo-edge", "bismo-cloud"])
def test_resume_on_every_builtin_hardware_model(tmp_path, hw):
    """Stored configs hold None defaults (bitfusion's energy options): resume must accept them as stored."""
    strategy = ("--warmup-episodes", "1") if hw == "bitfusion" else ("--strategy", "random")
    mine = ("--model", "user_task:model", "--data", "user_task:data", "--no-keep-last-layer-8bit", "--quiet")
    out = tmp_path / "run"
    first = search(*mine, "--hw", hw, *strategy, "--episodes", "2", "--output", str(out))
    assert first.returncode == 0, first.stderr
    (out / ".checkpoint.k1ll3d.pt").write_bytes(b"")  # what a SIGKILL during a checkpoint write leaves
    resumed = search("--resume", str(out), "--episodes", "3", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert not (out / ".checkpoint.k1ll3d.pt").exists() and not (out / "search.lock").exists()
    straight = search(*mine, "--hw", hw, *strategy, "--episodes", "3", "--output", str(tmp_path / "straight"))
    assert Policy.load(out / "policy.json").bits == Policy.load(tmp_path / "straight" / "policy.json").bits
    assert Policy.load(out / "policy.json").provenance["search"]["episodes_run"] == 3
