"""torchao's ``weight_range`` option: min-max or MSE-clipped weight ranges, and the exported file keeps it."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from haq_plugin.adapters.torchao import (TorchaoPt2eBackend, export_for_quantization, load_quantize_config,
                                         load_quantizer)
from haq_plugin.adapters.torchao.quantizer import WEIGHT_OBSERVERS, LayerBitsQuantizer, layer_fake_quants
from tests.adapters.outliers import (BITS, CALIBRATION, EXAMPLE, OutlierNet, assert_clipped_range,
                                     assert_minmax_range, assert_refuses_an_unknown_weight_range,
                                     export_policy)

from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")]
LO, HI = -2, 1  # 2-bit full-range weights


def conv_fake_quant(weight_range: str):
    """The backend and the conv's weight fake quantizer after a 2-bit policy is set and calibrated."""
    backend = TorchaoPt2eBackend(weight_range=weight_range)
    backend.prepare(OutlierNet().eval(), EXAMPLE, CALIBRATION)
    backend.set_policy(BITS)
    backend.calibrate()
    (fq,) = layer_fake_quants(backend.model)["conv"].weights
    return backend, fq


@pytest.mark.parametrize("weight_range, check", [("minmax", assert_minmax_range), ("mse", assert_clipped_range)])
def test_minmax_spans_each_channels_extremes_and_mse_narrows_the_outliers_channel(weight_range, check):
    _, fq = conv_fake_quant(weight_range)
    assert type(fq.activation_post_process) is WEIGHT_OBSERVERS[weight_range]
    check(fq.scale, LO, HI)


@pytest.mark.parametrize("weight_range", ["minmax", "mse"])
def test_the_exported_quantizer_rebuilds_the_measured_weight_range(weight_range, tmp_path):
    model = OutlierNet().eval()
    backend, searched = conv_fake_quant(weight_range)
    path, data = export_policy(backend, tmp_path / "q.json")
    assert data["weight_range"] == weight_range
    quantizer = load_quantizer(path, model=model, example_input=EXAMPLE)
    assert quantizer.weight_range == weight_range
    qat = prepare_qat_pt2e(export_for_quantization(model, EXAMPLE), quantizer)
    (fq,) = layer_fake_quants(qat)["conv"].weights
    assert type(fq.activation_post_process) is WEIGHT_OBSERVERS[weight_range]
    qat(CALIBRATION[0])
    assert torch.allclose(fq.scale, searched.scale)


def test_files_without_the_field_read_as_minmax_and_the_recipe_says_when_it_differs(tmp_path, caplog):
    model = OutlierNet().eval()
    backend, _ = conv_fake_quant("mse")
    path, _ = export_policy(backend, tmp_path / "q.json")
    with caplog.at_level(logging.WARNING, logger="haq_plugin.adapters.torchao"):
        load_quantize_config(path)
    assert "weight_range=mse; load_quantizer(path) reproduces" in caplog.text
    data = json.loads(path.read_text())
    del data["weight_range"]
    path.write_text(json.dumps(data))
    assert load_quantizer(path).weight_range == "minmax"


def test_an_unknown_weight_range_is_refused_with_the_choices():
    assert_refuses_an_unknown_weight_range(TorchaoPt2eBackend)


def test_the_default_is_the_measured_mse():
    """benchmarks/RESULTS.md section 11: mse searched as well as minmax on the demo and better on the peer workload."""
    assert TorchaoPt2eBackend().config["weight_range"] == LayerBitsQuantizer({}).weight_range == "mse"
