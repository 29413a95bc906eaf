"""``--workers``, ``--ray-address`` and ``--device`` on the command line, as a user runs them."""

from __future__ import annotations

import csv
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from haq_plugin.api.policy import Policy
from tests.helpers import CLI, cli_env, run_cli, start_cli

DEMO = ["search", "--backend", "torch.ao", "--hw", "bitfusion", "--warmup-episodes", "2", "--quiet"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_demo_search_on_two_ray_workers_stops_on_ctrl_c_and_resumes(tmp_path):
    """The whole path on a local Ray: start, Ctrl-C (actors stopped), resume (on the CPU), policy."""
    out = tmp_path / "interrupted"
    proc = start_cli(*DEMO, "--episodes", "16", "--workers", "2", "--output", str(out))
    deadline = time.time() + 180
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert f"haq-plugin search --resume {out}" in stderr and "Traceback" not in stderr
    assert not _running_actors(), "Ctrl-C left Ray evaluation actors running"
    resumed = run_cli("search", "--resume", str(out), "--device", "cpu", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    with open(out / "episodes.csv") as handle:
        assert [int(row["episode"]) for row in csv.DictReader(handle)] == list(range(16))
    policy = Policy.load(out / "policy.json")
    assert policy.provenance["search"]["workers"] == 2 and policy.provenance["achieved"]["cost_fraction"] <= 0.5
    assert not _running_actors(), "a finished search left Ray evaluation actors running"


def _running_actors(wait_s: float = 15.0) -> bool:
    """Whether a Ray evaluation actor process is still alive after ``wait_s`` seconds."""
    deadline = time.time() + wait_s
    while time.time() < deadline:
        found = subprocess.run(["pgrep", "-f", "ray::EvaluationActor"], capture_output=True, text=True)
        if not found.stdout.strip():
            return False
        time.sleep(0.5)
    return True


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "workers must be an integer >= 1"),
    (["--device", "tpu"], "not one of auto, cpu, cuda or cuda:N"),
])
def test_bad_placement_options_are_refused(tmp_path, args, message):
    proc = run_cli(*DEMO, *args, "--output", str(tmp_path / "x"))
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_device_cuda_without_cuda_is_refused_before_any_work(tmp_path):
    proc = run_cli(*DEMO, "--device", "cuda", "--output", str(tmp_path / "x"))
    assert proc.returncode == 2 and "CUDA is not available" in proc.stderr and "--device cpu" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_a_ray_address_where_nothing_listens_is_refused_quickly(tmp_path):
    port = closed_port()
    started = time.time()
    proc = run_cli(*DEMO, "--episodes", "2", "--workers", "2", "--ray-address", f"127.0.0.1:{port}",
                   "--output", str(tmp_path / "x"))
    assert proc.returncode == 2 and f"127.0.0.1:{port}: no Ray cluster answers there" in proc.stderr, proc.stderr
    assert time.time() - started < 120


def test_workers_without_ray_installed_give_the_install_command(tmp_path):
    hide_ray = ("import sys; sys.modules['ray'] = None; from haq_plugin.cli import main; "
                "main(sys.argv[1:])")
    proc = subprocess.run([sys.executable, "-c", hide_ray, *DEMO, "--workers", "2", "--output", str(tmp_path)],
                          capture_output=True, text=True, env=cli_env(), timeout=300)
    assert proc.returncode == 2 and 'pip install torch==2.13.0 -e ".[ray]"' in proc.stderr, proc.stderr
    assert CLI  # the same interpreter as every other CLI test
