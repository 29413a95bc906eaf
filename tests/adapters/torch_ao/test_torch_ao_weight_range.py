"""torch.ao's ``weight_range`` option: min-max or MSE-clipped weight ranges, and the exported file keeps it."""

from __future__ import annotations

import json

import pytest
import torch
from torch.ao.quantization.quantize_fx import prepare_qat_fx

from haq_plugin.adapters.torch_ao import TorchAoFxBackend, backend_config, load_qconfig_mapping
from haq_plugin.adapters.torch_ao.qconfig import MinMaxSymmetricObserver, WEIGHT_OBSERVERS
from tests.adapters.outliers import (BITS, CALIBRATION, EXAMPLE, OutlierNet, assert_clipped_range,
                                     assert_minmax_range, assert_refuses_an_unknown_weight_range,
                                     export_policy)

pytestmark = [pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated"),
              pytest.mark.usefixtures("one_thread")]
LO, HI = -2, 1  # 2-bit full-range weights


def conv_fake_quant(weight_range: str, mode: str = "auto"):
    """The conv's weight fake quantizer after a 2-bit policy is set and calibrated."""
    backend = TorchAoFxBackend(weight_range=weight_range, mode=mode)
    backend.prepare(OutlierNet().eval(), EXAMPLE, CALIBRATION)
    backend.set_policy(BITS)
    backend.calibrate()
    return backend, backend.model.get_submodule("conv").weight_fake_quant


@pytest.mark.parametrize("mode", ["fx", "eager"])
def test_minmax_puts_every_channels_extremes_on_the_ends_of_the_grid(mode):
    _, fq = conv_fake_quant("minmax", mode)
    assert isinstance(fq.activation_post_process, MinMaxSymmetricObserver)
    assert_minmax_range(fq.scale, LO, HI)


def test_mse_narrows_the_range_of_a_channel_with_an_outlier():
    _, fq = conv_fake_quant("mse")
    assert_clipped_range(fq.scale, LO, HI)


def test_an_unknown_weight_range_is_refused_with_the_choices():
    assert_refuses_an_unknown_weight_range(TorchAoFxBackend)


@pytest.mark.parametrize("weight_range", ["minmax", "mse"])
def test_the_exported_mapping_rebuilds_the_measured_weight_range(weight_range, tmp_path):
    backend, searched = conv_fake_quant(weight_range)
    path, data = export_policy(backend, tmp_path / "q.json")
    assert data["weight_range"] == weight_range
    model = OutlierNet().eval()
    for mapping in (load_qconfig_mapping(path, model, EXAMPLE), load_qconfig_mapping(path)):
        qat = prepare_qat_fx(OutlierNet().train(), mapping, (EXAMPLE,), backend_config=backend_config())
        fq = qat.get_submodule("conv").weight_fake_quant
        assert type(fq.activation_post_process) is WEIGHT_OBSERVERS[weight_range]
        qat.eval()(CALIBRATION[0])
        assert torch.allclose(fq.scale, searched.scale)


def test_files_without_the_field_read_as_the_clipped_ranges_they_were_measured_with(tmp_path):
    model = OutlierNet().eval()
    backend, _ = conv_fake_quant("mse")
    path, data = export_policy(backend, tmp_path / "q.json")
    del data["weight_range"]
    path.write_text(json.dumps(data))
    qat = prepare_qat_fx(OutlierNet().train(), load_qconfig_mapping(path, model, EXAMPLE), (EXAMPLE,),
                         backend_config=backend_config())
    assert type(qat.get_submodule("conv").weight_fake_quant.activation_post_process) is WEIGHT_OBSERVERS["mse"]


def test_the_default_stays_mse_as_measured():
    """benchmarks/RESULTS.md section 11: mse searched as well as minmax on the demo and better on the peer workload."""
    assert TorchAoFxBackend().config["weight_range"] == "mse"
