"""The CLI as a user runs it: exit codes, messages, output formats."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from haq_plugin import __version__
from haq_plugin.cli import cli



def _invoke(args):
    """Run the CLI in a subprocess, as a user would (stderr kept separate)."""
    proc = subprocess.run([sys.executable, "-m", "haq_plugin.cli", *args], capture_output=True, text=True,
                          timeout=300)
    return proc


def test_version_and_help():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
    result = CliRunner().invoke(cli, ["--help"])
    for command in ("search", "export", "cost", "layers", "hw", "backends"):
        assert command in result.output


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
