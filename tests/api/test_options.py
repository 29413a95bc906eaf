"""Plugin options: conversion, None defaults, finiteness, choices and checks."""

import math

import pytest

from haq_plugin import HaqError, load_hardware
from haq_plugin.api.options import Option, positive, resolve_options

OWNER = "hardware model 'test'"


def test_none_default_accepts_none_and_the_word_none():
    opt = Option("core_pj_per_cycle", float, None, minimum=0)
    assert opt.convert(None, OWNER) is None
    assert opt.convert("none", OWNER) is None and opt.convert(" None ", OWNER) is None
    assert opt.convert("2.5", OWNER) == 2.5
    with pytest.raises(HaqError, match="'core_pj_per_cycle' expects float, got 'x'"):
        opt.convert("x", OWNER)


def test_none_is_refused_where_the_default_is_a_value():
    with pytest.raises(HaqError, match="option 'rows' expects int, got None"):
        Option("rows", int, 8).convert(None, OWNER)
    # a string option with a None default keeps the word "none" as a string
    assert Option("label", str, None).convert("none", OWNER) == "none"


@pytest.mark.parametrize("name", ["bitfusion", "bitfusion-cloud", "bismo-edge", "bismo-cloud"])
def test_a_saved_config_resolves_again_on_every_built_in_model(name):
    """What a checkpoint stores (the resolved config, None defaults included) must be accepted back."""
    hw = load_hardware(name)
    again = load_hardware(name, **hw.config)
    assert again.config == hw.config
    if name.startswith("bitfusion"):
        assert hw.config["core_pj_per_cycle"] is None
        assert again.energy == hw.energy


@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "Infinity"])
def test_float_options_must_be_finite(text):
    with pytest.raises(HaqError, match=r"hardware model 'bitfusion': option 'frequency_mhz' must be a finite number"):
        load_hardware("bitfusion", frequency_mhz=text)
    with pytest.raises(HaqError, match="option 'dram_pj_per_bit' must be a finite number"):
        load_hardware("bitfusion", dram_pj_per_bit=float(text))


def test_an_option_can_allow_infinity():
    opt = Option("limit", float, math.inf, finite=False)
    assert opt.convert("inf", OWNER) == math.inf


def test_every_built_in_float_option_rejects_infinity():
    checked = 0
    for name in ("bitfusion", "bitfusion-cloud", "bismo-edge", "bismo-cloud"):
        for opt in type(load_hardware(name)).options:
            if opt.type is float:
                with pytest.raises(HaqError, match="finite"):
                    opt.convert("inf", OWNER)
                checked += 1
    assert checked == 2 * 9 + 2 * 2


def test_choices_restrict_any_type():
    opt = Option("ports", int, 4, choices=(1, 2, 4))
    assert opt.convert("2", OWNER) == 2
    with pytest.raises(HaqError, match="option 'ports' must be one of 1, 2, 4; got 3"):
        opt.convert("3", OWNER)


def test_positive_check():
    assert positive(0.1) is None and positive(3) is None
    assert positive(0) == "must be greater than 0, got 0"
    opt = Option("clock", float, 1.0, check=positive)
    with pytest.raises(HaqError, match="option 'clock': must be greater than 0, got -1.0"):
        opt.convert("-1", OWNER)
    with pytest.raises(HaqError, match="frequency_mhz"):
        load_hardware("bismo-edge", frequency_mhz=0)


def test_unknown_option_lists_the_allowed_ones():
    with pytest.raises(HaqError, match=r"unknown option\(s\) colz\. Allowed options: .*cols"):
        resolve_options(OWNER, load_hardware("bitfusion").options, {"colz": 3})


def test_bank_errors_name_the_options_responsible():
    with pytest.raises(HaqError, match=r"wbuf_bytes=262144 does not split into 8000000000 equal WBUF banks "
                                       r"\(one per rows=1000000000 x cols=8\).*change rows or cols"):
        load_hardware("bitfusion", rows=1000000000)
    with pytest.raises(HaqError, match=r"hardware model 'bitfusion-cloud': ibuf_bytes=48 split into 16 banks "
                                       r"\(rows=16\) gives 3-byte IBUF banks"):
        load_hardware("bitfusion-cloud", ibuf_bytes=48)
    # explicit energy options bypass the derivation
    hw = load_hardware("bitfusion", wbuf_bytes=64, wbuf_read_pj_per_bit=0.1, wbuf_write_pj_per_bit=0.1)
    assert hw.energy.wbuf_read == 0.1


def test_a_plugin_with_a_none_default_option_resolves_its_saved_config_again():
    from haq_plugin import LayerSpec
    from haq_plugin.api.hardware import HardwareModel, LayerCost

    class Derived(HardwareModel):
        name = "derived-clock"
        options = (Option("clock_mhz", float, None, "None: derived from lanes", check=positive),
                   Option("lanes", int, 4, minimum=1))

        def setup(self) -> None:
            self.clock_hz = (self.config["clock_mhz"] or 100.0 * self.config["lanes"]) * 1e6

        def layer_cost(self, layer, weight_bits, act_bits):
            return LayerCost(latency_s=layer.macs * weight_bits * act_bits / self.clock_hz)

    hw = Derived()
    again = Derived(**hw.config)
    assert again.config == {"clock_mhz": None, "lanes": 4} and again.clock_hz == 400e6
    assert Derived(clock_mhz="none", lanes="2").clock_hz == 200e6
    fc = LayerSpec(name="fc", kind="linear", in_channels=10, out_channels=10)
    assert again.layer_cost(fc, 8, 8).latency_s == pytest.approx(100 * 64 / 400e6)
    with pytest.raises(HaqError, match="option 'clock_mhz' must be a finite number"):
        Derived(clock_mhz="inf")
