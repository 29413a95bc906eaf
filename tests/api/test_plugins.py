"""The plugin manager, driven through real entry-point metadata (see conftest.write_plugin_distribution)."""

import pytest

from haq_plugin import HaqError, PluginError, load_hardware
from haq_plugin.api.plugins import get_plugin_manager
from tests.conftest import write_plugin_distribution

GOOD_PLUGIN = """
from haq_plugin import HardwareModel, LayerCost, Option, hookimpl

class Toy(HardwareModel):
    name = "toy"
    description = "MACs times bits, one per cycle at 1 GHz"
    citation = "test"
    options = (Option("ghz", float, 1.0, "clock", minimum=0.001),)

    def layer_cost(self, layer, weight_bits, act_bits):
        return LayerCost(layer.macs * weight_bits * act_bits / (self.config["ghz"] * 1e9))

@hookimpl
def haq_hardware_models():
    return [Toy]
"""


def test_third_party_plugin_is_discovered_with_its_distribution(plugin_site):
    write_plugin_distribution(plugin_site, "haqtest-toy", "haqtest_toy", GOOD_PLUGIN, {"toy": "haqtest_toy"})
    registration = get_plugin_manager().hardware.get("toy")
    assert registration.distribution == "haqtest-toy 1.0"
    hw = load_hardware("toy", ghz="2")
    assert hw.config == {"ghz": 2.0}


def test_builtin_plugins_register_through_entry_points():
    manager = get_plugin_manager()
    assert {"bitfusion", "bitfusion-cloud", "bismo-edge", "bismo-cloud"} <= set(manager.hardware.names())
    assert {"torch.ao", "brevitas"} <= set(manager.backends.names())
    assert manager.hardware.get("bitfusion").distribution.startswith("haq-plugin ")


def test_unknown_name_lists_available(plugin_site):
    write_plugin_distribution(plugin_site, "haqtest-toy", "haqtest_toy", GOOD_PLUGIN, {"toy": "haqtest_toy"})
    with pytest.raises(HaqError, match=r"Unknown hardware model 'nope' \(--hw\)\. Available: .*toy"):
        load_hardware("nope")


def test_duplicate_names_name_both_distributions(plugin_site):
    write_plugin_distribution(plugin_site / "a", "haqtest-one", "haqtest_one", GOOD_PLUGIN, {"one": "haqtest_one"})
    write_plugin_distribution(plugin_site / "b", "haqtest-two", "haqtest_two", GOOD_PLUGIN, {"two": "haqtest_two"})
    import sys
    sys.path[:0] = [str(plugin_site / "a"), str(plugin_site / "b")]
    try:
        with pytest.raises(PluginError, match="haqtest-one 1.0.*haqtest-two 1.0"):
            load_hardware("toy")
    finally:
        sys.path.remove(str(plugin_site / "a"))
        sys.path.remove(str(plugin_site / "b"))


@pytest.mark.parametrize("source, expected", [
    ("raise ImportError('missing dependency xyz')", "failed to load (ImportError: missing dependency xyz)"),
    ("from haq_plugin import hookimpl\n@hookimpl\ndef haq_hardware_models():\n    raise RuntimeError('boom')",
     "hook haq_hardware_models raised RuntimeError: boom"),
    ("from haq_plugin import hookimpl\n@hookimpl\ndef haq_hardware_models():\n    return [42]",
     "not a subclass of HardwareModel"),
    ("from haq_plugin import hookimpl\n@hookimpl\ndef haq_hardware_model():\n    return []",
     "unknown hook 'haq_hardware_model'"),
])
def test_broken_plugins_are_reported_by_name_and_others_still_load(plugin_site, source, expected):
    write_plugin_distribution(plugin_site, "haqtest-broken", "haqtest_broken", source, {"broken": "haqtest_broken"})
    manager = get_plugin_manager()
    messages = [str(p) for p in manager.problems]
    assert any("plugin 'broken' (from haqtest-broken 1.0)" in m and expected in m for m in messages), messages
    assert "bitfusion" in manager.hardware.names()


def test_option_validation_names_the_plugin(plugin_site):
    write_plugin_distribution(plugin_site, "haqtest-toy", "haqtest_toy", GOOD_PLUGIN, {"toy": "haqtest_toy"})
    with pytest.raises(HaqError, match="hardware model 'toy': option 'ghz' expects float, got 'fast'"):
        load_hardware("toy", ghz="fast")
    with pytest.raises(HaqError, match="hardware model 'toy': unknown option.*Allowed options: ghz"):
        load_hardware("toy", mhz=3)
    with pytest.raises(HaqError, match="must be >= 0.001"):
        load_hardware("toy", ghz=0)


