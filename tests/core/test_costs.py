import numpy as np
import pytest
import torch

from haq_plugin import HaqError, LayerSpec, extract_layers, load_hardware
from haq_plugin.costs import build_cost_table
from haq_plugin.zoo import MobileNetV1


@pytest.fixture(scope="module")
def layers():
    return extract_layers(MobileNetV1(), torch.zeros(1, 3, 224, 224))[:6]


def test_table_matches_direct_simulation(layers):
    hw = load_hardware("bitfusion")
    table = build_cost_table(hw, layers, cache=False)
    assert table.bits == tuple(range(1, 9))
    for i, layer in enumerate(layers):
        for w, a in [(8, 8), (4, 2), (2, 8)]:
            cost = hw.layer_cost(layer, w, a)
            assert table.latency[i, table.index(w), table.index(a)] == cost.latency_s
            assert table.energy[i, table.index(w), table.index(a)] == cost.energy_j


def test_size_and_bops_are_hardware_independent(layers):
    table = build_cost_table(load_hardware("bismo-edge"), layers, cache=False)
    bits = [(8, 8), (4, 6), (2, 2), (3, 5), (8, 1), (6, 6)]
    assert table.policy_cost("size", bits) == sum(l.params * w / 8 for l, (w, _) in zip(layers, bits))
    assert table.policy_cost("bops", bits) == sum(l.macs * w * a for l, (w, a) in zip(layers, bits))
    with pytest.raises(HaqError, match="no energy model"):
        table.metric("energy")


def test_cache_round_trip_and_key(layers, tmp_path, monkeypatch):
    monkeypatch.setenv("HAQ_PLUGIN_CACHE", str(tmp_path))
    hw = load_hardware("bitfusion")
    cold = build_cost_table(hw, layers)
    warm = build_cost_table(hw, layers)
    assert not cold.from_cache and warm.from_cache
    np.testing.assert_array_equal(cold.latency, warm.latency)
    np.testing.assert_array_equal(cold.energy, warm.energy)
    other = build_cost_table(load_hardware("bitfusion", bandwidth_bits=64), layers)
    assert not other.from_cache  # options are part of the key
    assert other.uniform_cost("latency") > cold.uniform_cost("latency")


def test_lower_bits_cost_less_overall(layers):
    for name in ("bitfusion", "bitfusion-cloud", "bismo-edge", "bismo-cloud"):
        table = build_cost_table(load_hardware(name), layers, cache=False)
        costs = [table.uniform_cost("latency", b) for b in (8, 4, 2)]
        assert costs[0] > costs[1] > costs[2], name


def test_unsupported_bits_are_rejected():
    hw = load_hardware("bitfusion")
    layer = LayerSpec(name="fc", kind="linear", in_channels=64, out_channels=10)
    with pytest.raises(HaqError, match="does not support"):
        build_cost_table(hw, [layer], bits=[4, 16], cache=False)
