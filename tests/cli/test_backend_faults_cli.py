"""A backend's faults end a search like a hardware plugin's: one line naming plugin, distribution and method.

The faulty backend is a real installed distribution (``write_plugin_distribution``), found through
the entry points as a user's would be.  It raises, or returns a non-accuracy, after a given number
of calls of one method, so that finished episodes are in the checkpoint when it fails.
"""

from __future__ import annotations

import pytest

from tests.conftest import write_plugin_distribution
from tests.helpers import run_cli

FAULTY = """
from haq_plugin import QuantBackend, Option, hookimpl


class FaultyBackend(QuantBackend):
    name = "faulty"
    description = "fails on purpose in one method"
    options = (Option("fail_in", str, "none", help="the method that fails"),
               Option("answer", str, "raise", help="raise, or the accuracy evaluate returns: str, nan, none"),
               Option("after", int, 0, help="calls of fail_in that succeed first"))
    export_filename = "faulty.json"

    def __init__(self, **options):
        super().__init__(**options)
        self.calls = {}

    def _maybe_fail(self, method):
        self.calls[method] = self.calls.get(method, 0) + 1
        if method == self.config["fail_in"] and self.calls[method] > self.config["after"]:
            if method != "evaluate" or self.config["answer"] == "raise":
                raise RuntimeError(f"boom in {method}")
            return True
        return False

    def prepare(self, model, example_input, calibration_data, layers=None):
        self._maybe_fail("prepare")
        self.use_layers(model, example_input, layers)
        self._model = model

    def _apply_policy(self, bits):
        self._maybe_fail("set_policy")

    def _calibrate(self):
        self._maybe_fail("calibrate")

    def _finetune(self, train_data, steps, lr):
        self._maybe_fail("finetune")

    @property
    def model(self):
        return self._model

    def evaluate(self, eval_fn):
        accuracy = super().evaluate(eval_fn)
        if self._maybe_fail("evaluate"):
            return {"str": "90", "nan": float("nan"), "none": None}[self.config["answer"]]
        return accuracy

    def export(self, policy, path):
        self._maybe_fail("export")
        path = self.export_path(path)
        path.write_text("{}")
        return path


@hookimpl
def haq_quant_backends():
    return [FaultyBackend]
"""


@pytest.fixture(scope="module")
def faulty_site(tmp_path_factory):
    return write_plugin_distribution(tmp_path_factory.mktemp("faulty") / "site", "haqtest-faulty",
                                     "haqtest_faulty", FAULTY, {"faulty": "haqtest_faulty"})


def search(site, out, *options, episodes=3):
    return run_cli("search", "--backend", "faulty", "--hw", "bitfusion", "--episodes", str(episodes),
                   "--output", str(out), "--quiet", *options, path=(site,))


def fault_lines(stderr):
    return [line for line in stderr.splitlines() if "haqtest-faulty 1.0" in line]


@pytest.mark.parametrize("method, after, answer, said", [
    ("prepare", 0, "raise", "failed in prepare(): raised RuntimeError: boom in prepare"),
    ("set_policy", 3, "raise", "failed in set_policy(): raised RuntimeError: boom in set_policy"),
    ("calibrate", 3, "raise", "failed in calibrate(): raised RuntimeError: boom in calibrate"),
    ("finetune", 3, "raise", "failed in finetune(): raised RuntimeError: boom in finetune"),
    ("evaluate", 3, "raise", "failed in evaluate(): raised RuntimeError: boom in evaluate"),
    ("evaluate", 3, "str", "failed in evaluate(): returned '90' (str), not an accuracy"),
    ("evaluate", 3, "nan", "failed in evaluate(): returned NaN, not an accuracy"),
    ("evaluate", 3, "none", "failed in evaluate(): returned None (NoneType), not an accuracy"),
    ("export", 0, "raise", "failed in export(): raised RuntimeError: boom in export"),
])
def test_a_backend_fault_is_one_line_naming_the_distribution_and_exit_2(faulty_site, tmp_path, method, after,
                                                                        answer, said):
    out = tmp_path / "out"
    extra = ("--finetune-steps", "1") if method == "finetune" else ()
    proc = search(faulty_site, out, "--backend-option", f"fail_in={method}", "--backend-option",
                  f"after={after}", "--backend-option", f"answer={answer}", *extra)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = fault_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert "backend 'faulty' of plugin 'faulty' (from haqtest-faulty 1.0)" in lines[0] and said in lines[0]
    if method not in ("prepare",):
        assert (out / "checkpoint.pt").is_file(), proc.stderr  # the finished episodes are resumable


def test_a_backend_option_named_like_a_core_setting_is_refused_with_the_core_option(faulty_site, tmp_path):
    proc = search(faulty_site, tmp_path / "out", "--backend-option", "quantize=weights")
    assert proc.returncode == 2
    assert "use --quantize weights" in proc.stderr and "Traceback" not in proc.stderr


def test_size_search_without_weight_only_mode_falls_back_with_one_line(faulty_site, tmp_path):
    proc = search(faulty_site, tmp_path / "out", "--constraint", "size", episodes=2)
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "has no quantize='weights' mode" in line]
    assert len(notes) == 1 and "--quantize weights+activations" in notes[0]


def test_explicit_weight_only_on_a_backend_without_it_is_refused_naming_the_option(faulty_site, tmp_path):
    proc = search(faulty_site, tmp_path / "out", "--constraint", "size", "--quantize", "weights")
    assert proc.returncode == 2
    assert "does not support quantize='weights'" in proc.stderr and "--quantize weights+activations" in proc.stderr
