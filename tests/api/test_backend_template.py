"""The per-episode guards live once in QuantBackend: a backend writes only the hooks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from haq_plugin import HaqError, QuantBackend


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x), 1))


class HookBackend(QuantBackend):
    """Only the framework part: records what the base class calls."""

    name = "hooks"

    def __init__(self, **options):
        super().__init__(**options)
        self.calls: list[str] = []

    def prepare(self, model, example_input, calibration_data, layers=None):
        self.use_layers(model, example_input, layers)
        self._model = model

    def _apply_policy(self, bits):
        self.calls.append(f"apply {sorted(set(bits.values()))}")

    def _calibrate(self):
        self.calls.append("calibrate")

    @property
    def model(self):
        return self._model

    def export(self, policy, path):
        return path


class LegacyBackend(HookBackend):
    """Written against the earlier contract: overrides the public methods, not the hooks."""

    def set_policy(self, bits):
        self.check_bits(bits)
        self.calls.append("own set_policy")

    def calibrate(self):
        self.calls.append("own calibrate")


@pytest.fixture
def prepared():
    def make(cls):
        backend = cls()
        backend.prepare(Net(), torch.zeros(1, 1, 8, 8), [torch.zeros(1, 1, 8, 8)])
        return backend
    return make


def eight(backend, w=8):
    return {name: (w, 8) for name in backend.layer_names}


@pytest.mark.parametrize("call", [lambda b: b.set_policy({}), lambda b: b.calibrate(),
                                  lambda b: b.evaluate(lambda m: 1.0)])
def test_every_per_episode_method_needs_prepare(call):
    with pytest.raises(HaqError, match="call prepare"):
        call(HookBackend())


def test_set_policy_checks_the_bits_before_the_hook(prepared):
    backend = prepared(HookBackend)
    with pytest.raises(HaqError, match="fc"):
        backend.set_policy({"conv": (4, 4)})
    assert backend.calls == []
    backend.set_policy(eight(backend, 4))
    assert backend.calls == ["apply [(4, 8)]"] and backend.bits == eight(backend, 4)


def test_evaluate_calibrates_a_new_policy_once(prepared):
    backend = prepared(HookBackend)
    backend.set_policy(eight(backend))
    assert backend.evaluate(lambda model: 50.0) == 50.0
    assert backend.evaluate(lambda model: 60.0) == 60.0
    assert backend.calls == ["apply [(8, 8)]", "calibrate"]


def test_finetune_without_support_is_refused_and_zero_steps_do_nothing(prepared):
    backend = prepared(HookBackend)
    backend.finetune([], 0)
    with pytest.raises(HaqError, match="does not support finetuning"):
        backend.finetune([], 3)
    assert backend.calls == []


def test_a_backend_overriding_the_public_methods_keeps_working(prepared):
    backend = prepared(LegacyBackend)
    backend.set_policy(eight(backend))
    backend.evaluate(lambda model: 1.0)  # not calibrated yet: its own calibrate runs
    backend.calibrate()
    backend.evaluate(lambda model: 1.0)
    assert backend.calls == ["own set_policy", "own calibrate", "own calibrate"]


def test_a_backend_without_the_hooks_cannot_be_instantiated():
    class Incomplete(QuantBackend):
        name = "incomplete"

        def prepare(self, model, example_input, calibration_data, layers=None):
            pass

        model = None

        def export(self, policy, path):
            return path

    with pytest.raises(TypeError, match="_apply_policy"):
        Incomplete()
