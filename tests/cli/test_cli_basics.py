"""The CLI as a user runs it: exit codes, messages, output formats."""

import json

import pytest
from click.testing import CliRunner

from haq_plugin import __version__
from haq_plugin.cli import cli
from tests.helpers import run_cli


def _invoke(args):
    """Run the CLI in a subprocess, as a user would (stderr kept separate)."""
    return run_cli(*args, timeout=300)


def test_version_and_help():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
    result = CliRunner().invoke(cli, ["--help"])
    for command in ("search", "export", "cost", "layers", "hw", "backends"):
        assert command in result.output


def test_export_help_names_its_real_model_default():
    text = " ".join(CliRunner().invoke(cli, ["export", "--help"], terminal_width=200).output.split())
    assert "Default: the model stored in the policy (the demo when it stores none)." in text
    assert "[default: demo]" not in text  # that is the default of search, not of export
    search_help = " ".join(CliRunner().invoke(cli, ["search", "--help"], terminal_width=200).output.split())
    assert "[default: demo]" in search_help and "--threads N" in search_help


def test_layers_table_and_json_on_zoo_model():
    proc = _invoke(["layers", "--model", "zoo:mobilenet_v2", "--format", "json"])
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == 53 and rows[1]["depthwise"] is True and rows[0]["stride"] == 2


@pytest.mark.parametrize("args, message", [
    (["layers", "--model", "zoo:vgg"], "unknown zoo network 'vgg'. Available: zoo:mobilenet_v1"),
    (["layers", "--model", "nodots"], "expected 'package.module:callable'"),
    (["layers", "--model", "no_such_module_xyz:make"], "cannot import module 'no_such_module_xyz'"),
    (["layers", "--model", "zoo:resnet18", "--input-shape", "1,x"], "--input-shape '1,x' is not a shape"),
    (["cost", "--model", "zoo:resnet18", "--hw", "nope"], "Unknown hardware model 'nope' (--hw). Available: bismo-cloud"),
    (["cost", "--model", "zoo:resnet18", "--bits", "4/x"], "write weight/activation bits like 4/8"),
    (["cost", "--model", "zoo:resnet18", "--bits", "4/4", "--policy", "p.json"], "either --bits or --policy"),
    (["cost", "--model", "zoo:resnet18", "--hw-option", "rows"], "--hw-option expects KEY=VALUE"),
    (["cost", "--model", "zoo:resnet18", "--hw-option", "speed=3"], "hardware model 'bitfusion': unknown option"),
    (["export", "--policy", "missing.json", "--backend", "torch.ao"], "Policy file missing.json does not exist"),
])
def test_user_mistakes_exit_2_with_one_message_and_no_traceback(args, message):
    proc = _invoke(args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cost_json_matches_the_hardware_model_layer_by_layer():
    import torch

    from haq_plugin import extract_layers, load_hardware
    from haq_plugin.tasks.zoo import mobilenet_v1

    proc = _invoke(["cost", "--model", "zoo:mobilenet_v1", "--hw", "bitfusion", "--bits", "4/4", "--format", "json"])
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    hw = load_hardware("bitfusion")
    layers = extract_layers(mobilenet_v1(), torch.zeros(1, 3, 224, 224))
    assert [row["name"] for row in report["layers"]] == [l.name for l in layers]
    for row, layer in list(zip(report["layers"], layers))[:5]:
        cost = hw.layer_cost(layer, 4, 4)
        assert row["latency_s"] == cost.latency_s and row["energy_j"] == cost.energy_j
        assert row["size_bytes"] == layer.params * 4 / 8 and row["bops"] == layer.macs * 16
    assert report["total"]["latency"] == pytest.approx(sum(r["latency_s"] for r in report["layers"]))
    assert report["total"]["latency"] < report["uniform_8bit"]["latency"]


def test_hw_list_json_lists_builtins_with_options_and_sources():
    proc = _invoke(["hw", "list", "--format", "json"])
    assert proc.returncode == 0, proc.stderr
    models = {m["name"]: m for m in json.loads(proc.stdout)}
    assert {"bitfusion", "bitfusion-cloud", "bismo-edge", "bismo-cloud"} <= set(models)
    bitfusion = {o["name"]: o for o in models["bitfusion"]["options"]}
    assert bitfusion["rows"]["default"] == 8 and bitfusion["wbuf_bytes"]["default"] == 262144
    assert all(o["source"] for o in bitfusion.values() if o["name"] in ("rows", "cols", "frequency_mhz"))
    assert models["bismo-edge"]["energy"] is False and models["bitfusion"]["distribution"].startswith("haq-plugin")
