"""The declared backend contract: capabilities with defaults, and how the core resolves the mode."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from haq_plugin import HaqError, QuantBackend, WEIGHTS_AND_ACTIVATIONS, WEIGHTS_ONLY, load_backend
from haq_plugin.api.layers import LayerSpec
from haq_plugin.api.plugins import CORE_SETTINGS
from haq_plugin.api.quantize_mode import resolve_quantize, use_quantize_mode
from haq_plugin.engine.settings import SearchSettings


class Plain(QuantBackend):
    name = "plain"

    def prepare(self, model, example_input, calibration_data, layers=None): ...
    def _apply_policy(self, bits): ...
    def _calibrate(self): ...
    model = None
    def export(self, policy, path): ...


class WeightsOnly(Plain):
    name = "weights-only"
    quantize_modes = (WEIGHTS_ONLY,)

    @property
    def quantize(self):
        return WEIGHTS_ONLY

    @quantize.setter
    def quantize(self, mode):
        if mode != WEIGHTS_ONLY:
            raise HaqError("weights only")


class OlderContract(Plain):
    name = "older"
    quantize = WEIGHTS_AND_ACTIVATIONS  # the contract before quantize_modes: an attribute means both modes


def test_defaults_are_declared_on_the_base_class():
    backend = Plain()
    layer = LayerSpec(name="fc", kind="linear", in_channels=10, out_channels=3)
    assert backend.quantize_modes == (WEIGHTS_AND_ACTIVATIONS,) and backend.quantize == WEIGHTS_AND_ACTIVATIONS
    assert not backend.supports_finetune and backend.supports_workers and backend.supports_device
    assert backend.weight_storage_bits(layer, 4) == 30 * 4 and backend.effective_act_bits() is None
    assert load_backend("torchao").supports_finetune and OlderContract.quantize_modes == ("weights+activations",
                                                                                          "weights")


def test_a_defaulted_mode_falls_back_with_one_line_and_a_chosen_one_is_refused(caplog):
    with caplog.at_level(logging.WARNING, "haq_plugin"):
        assert resolve_quantize(Plain(), WEIGHTS_ONLY, explicit=False) == WEIGHTS_AND_ACTIVATIONS
        assert resolve_quantize(WeightsOnly(), WEIGHTS_AND_ACTIVATIONS, explicit=False) == WEIGHTS_ONLY
    assert len(caplog.records) == 2
    with pytest.raises(HaqError, match=r"use --quantize weights\+activations"):
        resolve_quantize(Plain(), WEIGHTS_ONLY, explicit=True)
    with pytest.raises(HaqError, match="does not support quantize='weights'"):
        use_quantize_mode(Plain(), WEIGHTS_ONLY)


def test_the_settings_remember_whether_quantize_was_chosen():
    assert not SearchSettings(constraint="size").quantize_given
    assert not SearchSettings(constraint="size").replace(budget=0.3).quantize_given
    assert SearchSettings(constraint="size", quantize="weights").quantize_given


def test_core_settings_cover_every_search_setting():
    assert {f.name for f in dataclasses.fields(SearchSettings)} <= set(CORE_SETTINGS)
    with pytest.raises(HaqError, match="use --quantize weights"):
        load_backend("torchao", quantize="weights")