def test_entry_point_name_used_twice_is_reported(plugin_site):
    write_plugin_distribution(plugin_site, "haqtest-clash", "haqtest_clash", GOOD_PLUGIN,
                              {"bitfusion": "haqtest_clash"})
    manager = get_plugin_manager()
    messages = [str(p) for p in manager.problems]
    assert any("entry point name 'bitfusion' is already used" in m for m in messages), messages
    assert "bitfusion" in manager.hardware.names()


EXITS_AT_IMPORT = "import sys\nsys.exit(3)\n"
ARGPARSE_AT_IMPORT = """
import argparse
parser = argparse.ArgumentParser(prog="haqtest-cli")
parser.add_argument("--config", required=True)
parser.parse_args()
"""
EXITS_IN_HOOK = "import sys\nfrom haq_plugin import hookimpl\n@hookimpl\ndef haq_hardware_models():\n    sys.exit('bye')\n"


@pytest.mark.parametrize("source, expected", [
    (EXITS_AT_IMPORT, "failed to load (SystemExit: it called sys.exit(3)"),
    (ARGPARSE_AT_IMPORT, "the following arguments are required: --config"),
    (EXITS_IN_HOOK, "hook haq_hardware_models raised SystemExit: it called sys.exit('bye')"),
])
def test_a_plugin_that_exits_is_reported_and_the_others_still_load(plugin_site, source, expected, capsys):
    write_plugin_distribution(plugin_site, "haqtest-exits", "haqtest_exits", source, {"exits": "haqtest_exits"})
    write_plugin_distribution(plugin_site / "good", "haqtest-toy", "haqtest_toy", GOOD_PLUGIN, {"toy": "haqtest_toy"})
    import sys
    sys.path.insert(0, str(plugin_site / "good"))
    try:
        manager = get_plugin_manager()
        messages = [str(p) for p in manager.problems]
        assert sum("plugin 'exits' (from haqtest-exits 1.0)" in m for m in messages) == 1, messages
        assert any(expected in m for m in messages), messages
        assert {"toy", "bitfusion"} <= set(manager.hardware.names())
        assert "usage: haqtest-cli" not in capsys.readouterr().err  # argparse's own text is not shown
    finally:
        sys.path.remove(str(plugin_site / "good"))


def test_hw_list_survives_a_plugin_that_exits_at_import(plugin_site):
    import os
    import subprocess
    import sys

    write_plugin_distribution(plugin_site, "haqtest-argv", "haqtest_argv", ARGPARSE_AT_IMPORT,
                              {"argv": "haqtest_argv"})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugin_site), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "haq_plugin.cli", "hw", "list"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "bitfusion  (haq-plugin " in proc.stdout and "bismo-edge" in proc.stdout
    assert "warning: plugin 'argv' (from haqtest-argv 1.0): failed to load (SystemExit" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_register_records_a_broken_plugins_problem_once(plugin_site):
    write_plugin_distribution(plugin_site, "haqtest-broken", "haqtest_broken",
                              "from haq_plugin import hookimpl\n@hookimpl\ndef haq_hardware_models():\n"
                              "    raise RuntimeError('boom')\n", {"broken": "haqtest_broken"})
    manager = get_plugin_manager()
    before = [str(p) for p in manager.problems]

    class Extra:
        @staticmethod
        def haq_hardware_models():
            return []

    from haq_plugin import hookimpl
    Extra.haq_hardware_models = hookimpl(Extra.haq_hardware_models)
    manager.register(Extra, name="extra")
    manager.register(type("Another", (Extra,), {}), name="another")
    after = [str(p) for p in manager.problems]
    assert after == before and sum("boom" in m for m in after) == 1, after


def test_plugin_provenance_names_distribution_and_version(plugin_site):
    from importlib.metadata import version

    from haq_plugin.api.plugins import plugin_provenance

    write_plugin_distribution(plugin_site, "haqtest-toy", "haqtest_toy", GOOD_PLUGIN, {"toy": "haqtest_toy"})
    manager = get_plugin_manager()
    assert plugin_provenance(manager.hardware, "toy") == {"name": "toy", "distribution": "haqtest-toy",
                                                          "version": "1.0"}
    assert plugin_provenance(manager.backends, "torch.ao") == {"name": "torch.ao", "distribution": "haq-plugin",
                                                               "version": version("haq-plugin")}
    toy_cls = manager.hardware.get("toy").cls
    assert plugin_provenance(manager.hardware, "toy", toy_cls)["version"] == "1.0"
    # an instance of another class under a registered name, or an unregistered name, has no known distribution
    assert plugin_provenance(manager.hardware, "toy", type("Other", (toy_cls,), {})) == {
        "name": "toy", "distribution": None, "version": None}
    assert plugin_provenance(manager.hardware, "mine")["distribution"] is None
