"""Bit Fusion model: exact against the authors' simulator output, fast search == exhaustive search.

Reference data (tests/data/bitfusion/, described in its REFERENCE.md) comes from the
authors' public simulator: the 305-row sweep, its layers and configurations, the
energy constants, the per-network totals and the CACTI bank table.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import pytest
import torch

from haq_plugin import HaqError, LayerSpec, extract_layers, load_hardware
from haq_plugin.hardware_models.bitfusion import BitFusionCloud, BitFusionEdge
from haq_plugin.hardware_models.bitfusion.energy import CACTI_BANKS
from haq_plugin.hardware_models.bitfusion.exhaustive import exhaustive_layer_counters
from haq_plugin.hardware_models.bitfusion.rules import COUNTERS, ArraySpec, LoopNest, fusion_factor, weight_footprint
from haq_plugin.tasks.zoo import MobileNetV2

DATA = Path(__file__).resolve().parents[2] / "data" / "bitfusion"

SWEEP_COLUMNS = {
    "cycles": "Cycles", "stall_cycles": "Memory wait cycles", "wbuf_read": "WBUF Read",
    "wbuf_write": "WBUF Write", "ibuf_read": "IBUF Read", "ibuf_write": "IBUF Write", "obuf_read": "OBUF Read",
    "obuf_write": "OBUF Write", "dram_read": "DRAM Read", "dram_write": "DRAM Write",
}


@functools.cache
def read(name: str) -> tuple[dict[str, str], ...]:
    with open(DATA / name, newline="") as f:
        return tuple(csv.DictReader(f))


def reference_layer(network: str, layer: str) -> LayerSpec:
    """The LayerSpec of one layers.csv row, written out by hand from its columns."""
    row = next(r for r in read("layers.csv") if (r["network"], r["layer"]) == (network, layer))
    return LayerSpec(
        name=row["layer"], kind="linear" if row["op"] == "matmul" else "conv",
        in_channels=int(row["in_channels"]), out_channels=int(row["out_channels"]),
        kernel_size=int(row["kernel"]), stride=int(row["stride"]), in_size=int(row["in_size"]),
        out_size=int(row["out_size"]), reads_network_input=row["im2col"] == "1",
    )


def layer_bits(network: str, layer: str) -> tuple[int, int]:
    row = next(r for r in read("layers.csv") if (r["network"], r["layer"]) == (network, layer))
    return int(row["weight_bits"]), int(row["act_bits"])


def config_options(config_id: str) -> dict[str, int | float]:
    row = next(r for r in read("configs.csv") if r["config_id"] == config_id)
    return {"rows": int(row["N"]), "cols": int(row["M"]), "frequency_mhz": float(row["frequency_mhz"]),
            "bandwidth_bits": int(row["bandwidth_bits_per_cycle"]), "wbuf_bytes": int(row["wbuf_bytes"]),
            "ibuf_bytes": int(row["ibuf_bytes"]), "obuf_bytes": int(row["obuf_bytes"]), "batch": int(row["batch"])}


def config_of(sweep_row: dict[str, str]) -> str:
    """The configs.csv id of a sweep row (configurations differ in M and bandwidth)."""
    return next(r["config_id"] for r in read("configs.csv")
                if (r["M"], r["bandwidth_bits_per_cycle"]) == (sweep_row["M"], sweep_row["Bandwidth (bits/cycle)"]))


def counters(cost) -> dict[str, int]:
    return {name: cost.details[name] for name in COUNTERS}


@functools.cache
def mobilenet_v2_layers() -> dict[str, LayerSpec]:
    return {layer.name: layer for layer in extract_layers(MobileNetV2(), torch.zeros(1, 3, 224, 224))}


# --- exactness against the authors' simulator --------------------------------------------------------


def test_every_sweep_row_matches_the_authors_simulator():
    hardware = {}
    mismatches = []
    rows = read("sweep.csv")
    for row in rows:
        config_id = config_of(row)
        if config_id not in hardware:
            hardware[config_id] = load_hardware("bitfusion", **config_options(config_id))
        layer = reference_layer(row["Network"], row["Layer"])
        got = counters(hardware[config_id].layer_cost(layer, *layer_bits(row["Network"], row["Layer"])))
        want = {name: int(row[column]) for name, column in SWEEP_COLUMNS.items()}
        if got != want:
            mismatches.append((config_id, row["Network"], row["Layer"], got, want))
    assert len(rows) == 305 and len(hardware) == 5
    assert mismatches == []


def test_network_totals_match_the_authors_energy():
    hw = load_hardware("bitfusion-cloud")
    totals: dict[str, dict[str, float]] = {}
    for row in read("sweep.csv"):
        if config_of(row) != "bf16x32_bw192":
            continue
        cost = hw.layer_cost(reference_layer(row["Network"], row["Layer"]), *layer_bits(row["Network"], row["Layer"]))
        total = totals.setdefault(row["Network"], {"layers": 0, "cycles": 0, "stall": 0, "nj": 0.0, "s": 0.0})
        total["layers"] += 1
        total["cycles"] += cost.details["cycles"]
        total["stall"] += cost.details["stall_cycles"]
        total["nj"] += cost.energy_j * 1e9
        total["s"] += cost.latency_s
    expected = read("network_totals.csv")
    assert sorted(totals) == sorted(r["network"] for r in expected)
    for row in expected:
        total = totals[row["network"]]
        assert total["layers"] == int(row["layers"])
        assert total["cycles"] == int(row["cycles"])
        assert total["stall"] == int(row["memory_wait_cycles"])
        assert total["nj"] == pytest.approx(float(row["energy_nJ_batch16"]), rel=1e-9)
        assert total["s"] * 1e3 / 16 == pytest.approx(float(row["time_ms_per_frame"]), rel=1e-12)


def test_grouped_conv_runs_as_the_authors_alexnet_towers():
    """AlexNet's two-group conv2 is the sweep's conv2_a and conv2_b: one grouped layer costs both rows."""
    hw = load_hardware("bitfusion-cloud")
    tower = reference_layer("AlexNet", "conv2_a/Convolution")
    grouped = LayerSpec(name="conv2", kind="conv", in_channels=2 * tower.in_channels,
                        out_channels=2 * tower.out_channels, kernel_size=5, groups=2, in_size=27, out_size=27)
    rows = [r for r in read("sweep.csv") if config_of(r) == "bf16x32_bw192" and r["Network"] == "AlexNet"
            and r["Layer"] in ("conv2_a/Convolution", "conv2_b/Convolution")]
    cost = hw.layer_cost(grouped, *layer_bits("AlexNet", "conv2_a/Convolution"))
    assert cost.details["groups_per_pack"] == 1
    assert counters(cost) == {name: sum(int(r[col]) for r in rows) for name, col in SWEEP_COLUMNS.items()}


# --- defaults and energy constants ---------------------------------------------------------------------


def test_cloud_defaults_are_bf_e_conf_with_the_authors_energy_constants():
    hw = load_hardware("bitfusion-cloud")
    assert isinstance(hw, BitFusionCloud)
    assert {k: hw.config[k] for k in config_options("bf16x32_bw192")} == config_options("bf16x32_bw192")
    constants = {r["quantity"]: float(r["value"]) for r in read("energy.csv") if r["config"] == "16x32"}
    e = hw.energy
    got = {"core_dynamic_energy": e.core_per_cycle, "wbuf_read_energy": e.wbuf_read,
           "wbuf_write_energy": e.wbuf_write, "ibuf_read_energy": e.ibuf_read, "ibuf_write_energy": e.ibuf_write,
           "obuf_read_energy": e.obuf_read, "obuf_write_energy": e.obuf_write, "dram_energy": e.dram}
    assert got == pytest.approx(constants, rel=1e-12)


@pytest.mark.parametrize("config_id, key", [("bf16x64_bw4096", "16x64"), ("bf16x128_bw4096", "16x128"),
                                            ("bf16x256_bw4096", "16x256")])
def test_energy_constants_follow_the_configuration(config_id, key):
    hw = load_hardware("bitfusion", **config_options(config_id))
    constants = {r["quantity"]: float(r["value"]) for r in read("energy.csv") if r["config"] == key}
    got = {"core_dynamic_energy": hw.energy.core_per_cycle, "ibuf_read_energy": hw.energy.ibuf_read,
           "ibuf_write_energy": hw.energy.ibuf_write}
    assert got == pytest.approx(constants, rel=1e-12)


def test_edge_defaults_are_conf_ini_with_cacti_bank_energies():
    hw = load_hardware("bitfusion")
    assert isinstance(hw, BitFusionEdge) and hw.has_energy
    assert {k: hw.config[k] for k in ("rows", "cols", "frequency_mhz", "bandwidth_bits", "wbuf_bytes",
                                      "ibuf_bytes", "obuf_bytes", "batch")} == {
        "rows": 8, "cols": 8, "frequency_mhz": 500.0, "bandwidth_bits": 128, "wbuf_bytes": 262144,
        "ibuf_bytes": 65536, "obuf_bytes": 16384, "batch": 1}
    banks = {(int(r["bank_bytes"]), r["read_write_port"]): r for r in read("cacti_banks.csv")}
    per_bit = lambda size, port, op: float(banks[(size, port)][f"{op}_energy_nJ_per_access"]) * 1e3 / 32  # noqa: E731
    e = hw.energy
    assert e.core_per_cycle == pytest.approx(3_673_500e-9 * 64 / 16 / 500e6 * 1e12, rel=1e-12)  # 29.388 pJ
    assert (e.wbuf_read, e.wbuf_write) == pytest.approx((per_bit(4096, "0", "read"), per_bit(4096, "0", "write")))
    assert (e.ibuf_read, e.ibuf_write) == pytest.approx((per_bit(8192, "0", "read"), per_bit(8192, "0", "write")))
    # 2048-byte bank: the table has it only without a read-write port (documented approximation)
    assert (e.obuf_read, e.obuf_write) == pytest.approx((per_bit(2048, "0", "read"), per_bit(2048, "0", "write")))
    assert e.dram == 15.0


def test_embedded_cacti_table_is_the_simulators():
    rows = read("cacti_banks.csv")
    assert [(b.bank_bytes, b.read_write_port, b.read_nj, b.write_nj) for b in CACTI_BANKS] == [
        (int(r["bank_bytes"]), r["read_write_port"] == "1", float(r["read_energy_nJ_per_access"]),
         float(r["write_energy_nJ_per_access"])) for r in rows]


def test_cost_units_and_details():
    hw = load_hardware("bitfusion-cloud")
    cost = hw.layer_cost(reference_layer("RESNET-18", "module3/conv3_1_b/Convolution"), 4, 4)
    d = cost.details
    assert set(COUNTERS) <= set(d)
    assert cost.latency_s == d["cycles"] / 500e6
    c = {r["quantity"]: float(r["value"]) for r in read("energy.csv") if r["config"] == "16x32"}
    pj = ((d["cycles"] - d["stall_cycles"]) * c["core_dynamic_energy"]
          + d["wbuf_read"] * c["wbuf_read_energy"] + d["wbuf_write"] * c["wbuf_write_energy"]
          + d["ibuf_read"] * c["ibuf_read_energy"] + d["ibuf_write"] * c["ibuf_write_energy"]
          + d["obuf_read"] * c["obuf_read_energy"] + d["obuf_write"] * c["obuf_write_energy"]
          + (d["dram_read"] + d["dram_write"]) * c["dram_energy"])
    assert cost.energy_j == pytest.approx(pj * 1e-12, rel=1e-12)
    assert d["dataflow"] in ("IS", "OS", "WS") and set(d["loop_order"]) <= {"B", "OW", "OH", "IC", "OC"}


# --- fast search == exhaustive search beyond the reference rows ----------------------------------------


CUSTOM = {
    "non_square": LayerSpec(name="ns", kind="conv", in_channels=16, out_channels=32, kernel_size=(3, 5),
                            stride=2, in_size=(20, 40), out_size=(10, 20)),
    "dilated": LayerSpec(name="dil", kind="conv", in_channels=64, out_channels=64, kernel_size=3, dilation=2,
                         in_size=28, out_size=28),
    "conv1d": LayerSpec(name="c1d", kind="conv", in_channels=32, out_channels=64, kernel_size=(5, 1),
                        in_size=(100, 1), out_size=(100, 1)),
    "grouped": LayerSpec(name="grp", kind="conv", in_channels=64, out_channels=64, kernel_size=3, groups=16,
                         in_size=14, out_size=14),
}

CROSS_CHECKS = [
    ("bitfusion", "features.0.0", (3, 5)),             # stem, im2col
    ("bitfusion", "features.1.conv.0.0", (1, 8)),      # depthwise 3x3/1 at 112x112
    ("bitfusion", "features.4.conv.1.0", (6, 2)),      # depthwise 3x3/2
    ("bitfusion", "features.3.conv.0.0", (2, 2)),      # 1x1 expansion
    ("bitfusion", "features.14.conv.2.0", (8, 3)),     # 1x1 projection
    ("bitfusion", "classifier", (4, 7)),               # matmul
    ("bitfusion", "non_square", (5, 4)),
    ("bitfusion", "dilated", (8, 8)),
    ("bitfusion", "conv1d", (3, 3)),
    ("bitfusion", "grouped", (7, 5)),
    ("bitfusion-cloud", "features.13.conv.1.0", (2, 4)),
    ("bitfusion-cloud", "features.7.conv.2.0", (7, 1)),
]


@pytest.mark.parametrize("hw_name, layer_name, bits", CROSS_CHECKS)
def test_fast_search_equals_exhaustive_search(hw_name, layer_name, bits):
    hw = load_hardware(hw_name)
    layer = CUSTOM.get(layer_name) or mobilenet_v2_layers()[layer_name]
    reference = exhaustive_layer_counters(layer, hw.array, hw.energy, hw.config["batch"], *bits)
    assert counters(hw.layer_cost(layer, *bits)) == reference


def test_batched_pairs_equal_single_pairs():
    pairs = [(w, a) for w in (1, 3, 8) for a in (2, 5, 8)]
    layer = mobilenet_v2_layers()["features.5.conv.1.0"]
    batched = load_hardware("bitfusion").layer_costs(layer, pairs)
    single = [load_hardware("bitfusion").layer_cost(layer, w, a) for w, a in pairs]
    assert [counters(c) for c in batched] == [counters(c) for c in single]
    assert [c.energy_j for c in batched] == [c.energy_j for c in single]


def test_mobilenet_v2_table_is_complete_and_follows_bits():
    hw = load_hardware("bitfusion")
    pairs = [(w, a) for w in range(1, 9) for a in range(1, 9)]
    table = {layer.name: dict(zip(pairs, hw.layer_costs(layer, pairs))) for layer in mobilenet_v2_layers().values()}
    assert len(table) == 53 and all(len(costs) == 64 for costs in table.values())
    network = lambda w, a, attr: sum(getattr(costs[(w, a)], attr) for costs in table.values())  # noqa: E731
    for attr in ("latency_s", "energy_j"):
        assert network(8, 8, attr) > network(4, 4, attr) > network(2, 2, attr) > 0


# --- layers the authors never had ----------------------------------------------------------------------


def depthwise(channels: int) -> LayerSpec:
    return LayerSpec(name="dw", kind="conv", in_channels=channels, out_channels=channels, kernel_size=3,
                     groups=channels, in_size=14, out_size=14)


@pytest.mark.parametrize("hw_name", ["bitfusion", "bitfusion-cloud"])
def test_depthwise_costs_far_less_than_the_dense_conv(hw_name):
    hw = load_hardware(hw_name)
    dense = LayerSpec(name="dense", kind="conv", in_channels=512, out_channels=512, kernel_size=3,
                      in_size=14, out_size=14)
    dw8, dense8 = hw.layer_cost(depthwise(512), 8, 8), hw.layer_cost(dense, 8, 8)
    assert dense8.details["cycles"] > 10 * dw8.details["cycles"]
    assert dense8.energy_j > 10 * dw8.energy_j
    assert dw8.details["groups_per_pack"] == hw.config["cols"]  # channels side by side on the diagonal
    for bits in [(1, 1), (2, 2), (4, 8), (8, 2)]:
        assert hw.layer_cost(depthwise(512), *bits).details["cycles"] < hw.layer_cost(dense, *bits).details["cycles"]


@pytest.mark.parametrize("hw_name", ["bitfusion", "bitfusion-cloud"])
def test_depthwise_cost_scales_with_channels(hw_name):
    hw = load_hardware(hw_name)
    for bits in [(8, 8), (2, 4)]:
        small, large = counters(hw.layer_cost(depthwise(256), *bits)), counters(hw.layer_cost(depthwise(512), *bits))
        assert large == {name: 2 * value for name, value in small.items()}


def test_non_square_layers_are_symmetric_under_transpose():
    hw = load_hardware("bitfusion")
    wide = LayerSpec(name="wide", kind="conv", in_channels=32, out_channels=64, kernel_size=3,
                     in_size=(14, 28), out_size=(14, 28))
    tall = LayerSpec(name="tall", kind="conv", in_channels=32, out_channels=64, kernel_size=3,
                     in_size=(28, 14), out_size=(28, 14))
    assert counters(hw.layer_cost(wide, 4, 4)) == counters(hw.layer_cost(tall, 4, 4))
    tiling = hw.layer_cost(wide, 4, 4).details["tiling"]
    assert tiling["oh"] <= 14 and tiling["ow"] <= 28


# --- bit widths ----------------------------------------------------------------------------------------


def test_odd_widths_run_at_the_next_brick_width_but_store_true_bits():
    array = ArraySpec.from_bytes(16, 32, 192, 65536, 32768, 16384)
    for other in range(1, 9):
        assert fusion_factor(3, other, array) == fusion_factor(4, other, array)
        assert {fusion_factor(b, other, array) for b in (5, 6, 7, 8)} == {fusion_factor(8, other, array)}
    nest = LoopNest(3, 3, 3, 3, 14, 14, 1, 1, 256, 256, 16, False)
    pf = fusion_factor(4, 4, array)
    assert 4 * weight_footprint(nest, array, 64, 64, 3, pf) == 3 * weight_footprint(nest, array, 64, 64, 4, pf)
    layer = LayerSpec(name="c", kind="conv", in_channels=256, out_channels=256, kernel_size=3, in_size=14,
                      out_size=14)
    for hw in (load_hardware("bitfusion"), load_hardware("bitfusion-cloud")):
        compute = {b: hw.layer_cost(layer, b, b).details for b in (3, 4, 5, 8)}
        busy = {b: d["cycles"] - d["stall_cycles"] for b, d in compute.items()}
        assert busy[3] == busy[4] and busy[5] == busy[8] and busy[8] == 4 * busy[4]
        assert compute[3]["wbuf_write"] != compute[4]["wbuf_write"]


@pytest.mark.parametrize("bits", [(16, 8), (8, 16), (0, 8), (9, 9)])
def test_rejects_widths_outside_1_to_8(bits):
    hw = load_hardware("bitfusion")
    assert hw.supported_bits == (1, 2, 3, 4, 5, 6, 7, 8)
    with pytest.raises(HaqError, match="supported bit widths: 1, 2, 3, 4, 5, 6, 7, 8"):
        hw.layer_cost(depthwise(32), *bits)


# --- configuration mistakes ----------------------------------------------------------------------------


def test_buffer_without_cacti_bank_asks_for_explicit_energy():
    with pytest.raises(HaqError, match="CACTI.*obuf"):
        load_hardware("bitfusion", obuf_bytes=128)


def test_buffer_too_small_for_any_tile_names_the_option():
    hw = load_hardware("bitfusion", obuf_bytes=16, obuf_read_pj_per_bit=0.06, obuf_write_pj_per_bit=0.11)
    with pytest.raises(HaqError, match=r"obuf_bytes=16 .*Use obuf_bytes >= 64"):
        hw.layer_cost(depthwise(32), 8, 8)


def test_rejects_non_positive_clock():
    with pytest.raises(HaqError, match="frequency_mhz"):
        load_hardware("bitfusion", frequency_mhz=0)
