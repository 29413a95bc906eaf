"""Brevitas' ``weight_range`` option (alias ``clip_weights``): min-max or MSE-clipped weight scales, kept on export."""

from __future__ import annotations

import json

import pytest
import torch

from haq_plugin import HaqError
from haq_plugin.adapters.brevitas import BrevitasBackend, apply_policy
from tests.adapters.outliers import (BITS, CALIBRATION, EXAMPLE, OutlierNet, assert_clipped_range,
                                     assert_minmax_range, assert_refuses_an_unknown_weight_range,
                                     export_policy)

pytestmark = pytest.mark.usefixtures("one_thread")
LO, HI = -1, 1  # 2-bit narrow-range weights: ternary


def prepared(**options) -> BrevitasBackend:
    """A backend on the outlier model with a 2-bit conv, calibrated."""
    backend = BrevitasBackend(**options)
    backend.prepare(OutlierNet().eval(), EXAMPLE, CALIBRATION)
    backend.set_policy(BITS)
    backend.calibrate()
    return backend


def conv_scale(model: torch.nn.Module) -> torch.Tensor:
    """The per-output-channel weight scale Brevitas quantizes the conv with."""
    return model.get_submodule("conv").quant_weight().scale.detach().flatten()


def test_minmax_puts_every_channels_largest_weight_on_the_end_of_the_grid():
    assert_minmax_range(conv_scale(prepared(weight_range="minmax").model), LO, HI)


def test_mse_narrows_the_range_of_a_channel_with_an_outlier():
    assert_clipped_range(conv_scale(prepared(weight_range="mse").model), LO, HI)


def test_an_unknown_weight_range_is_refused_with_the_choices():
    assert_refuses_an_unknown_weight_range(BrevitasBackend)


@pytest.mark.parametrize("clip, weight_range", [(True, "mse"), (False, "minmax")])
def test_clip_weights_is_an_alias_stored_as_weight_range(clip, weight_range):
    for backend in (BrevitasBackend(clip_weights=clip), BrevitasBackend(clip_weights=str(clip).lower()),
                    BrevitasBackend(clip_weights=clip, weight_range=weight_range)):
        assert backend.config["weight_range"] == weight_range and backend.config["clip_weights"] is None
        assert backend.clip_weights is clip
    backend = BrevitasBackend()
    backend.clip_weights = clip
    assert backend.config["weight_range"] == weight_range


def test_contradictory_clip_weights_and_weight_range_are_refused():
    with pytest.raises(HaqError, match=r"clip_weights=True means weight_range=mse, which contradicts "
                                       r"weight_range=minmax; give only weight_range"):
        BrevitasBackend(clip_weights=True, weight_range="minmax")


@pytest.mark.parametrize("weight_range", ["minmax", "mse"])
def test_the_exported_policy_rebuilds_the_measured_weight_range(weight_range, tmp_path):
    model = OutlierNet().eval()
    backend = prepared(weight_range=weight_range)
    path, data = export_policy(backend, tmp_path / "p.json")
    quantizers = data["quantizers"]
    assert (quantizers["weight_range"], quantizers["clip_weights"]) == (weight_range, weight_range == "mse")
    applied = apply_policy(model, path, calibration_data=CALIBRATION).eval()
    assert torch.allclose(conv_scale(applied), conv_scale(backend.model))


def test_older_files_with_clip_weights_only_read_as_that_weight_range(tmp_path):
    model = OutlierNet().eval()
    backend = prepared(weight_range="mse")
    path, data = export_policy(backend, tmp_path / "p.json")
    del data["quantizers"]["weight_range"]
    path.write_text(json.dumps(data))
    applied = apply_policy(model, path, calibration_data=CALIBRATION).eval()
    assert torch.allclose(conv_scale(applied), conv_scale(backend.model))
    data["quantizers"].update(weight_range="minmax", clip_weights=True)
    path.write_text(json.dumps(data))
    with pytest.raises(HaqError, match="field 'quantizers': .*contradicts weight_range=minmax"):
        apply_policy(model, path)
