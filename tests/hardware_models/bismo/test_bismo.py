"""BISMO model: hand-computed counters, invariants, and validation against HAQ's published cloud table.

The reference is HAQ's MobileNet-V2 latency lookup table (batch 16, most likely
BISMO on the VU9P; units undocumented), so only unit-free figures are compared:
uniform-policy ratios to 8/8 bits and which bits drive each layer's cost.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch

from haq_plugin import HaqError, LayerSpec, extract_layers, load_hardware
from haq_plugin.tasks import zoo
from haq_plugin.hardware_models.bismo import (
    STAGES, BismoCloud, BismoEdge, classify_scaling, compare_to_reference, cost_surfaces, evaluate,
    format_comparison, lowerings,
)
from haq_plugin.api.plugins import get_plugin_manager
from tests.conftest import DATA

TABLE_PATH = DATA / "haq" / "qmobilenetv2_imagenet100_batch16_latency_table.npy"
RATIO_TOLERANCE = 0.02
"""Absolute tolerance on uniform 4/5/6-bit cost ratios (model vs table); measured error is <= 0.017."""


@pytest.fixture(scope="module")
def table() -> np.ndarray:
    return np.load(TABLE_PATH)


@pytest.fixture(scope="module")
def layers():
    return extract_layers(zoo.MobileNetV2(), torch.zeros(1, 3, 224, 224))


@pytest.fixture(scope="module")
def batched(table, layers):
    return compare_to_reference(table, BismoCloud(), layers)


@pytest.fixture(scope="module")
def per_sample(table, layers):
    return compare_to_reference(table, BismoCloud(batch_lowering="per-sample"), layers)


def conv(name: str, cin: int, cout: int, k: int, size: int, stride: int = 1, groups: int = 1) -> LayerSpec:
    return LayerSpec(name=name, kind="conv", in_channels=cin, out_channels=cout, kernel_size=k, stride=stride,
                     padding=k // 2, groups=groups, in_size=size)


# --- registration, configuration, peak -------------------------------------------------------------------


def test_both_configurations_register_through_the_entry_point():
    registry = get_plugin_manager().hardware
    assert registry.get("bismo-edge").cls is BismoEdge
    assert registry.get("bismo-cloud").cls is BismoCloud
    cloud = load_hardware("bismo-cloud")
    assert (cloud.config["dm"], cloud.config["dn"], cloud.config["batch"]) == (16, 16, 16)
    assert (cloud.config["axi_ports"], cloud.config["axi_width_bits"], cloud.config["bram_blocks"]) == (4, 256, 2160)
    edge = load_hardware("bismo-edge")
    assert (edge.config["dm"], edge.config["dn"], edge.config["batch"]) == (8, 8, 1)
    assert (edge.config["axi_ports"], edge.config["axi_width_bits"], edge.config["bram_blocks"]) == (4, 64, 140)
    for hw in (cloud, edge):
        assert all(opt.source for opt in hw.options)
        assert hw.has_energy is False and hw.supported_bits == tuple(range(1, 9))


def test_peak_of_the_pynq_z1_instance_is_6_55_binary_tops():
    pynq = BismoEdge(dm=8, dk=256, dn=8, frequency_mhz=200)
    assert pynq.peak_binary_ops_per_s == pytest.approx(2 * 8 * 256 * 8 * 200e6)
    assert pynq.peak_binary_ops_per_s == pytest.approx(6.5536e12)
    assert BismoCloud().peak_binary_ops_per_s == pytest.approx(2 * 16 * 256 * 16 * 250e6)


def test_operand_buffers_follow_the_bram_split():
    # 0.9 * 140 / 2 = 63 blocks per operand, 32 Kb of data each (36 Kb blocks used as 1024 x 32)
    assert BismoEdge().overlay.buffer_bits == 63 * 32 * 1024
    assert BismoCloud().overlay.buffer_bits == 972 * 32 * 1024


# --- hand-computed counters --------------------------------------------------------------------------------


def test_dense_1x1_conv_counters_by_hand():
    hw = BismoCloud()
    cost = hw.layer_cost(conv("expand", 16, 96, 1, 112), 8, 8)
    d = cost.details
    m = 16 * 112 * 112  # batch * pixels
    assert d["matrix_mkn"] == (m, 16, 96)
    assert d["compute_cycles"] == (m // 16) * 1 * (96 // 16) * 8 * 8
    assert d["activation_bits_read"] == m * 256 * 8  # each row padded to one Dk word per bit plane
    assert d["weight_bits_read"] == 96 * 256 * 8  # weights fit on chip: read once for the whole batch
    assert d["dram_bits_written"] == m * 96 * 8
    fill, drain = 16 * 256 * 8 / 256, 16 * 16 * 8 / 256
    assert d["cycles"] == d["compute_cycles"] + fill + drain
    assert d["bound"] == "compute"
    assert cost.latency_s == pytest.approx(d["cycles"] / 250e6)
    assert cost.energy_j is None
    assert d["dram_bits_read"] == d["activation_bits_read"] + d["weight_bits_read"]


def test_classifier_is_weight_traffic_bound():
    hw = BismoCloud()
    fc = LayerSpec(name="fc", kind="linear", in_channels=1280, out_channels=1000)
    d = hw.layer_cost(fc, 8, 8).details
    assert d["matrix_mkn"] == (16, 1280, 1000)
    assert d["weight_bits_read"] == 1008 * 1280 * 8  # 63 tiles of 16 output channels
    assert d["bound"] == "weights"
    # within 2%: the first activation stripe (pipeline fill) does not shrink with the weights
    assert hw.layer_cost(fc, 4, 8).latency_s == pytest.approx(hw.layer_cost(fc, 8, 8).latency_s / 2, rel=0.02)
    assert hw.layer_cost(fc, 8, 4).latency_s == pytest.approx(hw.layer_cost(fc, 8, 8).latency_s, rel=0.001)


def test_depthwise_packs_channels_block_diagonally_and_scales_with_activation_bits():
    hw = BismoCloud()
    dw = conv("dw", 32, 32, 3, 112, groups=32)
    d = hw.layer_cost(dw, 8, 8).details
    m = 16 * 112 * 112
    assert d["packed_groups"] == 16 and d["products"] == 2
    assert d["matrix_mkn"] == (m, 16 * 9, 16)
    assert d["activation_bits_read"] == 2 * m * 256 * 8
    assert d["bound"] == "activations"
    lat = lambda w, a: hw.layer_cost(dw, w, a).latency_s  # noqa: E731
    assert lat(1, 8) == pytest.approx(lat(8, 8), rel=0.001)
    assert lat(8, 4) == pytest.approx(lat(8, 8) / 2, rel=0.001)


def test_one_product_per_channel_is_what_packing_avoids():
    hw = BismoCloud()
    dw = conv("dw", 32, 32, 3, 112, groups=32)
    w = a = np.array([8])
    per_channel = lowerings(dw, 16, False, 256, 16)[0]
    assert per_channel.packed_groups == 1 and per_channel.products == 32
    naive = evaluate(hw.overlay, per_channel, w, a)["cycles"].min()
    assert naive > 10 * hw.layer_cost(dw, 8, 8).details["cycles"]


def test_per_sample_lowering_fetches_weights_once_per_image():
    layer = conv("late", 160, 960, 1, 7)
    batched = BismoCloud().layer_cost(layer, 8, 2).details
    per_sample = BismoCloud(batch_lowering="per-sample").layer_cost(layer, 8, 2).details
    assert per_sample["weight_bits_read"] == 16 * batched["weight_bits_read"]
    assert per_sample["weight_fetches"] == 16 and batched["weight_fetches"] == 1
    assert per_sample["bound"] == "weights" and batched["bound"] == "compute"


def test_small_buffers_split_k_and_write_32_bit_partial_sums():
    hw = BismoEdge(bram_blocks=20)  # 9 blocks per operand: 9 of the 98 K tiles fit twice at 8 bits
    fc = LayerSpec(name="fc6", kind="linear", in_channels=25088, out_channels=4096)
    d = hw.layer_cost(fc, 8, 8).details
    assert d["k_chunks"] == 11
    assert d["dram_bits_written"] == 11 * 32 * 8 * 4096
    assert d["weight_bits_read"] == 4096 * 11 * 9 * 256 * 8  # 11 balanced chunks of 9 Dk words
    big = BismoEdge(bram_blocks=280).layer_cost(fc, 8, 8).details  # 126 blocks: all 98 K tiles fit
    assert big["k_chunks"] == 1 and big["cycles"] < d["cycles"]


def test_mistakes_raise_clear_errors():
    with pytest.raises(HaqError, match="bram_blocks"):
        BismoEdge(bram_blocks=2)
    with pytest.raises(HaqError, match="batch_lowering"):
        load_hardware("bismo-cloud", batch_lowering="sideways")
    with pytest.raises(HaqError, match="9-bit"):
        BismoCloud().layer_cost(conv("c", 8, 8, 3, 8), 9, 8)
    with pytest.raises(HaqError, match="expected \\(53, 8, 8\\)"):
        compare_to_reference(np.ones((52, 8, 8)), BismoCloud(), [conv(f"c{i}", 8, 8, 3, 8) for i in range(53)])


# --- invariants over the zoo --------------------------------------------------------------------------------


@pytest.mark.parametrize("net", ["mobilenet_v2", "resnet50"])
def test_latency_is_monotone_in_both_bit_widths_and_edge_is_slower_per_sample(net):
    net_layers = extract_layers(zoo.ZOO[net](), torch.zeros(1, 3, 224, 224))
    edge, cloud = BismoEdge(), BismoCloud()
    e, c = cost_surfaces(edge, net_layers), cost_surfaces(cloud, net_layers)
    for s in (e, c):
        assert (np.diff(s, axis=1) >= 0).all() and (np.diff(s, axis=2) >= 0).all()
    per_sample_edge = e / edge.config["batch"]
    per_sample_cloud = c / cloud.config["batch"]
    assert (per_sample_edge > per_sample_cloud).all()
    d = cloud.layer_cost(net_layers[0], 8, 8).details
    assert d["bound"] in STAGES and 0 < d["array_utilization"] <= 1


def test_a_full_mobilenet_v2_table_has_every_bit_pair(layers):
    # build speed is measured by benchmarks/hardware.py, not asserted here
    surfaces = cost_surfaces(BismoCloud(), layers)
    assert surfaces.shape == (53, 8, 8)


# --- validation against HAQ's published table ---------------------------------------------------------------


def test_reference_rows_are_the_zoo_mobilenet_v2_layers_in_order(table, layers):
    assert table.shape == (len(layers), 8, 8) == (53, 8, 8)
    assert layers[0].describe() == "conv 3x3/2 3->32 @224x224"
    assert layers[-1].describe() == "linear 1280->1000"
    dw = [i for i, layer in enumerate(layers) if layer.is_depthwise]
    assert dw == [1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31, 34, 37, 40, 43, 46, 49]
    # the table's own rows agree: depthwise rows scale with activation bits, the last row with weight bits
    for probe in (8, 2):
        classes = classify_scaling(table.astype(float), probe)
        assert {classes[i] for i in dw} == {"activations"}
        assert classes[-1] == "weights"


def test_uniform_policy_ratios_match_the_table(batched, per_sample):
    print("\n" + format_comparison(batched))
    for result in (batched, per_sample):
        ref = result["uniform_ratio_reference"]
        assert [round(ref[b - 1], 3) for b in (4, 5, 6)] == [0.397, 0.528, 0.673]
        for b in (4, 5, 6):
            assert abs(result["uniform_ratio_model"][b - 1] - ref[b - 1]) <= RATIO_TOLERANCE
        assert max(result["uniform_ratio_error"]) <= RATIO_TOLERANCE


def test_which_bits_drive_each_layer_matches_the_table(batched, layers):
    high, low = batched["patterns"]["high"], batched["patterns"]["low"]
    assert high["agreement"] == 1.0  # all 53 layers at 8 -> 4 bits
    assert low["agreement"] >= 0.8  # 45 of 53 at 2 -> 1 bits; the rest are the per-sample weight re-fetches
    for i, layer in enumerate(layers):
        if layer.is_depthwise:
            assert high["model"][i] == low["model"][i] == "activations"
    assert high["model"][-1] == low["model"][-1] == "weights"
    assert batched["share_correlation"] > 0.95
    assert batched["surface_error"] < 0.03


def test_per_sample_lowering_reproduces_every_layers_pattern(per_sample, layers):
    print("\n" + format_comparison(per_sample))
    assert per_sample["patterns"]["high"]["agreement"] == 1.0
    assert per_sample["patterns"]["low"]["agreement"] == 1.0
    late_1x1 = [i for i, layer in enumerate(layers)
                if layer.kind == "conv" and layer.kernel_size == (1, 1) and layer.out_size == (7, 7)]
    assert late_1x1 == [41, 42, 44, 45, 47, 48, 50, 51]
    for i in late_1x1:  # weight bound at low activation bits: weights come again for each of the 16 images
        assert per_sample["patterns"]["low"]["reference"][i] == per_sample["patterns"]["low"]["model"][i]
        assert per_sample["patterns"]["low"]["model"][i] == "weights"
    assert per_sample["surface_error"] < 0.02


def test_raw_32_bit_results_would_contradict_the_table(table, layers):
    raw = compare_to_reference(table, BismoCloud(output_bits=32), layers)
    assert raw["uniform_ratio_error"][3] > 0.05  # 4 bits: writing accumulators dominates
