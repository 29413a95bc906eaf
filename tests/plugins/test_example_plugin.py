"""The third-party plugin story, end to end.

``examples/haq-hw-roofline`` is pip-installed for real (into a temporary
``--target`` directory, never into the test environment) and driven through the
``haq-plugin`` command line in subprocesses, exactly as a user who installed it
would.  Its formulas are also checked directly against hand-computed numbers.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

from haq_plugin import HaqError, LayerSpec, extract_layers, load_hardware
from haq_plugin.engine.costs import build_cost_table
from haq_plugin.api.plugins import get_plugin_manager, reset_plugin_manager
from haq_plugin.api.policy import Policy
from haq_plugin.tasks.zoo import IMAGENET_INPUT_SHAPE, ZOO
from tests.conftest import write_plugin_distribution
from tests.helpers import install_example, run_cli

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "haq-hw-roofline"

# NVIDIA T4 datasheet figures, the example's defaults.
INT4_OPS, INT8_OPS, FP16_OPS, DRAM_BYTES_PER_S = 260e12, 130e12, 65e12, 320e9
PJ_PER_OP = {"int4": 0.075, "int8": 0.15, "fp16": 1.0}
PJ_PER_BYTE = 160.0


# -- the roofline formula, written out independently of the plugin -------------------------
def unit_of(weight_bits: int, act_bits: int) -> str:
    width = max(weight_bits, act_bits)
    return "int4" if width <= 4 else "int8" if width <= 8 else "fp16"


def expected_cost(layer: LayerSpec, w: int, a: int, batch: int = 1, output_bits: int = 8) -> dict[str, float]:
    rate = {"int4": INT4_OPS, "int8": INT8_OPS, "fp16": FP16_OPS}[unit_of(w, a)]
    ops = 2 * layer.macs * batch
    dram = layer.params * w / 8 + layer.in_activations * a / 8 * batch + layer.out_activations * output_bits / 8 * batch
    compute_s, memory_s = ops / rate, dram / DRAM_BYTES_PER_S
    energy = (ops * PJ_PER_OP[unit_of(w, a)] + dram * PJ_PER_BYTE) * 1e-12
    return {"latency": max(compute_s, memory_s), "energy": energy, "compute_s": compute_s, "memory_s": memory_s}


# -- installing the example and running the CLI --------------------------------------------
@pytest.fixture(scope="module")
def roofline_site(tmp_path_factory) -> Path:
    """``pip install --target`` of a copy of the example (a build in place would litter the repository)."""
    target = install_example(EXAMPLE, tmp_path_factory.mktemp("roofline-src"),
                             tmp_path_factory.mktemp("roofline-site"))
    assert (target / "haq_hw_roofline-0.1.0.dist-info" / "entry_points.txt").is_file()
    return target


@pytest.fixture
def roofline_module(roofline_site, monkeypatch):
    """The installed ``haq_hw_roofline.roofline`` imported in this process, with plugins re-discovered."""
    monkeypatch.syspath_prepend(str(roofline_site))
    reset_plugin_manager()
    yield importlib.import_module("haq_hw_roofline.roofline")
    for name in [m for m in sys.modules if m == "haq_hw_roofline" or m.startswith("haq_hw_roofline.")]:
        del sys.modules[name]
    reset_plugin_manager()


@pytest.fixture(scope="module")
def mobilenet_v2_layers() -> list[LayerSpec]:
    return extract_layers(ZOO["mobilenet_v2"](), torch.zeros(IMAGENET_INPUT_SHAPE))


# -- through the command line ---------------------------------------------------------------
def test_hw_list_shows_roofline_with_its_distribution(roofline_site):
    proc = run_cli("hw", "list", path=(roofline_site,))
    assert proc.returncode == 0, proc.stderr
    assert "roofline  (haq-hw-roofline 0.1.0, plugin 'roofline')" in proc.stdout
    proc = run_cli("hw", "list", "--format", "json", path=(roofline_site,))
    entry = next(e for e in json.loads(proc.stdout) if e["name"] == "roofline")
    assert entry["distribution"] == "haq-hw-roofline 0.1.0" and entry["energy"] is True
    options = {o["name"]: o for o in entry["options"]}
    assert options["int8_tops"]["default"] == 130.0 and "T4" in options["int8_tops"]["source"]
    assert options["bandwidth_gbps"]["default"] == 320.0


def test_cost_of_mobilenet_v2_at_4_bits_follows_the_roofline(roofline_site, mobilenet_v2_layers):
    proc = run_cli("cost", "--model", "zoo:mobilenet_v2", "--hw", "roofline", "--bits", "4/4", "--format", "json",
                   "--no-cache", path=(roofline_site,))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["hardware"] == "roofline" and report["config"]["int4_tops"] == 260.0
    rows = report["layers"]
    assert [r["name"] for r in rows] == [layer.name for layer in mobilenet_v2_layers]
    # features.0.0: conv 3x3/2, 3->32, 224x224 -> 112x112, 4-bit weights and inputs, 8-bit outputs.
    # macs = 32*27*112*112 = 10,838,016 -> 21,676,032 ops -> 83.4 ns at 260 TOPS;
    # bytes = 864*4/8 + 150,528*4/8 + 401,408*8/8 = 477,104 -> 1.49095 us at 320 GB/s: memory bound.
    first = rows[0]
    assert first["name"] == "features.0.0" and first["w/a"] == "4/4"
    assert first["latency_s"] == pytest.approx(477_104 / 320e9, rel=1e-12)
    # energy = 21,676,032 ops * 0.075 pJ + 477,104 B * 160 pJ = 77,962,342.4 pJ
    assert first["energy_j"] == pytest.approx(77_962_342.4e-12, rel=1e-12)
    for row, layer in zip(rows, mobilenet_v2_layers):
        want = expected_cost(layer, 4, 4)
        assert row["latency_s"] == pytest.approx(want["latency"], rel=1e-12), layer.name
        assert row["energy_j"] == pytest.approx(want["energy"], rel=1e-12), layer.name
    assert report["total"]["latency"] == pytest.approx(sum(r["latency_s"] for r in rows), rel=1e-12)


def test_cost_with_options_has_compute_and_memory_bound_layers(roofline_site):
    """ResNet-18 at batch 16, 8-bit: its 3x3 convs hit the INT8 roof, its first conv and classifier the memory roof."""
    proc = run_cli("cost", "--model", "zoo:resnet18", "--hw", "roofline", "--bits", "8/8", "--format", "json",
                   "--hw-option", "batch=16", "--hw-option", "output_bits=32", "--no-cache", path=(roofline_site,))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["config"]["batch"] == 16 and report["config"]["output_bits"] == 32
    layers = extract_layers(ZOO["resnet18"](), torch.zeros(IMAGENET_INPUT_SHAPE))
    bounds = set()
    for row, layer in zip(report["layers"], layers, strict=True):
        want = expected_cost(layer, 8, 8, batch=16, output_bits=32)
        assert row["latency_s"] == pytest.approx(want["latency"], rel=1e-12), layer.name
        bounds.add("compute" if want["compute_s"] >= want["memory_s"] else "memory")
    assert bounds == {"compute", "memory"}


@pytest.mark.parametrize("args, message", [
    (["--bits", "4/4", "--hw-option", "int8_tops=abc"],
     "hardware model 'roofline': option 'int8_tops' expects float, got 'abc'."),
    (["--bits", "12/12"], "hardware model 'roofline' does not support 12-bit weights"),
])
def test_bad_roofline_input_exits_2_naming_the_plugin(roofline_site, args, message):
    proc = run_cli("cost", "--model", "zoo:mobilenet_v2", "--hw", "roofline", *args, path=(roofline_site,))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_short_search_on_roofline(roofline_site, tmp_path):
    out = tmp_path / "out"
    proc = run_cli("search", "--hw", "roofline", "--backend", "torch.ao", "--episodes", "3",
                   "--warmup-episodes", "2", "--budget", "0.7", "--output", str(out), "--quiet",
                   path=(roofline_site,))
    assert proc.returncode == 0, proc.stderr
    policy = Policy.load(out / "policy.json")
    hardware = policy.provenance["hardware"]
    assert hardware["name"] == "roofline" and hardware["config"]["int4_tops"] == 260.0
    assert policy.provenance["budget"]["fraction"] == 0.7
    achieved = policy.provenance["achieved"]
    assert achieved["cost_fraction"] <= 0.7 + 1e-12
    from haq_plugin.tasks.demo import load_demo

    demo = load_demo()
    layers = extract_layers(demo.model, demo.example_input)
    policy.check_layers(layers)
    latency = sum(expected_cost(layer, *policy.bits[layer.name])["latency"] for layer in layers)
    eight_bit = sum(expected_cost(layer, 8, 8)["latency"] for layer in layers)
    assert achieved["cost"] == pytest.approx(latency, rel=1e-9)
    assert policy.provenance["budget"]["reference_8bit"] == pytest.approx(eight_bit, rel=1e-9)
    assert len((out / "episodes.csv").read_text().strip().splitlines()) == 1 + 3
    assert (out / "qconfig_mapping.json").is_file()


# -- a misbehaving plugin beside the others ---------------------------------------------
RAISING_PLUGIN = """
from haq_plugin import hookimpl

