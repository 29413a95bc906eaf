"""``llm-decode``: weight bytes with group scales, both roofs, presets, option errors, discovery and the CLI."""

import json
from pathlib import Path

import pytest

from haq_plugin import HaqError, LayerSpec, load_hardware
from haq_plugin.engine.costs import build_cost_table
from tests.helpers import run_cli

HERE = Path(__file__).parent

# SmolLM2-135M's gate_proj/up_proj: 576 -> 1536, 884,736 weights.
GATE = LayerSpec(name="gate_proj", kind="linear", in_channels=576, out_channels=1536)
# 4-bit, groups of 64: 884736 * 4/8 = 442,368 B of weights + 1536 rows * 9 groups * 4 B = 55,296 B.
GATE_4BIT_G64_BYTES = 497_664
# 2-bit, one group per output channel: 221,184 B + 1536 * 4 B = 6,144 B.
GATE_2BIT_PER_CHANNEL_BYTES = 227_328


def test_bytes_of_a_576x1536_linear_at_4_bit_g64_and_2_bit_per_channel():
    hw = load_hardware("llm-decode")
    cost = hw.layer_cost(GATE, 4, 16)
    assert cost.details["bytes"] == GATE_4BIT_G64_BYTES
    assert cost.details["groups"] == 13_824
    per_channel = load_hardware("llm-decode", group_size=0)
    assert per_channel.layer_cost(GATE, 2, 16).details["bytes"] == GATE_2BIT_PER_CHANNEL_BYTES
    # float16 weights: two bytes each, no scales
    assert hw.layer_cost(GATE, 16, 16).details["bytes"] == 1_769_472


def test_a_group_size_that_does_not_divide_in_features_leaves_a_shorter_last_group():
    hw = load_hardware("llm-decode", group_size=7)
    cost = hw.layer_cost(GATE, 4, 8)
    assert cost.details["groups"] == 1536 * 83  # ceil(576 / 7) = 83
    assert cost.details["bytes"] == 442_368 + 1536 * 83 * 4


def test_memory_bound_latency_is_bytes_over_bandwidth():
    hw = load_hardware("llm-decode")  # ddr5-desktop: 89.6 GB/s, 1024 GOP/s
    cost = hw.layer_cost(GATE, 4, 8)
    assert cost.details["bound"] == "memory"
    assert cost.latency_s == pytest.approx(GATE_4BIT_G64_BYTES / 89.6e9, rel=1e-12)
    assert cost.latency_s == pytest.approx(5.5542857e-06, rel=1e-7)
    assert cost.details["compute_s"] == pytest.approx(2 * 884_736 / 1024e9, rel=1e-12)
    # energy: DRAM reads only, 160 pJ per byte
    assert cost.energy_j == pytest.approx(GATE_4BIT_G64_BYTES * 160e-12, rel=1e-12)


def test_compute_bound_latency_is_operations_over_peak():
    hw = load_hardware("llm-decode", bandwidth_gbps=1e6, peak_gops=1.0)
    cost = hw.layer_cost(GATE, 4, 8)
    assert cost.details["bound"] == "compute"
    assert cost.latency_s == pytest.approx(2 * 884_736 / 1e9, rel=1e-12)  # 1.769472 ms
    # a batch of 64 sequences multiplies the arithmetic, not the weight bytes
    batched = load_hardware("llm-decode", batch=64).layer_cost(GATE, 4, 8)
    assert batched.details["bytes"] == GATE_4BIT_G64_BYTES
    assert batched.details["bound"] == "compute"
    assert batched.latency_s == pytest.approx(64 * 2 * 884_736 / 1024e9, rel=1e-12)


def test_halving_the_bits_scales_latency_by_the_bits_per_weight_with_scales():
    hw = load_hardware("llm-decode")
    eight, four = hw.layer_cost(GATE, 8, 8).latency_s, hw.layer_cost(GATE, 4, 8).latency_s
    # 0.5 bits per weight of scales on top: (4 + 0.5) / (8 + 0.5)
    assert four / eight == pytest.approx(4.5 / 8.5, rel=1e-12)
    per_channel = load_hardware("llm-decode", group_size=0, scale_bits=0)
    assert per_channel.layer_cost(GATE, 4, 8).latency_s / per_channel.layer_cost(GATE, 8, 8).latency_s == 0.5


def test_efficiency_and_overhead():
    hw = load_hardware("llm-decode", efficiency=0.5, layer_overhead_us=3.0)
    assert hw.layer_cost(GATE, 4, 8).latency_s == pytest.approx(GATE_4BIT_G64_BYTES / 44.8e9 + 3e-6, rel=1e-12)


def test_activation_bits_do_not_change_the_cost_and_batching_matches_single_calls():
    hw = load_hardware("llm-decode")
    pairs = [(w, a) for w in hw.supported_bits for a in (2, 8, 16)]
    batched = hw.layer_costs(GATE, pairs)
    assert [c.latency_s for c in batched] == [hw.layer_cost(GATE, w, a).latency_s for w, a in pairs]
    assert hw.layer_cost(GATE, 3, 2).latency_s == hw.layer_cost(GATE, 3, 16).latency_s


