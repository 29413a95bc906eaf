"""The plugin manager, driven through real entry-point metadata (see conftest.write_plugin_distribution)."""

import pytest

from haq_plugin import HaqError, PluginError, load_hardware
from haq_plugin.plugins import get_plugin_manager
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
