"""User mistakes in --model and --data, made through the command line as a user makes them.

Each case writes a small module of the user's own into a temporary directory and
runs ``haq-plugin`` in a fresh interpreter from that directory, so the module is
imported exactly as a user's would be.  Every case must end with exit status 2,
one ``Error:`` paragraph naming what was wrong, and no traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

USER_MODULE = """
import torch
from torch import nn


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        raise ValueError("my forward is broken")


def broken():
    return Broken()


def conv():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))


def dense():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def not_a_module():
    return {"weights": 1}


def x(n=4):
    return torch.rand(n, 3, 8, 8)


def y(n=4):
    return torch.arange(n) % 10


def data_ok():
    return {"calibration_data": [x()], "val_data": [(x(), y())]}


def data_42():
    return 42


def data_raises():
    raise RuntimeError("dataset server unreachable")


def data_not_iterable():
    return {"calibration_data": 7, "val_data": [(x(), y())]}


def data_empty_calibration():
    return {"calibration_data": [], "val_data": [(x(), y())]}


def data_empty_validation():
    return {"calibration_data": [x()], "val_data": []}

"""


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory) -> Path:
    """A directory holding the user's module ``mymod``, as a user's project would."""
    root = tmp_path_factory.mktemp("user-project")
    (root / "mymod.py").write_text(textwrap.dedent(USER_MODULE))
    return root


def haq(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``haq-plugin ARGS`` run from ``cwd`` in a fresh interpreter (HAQ_PLUGIN_CACHE is the test's)."""
    return subprocess.run([sys.executable, "-m", "haq_plugin.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=dict(os.environ), timeout=300)


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


def conv_layers(user_dir: Path) -> list:
    """The layers of the user's ``mymod:conv`` on its example input, imported as the CLI imports it."""
    from haq_plugin import extract_layers

    sys.path.insert(0, str(user_dir))
    try:
        import mymod
        return extract_layers(mymod.conv(), mymod.x(1))
    finally:
        sys.path.remove(str(user_dir))
        sys.modules.pop("mymod", None)


@pytest.mark.parametrize("model, shape, fragments", [
    ("mymod:broken", "1,4", ["forward pass failed on the example input (shape 1x4)",
                             "ValueError: my forward is broken"]),
    ("mymod:conv", "1,1,8,8", ["forward pass failed on the example input (shape 1x1x8x8)",
                               "expected input[1, 1, 8, 8] to have 3 channels, but got 1 channels",
                               "--input-shape"]),
    ("mymod:dense", "1,1,8,4", ["forward pass failed on the example input (shape 1x1x8x4)",
                                "mat1 and mat2 shapes cannot be multiplied (1x32 and 64x10)"]),
    ("mymod:not_a_module", "1,3,8,8", ["returned dict; expected an nn.Module"]),
])
def test_a_model_that_fails_on_the_example_input(user_dir, model, shape, fragments):
    assert_user_error(haq("layers", "--model", model, "--input-shape", shape, cwd=user_dir), *fragments)


def test_cost_and_search_report_the_failing_forward_too(user_dir, tmp_path):
    shape = ("--input-shape", "1,1,8,8")
    expected = "forward pass failed on the example input (shape 1x1x8x8)"
    assert_user_error(haq("cost", "--model", "mymod:conv", *shape, cwd=user_dir), expected)
    proc = haq("search", "--model", "mymod:conv", *shape, "--data", "mymod:data_ok",
               "--output", str(tmp_path / "out"), "--quiet", cwd=user_dir)
    assert_user_error(proc, expected)


@pytest.mark.parametrize("data, fragments", [
    ("mymod:data_42", ["--data 'mymod:data_42' returned int 42; expected a dict"]),
    ("mymod:data_raises", ["the callable raised RuntimeError: dataset server unreachable"]),
    ("mymod:data_not_iterable", ["calibration_data must be an iterable of batches", "got int 7"]),
    ("mymod:data_empty_calibration", ["calibration_data is empty"]),
    ("mymod:data_empty_validation", ["val_data is empty"]),
])
def test_data_callables_that_misbehave_are_refused_before_any_work(user_dir, tmp_path, data, fragments):
    proc = haq("search", "--model", "mymod:conv", "--input-shape", "1,3,8,8", "--data", data,
               "--output", str(tmp_path / "out"), "--quiet", cwd=user_dir)
    assert_user_error(proc, *fragments)
    assert not (tmp_path / "out" / "policy.json").exists()


def test_a_module_that_is_not_importable_from_here_says_where_to_run(user_dir, tmp_path):
    proc = haq("layers", "--model", "mymod:conv", "--input-shape", "1,3,8,8", cwd=tmp_path)
    assert_user_error(proc, "cannot import module 'mymod'", f"importable from the current directory ({tmp_path})",
                      "PYTHONPATH", "directory the search was started in")
    assert haq("layers", "--model", "mymod:conv", "--input-shape", "1,3,8,8", cwd=user_dir).returncode == 0


def test_binary_and_deeply_nested_policy_files(user_dir, tmp_path):
    binary = tmp_path / "policy.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    model = ("--model", "mymod:conv", "--input-shape", "1,3,8,8")
    assert_user_error(haq("cost", *model, "--policy", str(binary), cwd=user_dir), "is not a text file")
    nested = tmp_path / "nested.json"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    assert_user_error(haq("cost", *model, "--policy", str(nested), cwd=user_dir), "nested too deeply")


def test_a_policy_from_another_model_names_the_model_it_was_searched_on(user_dir, tmp_path):
    from haq_plugin.api.policy import Policy

    layers = conv_layers(user_dir)
    path = Policy.uniform(layers, 4, 4, task={"model": "mymod:conv", "input_shape": "1,3,8,8"}).save(
        tmp_path / "policy.json")
    proc = haq("export", "--policy", str(path), "--backend", "torch.ao", "-o", str(tmp_path / "q.json"),
               cwd=user_dir)
    assert_user_error(proc, "searched on a different model (--model mymod:conv --input-shape 1,3,8,8)",
                      "pass --model mymod:conv --input-shape 1,3,8,8")


def test_cost_of_a_policy_with_a_width_the_hardware_lacks_names_the_layer(user_dir, tmp_path):
    from haq_plugin.api.policy import Policy

    layers = conv_layers(user_dir)
    bits = {layers[0].name: (8, 8), layers[1].name: (8, 12)}  # a valid width (1..16), beyond the hardware's 8
    path = Policy.from_bits(layers, bits).save(tmp_path / "policy.json")
    model = ("--model", "mymod:conv", "--input-shape", "1,3,8,8")
    for hw in ("bismo-edge", "bitfusion"):
        proc = haq("cost", *model, "--hw", hw, "--policy", str(path), cwd=user_dir)
        assert_user_error(proc, f"'{hw}' does not support 12-bit activations (layer '{layers[1].name}')",
                          "supported bit widths: 1, 2, 3, 4, 5, 6, 7, 8")