@pytest.mark.parametrize("preset, bandwidth, peak", [
    ("raspberry-pi-5", 17.068, 153.6), ("apple-m2", 100.0, 3600.0), ("jetson-orin-nano", 68.0, 1280.0),
    ("ddr5-desktop", 89.6, 1024.0), ("rtx-4090", 1008.0, 82600.0), ("h100-sxm", 3350.0, 67000.0),
])
def test_presets_give_the_documented_figures(preset, bandwidth, peak):
    hw = load_hardware("llm-decode", preset=preset)
    assert (hw.config["bandwidth_gbps"], hw.config["peak_gops"]) == (bandwidth, peak)
    assert hw.layer_cost(GATE, 4, 16).latency_s == pytest.approx(GATE_4BIT_G64_BYTES / (bandwidth * 1e9))


def test_the_default_is_the_desktop_preset_and_options_override_a_preset():
    assert load_hardware("llm-decode").config == load_hardware("llm-decode", preset="ddr5-desktop").config
    hw = load_hardware("llm-decode", preset="rtx-4090", bandwidth_gbps="900")
    assert (hw.config["bandwidth_gbps"], hw.config["peak_gops"]) == (900.0, 82600.0)
    assert load_hardware("llm-decode", **hw.config).config == hw.config  # a saved config resolves to itself


@pytest.mark.parametrize("options, message", [
    ({"bandwidth_gbps": -1}, "option 'bandwidth_gbps': must be greater than 0, got -1"),
    ({"peak_gops": 0}, "option 'peak_gops': must be greater than 0, got 0"),
    ({"efficiency": 1.5}, r"option 'efficiency': must be in \(0, 1\], got 1.5"),
    ({"group_size": -8}, "option 'group_size' must be >= 0; got -8"),
    ({"preset": "tpu"}, "option 'preset' must be one of raspberry-pi-5, apple-m2, jetson-orin-nano"),
])
def test_bad_options_name_the_option_and_the_allowed_range(options, message):
    with pytest.raises(HaqError, match=message):
        load_hardware("llm-decode", **options)


@pytest.mark.parametrize("bits", [1, 9, 12])
def test_unsupported_bits_are_refused(bits):
    with pytest.raises(HaqError, match=f"does not support {bits}-bit weights; supported bit widths: "
                                       "2, 3, 4, 5, 6, 7, 8, 16"):
        load_hardware("llm-decode").layer_cost(GATE, bits, 8)


def test_cost_table_has_energy_for_every_width():
    table = build_cost_table(load_hardware("llm-decode"), [GATE], cache=False)
    assert table.bits == (2, 3, 4, 5, 6, 7, 8)
    assert table.latency[0, 2, 0] == pytest.approx(GATE_4BIT_G64_BYTES / 89.6e9)
    assert table.energy[0, 2, 0] == pytest.approx(GATE_4BIT_G64_BYTES * 160e-12)


def test_discovered_through_its_entry_point():
    from haq_plugin.api.plugins import get_plugin_manager

    registration = get_plugin_manager().hardware.get("llm-decode")
    assert registration.plugin == "llm_decode"
    assert type(load_hardware("llm-decode")).__module__ == "haq_plugin.hardware_models.decode"


def test_hw_list_and_hw_show():
    listed = run_cli("hw", "list")
    assert listed.returncode == 0, listed.stderr
    assert "llm-decode  (haq-plugin" in listed.stdout
    shown = run_cli("hw", "show", "llm-decode", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    (entry,) = json.loads(shown.stdout)
    assert entry["supported_bits"] == [2, 3, 4, 5, 6, 7, 8, 16] and entry["energy"] is True
    options = {o["name"]: o for o in entry["options"]}
    assert options["preset"]["default"] == "ddr5-desktop"
    assert "h100-sxm (3350 GB/s, 67000 GOP/s)" in options["preset"]["help"]
    assert "H100 SXM 80 GB HBM3, 3.35 TB/s" in options["preset"]["source"]


def test_cost_of_a_smollm2_decoder_block_on_the_command_line():
    proc = run_cli("cost", "--model", "decoder_block:block", "--hw", "llm-decode", "--bits", "4/16",
                   "--hw-option", "preset=raspberry-pi-5", "--format", "json", "--no-cache", path=[HERE])
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [row["name"] for row in out["layers"]] == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    # q, o: 186,624 B; k, v: 62,208 B; gate, up, down: 497,664 B each
    block_bytes = 2 * 186_624 + 2 * 62_208 + 3 * 497_664
    assert block_bytes == 1_990_656
    assert out["total"]["latency"] == pytest.approx(block_bytes / 17.068e9, rel=1e-9)
    assert out["total"]["energy"] == pytest.approx(block_bytes * 160e-12, rel=1e-9)
