"""Bits-per-weight budgets: parsed, counted with the backend's scales, turned into a fraction of the 8-bit size."""

from __future__ import annotations

import pytest

from haq_plugin import HaqError, LayerSpec, load_backend, load_hardware
from haq_plugin.engine.costs import build_cost_table, with_backend_storage
from haq_plugin.engine.bits_per_weight import (bits_per_weight_fraction, parse_bits_per_weight,
                                               policy_bits_per_weight)

LAYERS = [LayerSpec(name=f"l{i}", kind="linear", in_channels=576, out_channels=out)
          for i, out in enumerate((576, 192, 1536))] + [LayerSpec(name="lm_head", kind="linear", in_channels=576,
                                                                  out_channels=4096)]


def _table(backend):
    """The search's cost table of LAYERS, sized as ``backend`` stores them."""
    return with_backend_storage(build_cost_table(load_hardware("llm-decode"), LAYERS, bits=range(2, 9), cache=False),
                                backend)


def test_parse():
    assert parse_bits_per_weight("3.5bpw") == 3.5 and parse_bits_per_weight(" 3BPW ") == 3.0
    assert parse_bits_per_weight("0.5") is None and parse_bits_per_weight(0.5) is None


def test_groups_of_64_add_half_a_bit_and_the_fraction_is_exact():
    backend = load_backend("groupwise", group_size=64)
    bits = {"l0": (3, 8), "l1": (3, 8), "l2": (3, 8), "lm_head": (8, 8)}
    assert policy_bits_per_weight(LAYERS, bits, backend, names=["l0", "l1", "l2"]) == pytest.approx(3.5)
    fraction = bits_per_weight_fraction(3.5, _table(backend), {"lm_head": 8}, allowed=range(2, 9))
    total8 = sum(layer.params for layer in LAYERS) * 8.5
    free = sum(layer.params for layer in LAYERS[:3])
    assert fraction == pytest.approx((3.5 * free + 8.5 * LAYERS[3].params) / total8)
    plain = load_backend("torchao")  # no group scales: params x bits
    assert policy_bits_per_weight(LAYERS, bits, plain, names=["l0"]) == 3.0


def test_a_budget_below_the_smallest_size_names_it():
    backend = load_backend("groupwise", group_size=64)
    with pytest.raises(HaqError, match=r"2bpw is below .* 2\.5 bits per weight"):
        bits_per_weight_fraction(2.0, _table(backend), {"lm_head": 8}, allowed=range(2, 9))