@hookimpl
def haq_hardware_models():
    raise RuntimeError("simulator licence not found")
"""


def test_plugin_whose_hook_raises_is_named_and_the_rest_keep_working(roofline_site, tmp_path):
    site = write_plugin_distribution(tmp_path / "site", "haqtest-raising", "haqtest_raising", RAISING_PLUGIN,
                                     {"raising": "haqtest_raising"})
    proc = run_cli("hw", "list", path=(site, roofline_site))
    assert proc.returncode == 0, proc.stderr
    assert ("warning: plugin 'raising' (from haqtest-raising 1.0): hook haq_hardware_models raised "
            "RuntimeError: simulator licence not found") in proc.stderr.splitlines()
    assert "bitfusion  (haq-plugin " in proc.stdout
    assert "roofline  (haq-hw-roofline 0.1.0, plugin 'roofline')" in proc.stdout
    proc = run_cli("cost", "--model", "zoo:mobilenet_v2", "--hw", "bitfusion", "--bits", "4/4", "--format", "json",
                   path=(site, roofline_site))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["total"]["latency"] > 0


# -- the model's formulas, imported from the installed package ------------------------------
def depthwise_112() -> LayerSpec:
    return LayerSpec(name="dw", kind="conv", in_channels=32, out_channels=32, kernel_size=3, groups=32,
                     in_size=112, out_size=112)


def big_linear() -> LayerSpec:
    return LayerSpec(name="fc", kind="linear", in_channels=4096, out_channels=4096)


def test_memory_bound_layer_costs_bytes_over_bandwidth(roofline_module):
    cost = roofline_module.RooflineModel().layer_cost(depthwise_112(), 4, 4)
    # bytes = 288*4/8 + 401,408*4/8 + 401,408*8/8 = 602,256; ops = 2 * 32*9*112*112 = 7,225,344
    assert cost.details["dram_bytes"] == 602_256 and cost.details["ops"] == 7_225_344
    assert cost.latency_s == pytest.approx(602_256 / 320e9, rel=1e-12)
    assert cost.details["bound"] == "memory" and cost.details["unit"] == "int4"
    assert cost.energy_j == pytest.approx((7_225_344 * 0.075 + 602_256 * 160) * 1e-12, rel=1e-12)


@pytest.mark.parametrize("bits, options, unit, ops_per_s", [
    ((4, 4), {}, "int4", 260e12),
    ((8, 4), {}, "int8", 130e12),         # the wider operand decides
    ((5, 3), {}, "int8", 130e12),         # 5 bits round up to the INT8 units
    ((2, 2), {}, "int4", 260e12),         # the T4 has no INT2 units
    ((2, 1), {"int2_tops": 520.0}, "int2", 520e12),
    ((4, 4), {"int4_tops": 0.0}, "int8", 130e12),
    ((16, 8), {}, "fp16", 65e12),
])
def test_compute_bound_layer_runs_at_the_rate_of_its_operand_width(roofline_module, bits, options, unit,
                                                                   ops_per_s):
    model = roofline_module.RooflineModel(batch=1024, **options)
    cost = model.layer_cost(big_linear(), *bits)
    ops = 2 * 4096 * 4096 * 1024
    assert cost.details["unit"] == unit and cost.details["bound"] == "compute"
    assert cost.latency_s == pytest.approx(ops / ops_per_s, rel=1e-12)
    assert cost.details["memory_s"] < cost.latency_s


def test_output_bits_and_batch_scale_the_activation_traffic(roofline_module):
    layer = depthwise_112()
    base = roofline_module.RooflineModel().dram_bytes(layer, 4, 4)
    wide = roofline_module.RooflineModel(batch=8, output_bits=32).dram_bytes(layer, 4, 4)
    assert wide["weight_bytes"] == base["weight_bytes"] == 144
    assert wide["input_bytes"] == 8 * base["input_bytes"] == 8 * 200_704
    assert wide["output_bytes"] == 8 * 4 * base["output_bytes"] == 32 * 401_408


def test_unsupported_bits_and_bad_options_are_rejected(roofline_module):
    model = roofline_module.RooflineModel()
    with pytest.raises(HaqError, match="does not support 12-bit weights; supported bit widths: 1, 2, .*8, 16"):
        model.layer_cost(big_linear(), 12, 8)
    with pytest.raises(HaqError, match="option 'int8_tops': must be > 0"):
        roofline_module.RooflineModel(int8_tops=0)
    with pytest.raises(HaqError, match="option 'batch' must be >= 1"):
        roofline_module.RooflineModel(batch=0)
    with pytest.raises(HaqError, match="option 'output_bits' must be one of 8, 16, 32; got 12"):
        roofline_module.RooflineModel(output_bits="12")


def test_latency_never_grows_when_bits_shrink(roofline_module, mobilenet_v2_layers):
    table = build_cost_table(roofline_module.RooflineModel(batch=32), mobilenet_v2_layers, cache=False)
    assert table.bits == (1, 2, 3, 4, 5, 6, 7, 8)
    for metric in ("latency", "energy"):
        values = table.metric(metric)
        assert (values[:, 1:, :] >= values[:, :-1, :]).all() and (values[:, :, 1:] >= values[:, :, :-1]).all()
    assert table.uniform_cost("latency", 4) < table.uniform_cost("latency", 8)


def test_load_hardware_finds_the_installed_entry_point(roofline_module):
    hardware = load_hardware("roofline", batch="4", bandwidth_gbps="300")
    assert isinstance(hardware, roofline_module.RooflineModel)
    assert hardware.config["batch"] == 4 and hardware.config["bandwidth_gbps"] == 300.0
    registration = get_plugin_manager().hardware.get("roofline")
    assert (registration.plugin, registration.distribution) == ("roofline", "haq-hw-roofline 0.1.0")
