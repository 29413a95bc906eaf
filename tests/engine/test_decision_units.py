"""Decision units: layers grouped per parent module or per role, fixed layers on their own, costs summed."""

from __future__ import annotations

import numpy as np
import pytest

from haq_plugin import HaqError, LayerSpec, load_backend, load_hardware
from haq_plugin.engine.costs import build_cost_table, summed_table, with_backend_storage
from haq_plugin.engine.decisions import DecisionUnits, unit_key

NAMES = [f"model.layers.{b}.{part}" for b in range(2) for part in
         ("self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj", "mlp.down_proj")] + ["lm_head"]


def _layers() -> list[LayerSpec]:
    return [LayerSpec(name=name, kind="linear", in_channels=64, out_channels=32 * (1 + k % 3))
            for k, name in enumerate(NAMES)]


def test_unit_keys_of_a_decoder():
    assert unit_key("model.layers.3.self_attn.q_proj", "block") == "model.layers.3.self_attn"
    assert unit_key("model.layers.3.self_attn.q_proj", "role") == "model.layers.*.self_attn.q_proj"
    assert unit_key("model.layers.12.mlp.down_proj", "role") == "model.layers.*.mlp.down_proj"
    assert unit_key("blocks.0.block.3", "role") == "blocks.*.block.3"  # only the block index
    assert unit_key("lm_head", "block") == "lm_head" and unit_key("fc", "role") == "fc"
    with pytest.raises(HaqError, match="layer, block, role"):
        unit_key("fc", "tensor")


def test_units_per_block_and_per_role_keep_fixed_layers_apart():
    layers = _layers()
    blocks = DecisionUnits.build(layers, "block", fixed={"lm_head": (8, 8), "model.layers.0.mlp.up_proj": (4, 8)})
    assert blocks.names == ("model.layers.0.self_attn", "model.layers.0.mlp.up_proj", "model.layers.0.mlp",
                            "model.layers.1.self_attn", "model.layers.1.mlp", "lm_head")
    assert blocks.members[2] == (3,) and blocks.members[4] == (6, 7)
    roles = DecisionUnits.build(layers, "role", fixed={"lm_head": (8, 8)})
    assert len(roles.names) == 5 and roles.members[1] == (1, 5)
    assert DecisionUnits.build(layers, "layer", fixed={}).trivial and not roles.trivial


def test_bits_expand_and_collapse_and_costs_add_up():
    layers = _layers()
    roles = DecisionUnits.build(layers, "role", fixed={"lm_head": (8, 8)})
    unit_bits = [(2, 8), (3, 8), (4, 8), (5, 8), (8, 8)]
    layer_bits = roles.expand(unit_bits)
    assert layer_bits[1] == layer_bits[5] == (3, 8) and layer_bits[-1] == (8, 8)
    assert roles.collapse(layer_bits) == unit_bits
    table = with_backend_storage(build_cost_table(load_hardware("llm-decode"), layers, bits=(2, 4, 8), cache=False),
                                 load_backend("groupwise", group_size=64))
    specs = roles.unit_specs(layers)
    summed = summed_table(table, specs, roles.members)
    for name in ("latency", "size", "bops", "energy"):
        assert np.allclose(summed.metric(name)[1], table.metric(name)[1] + table.metric(name)[5])
    assert summed.metric("size")[1, 1, 0] == (layers[1].params + layers[5].params) * 4.5 / 8
    assert specs[1].params == layers[1].params + layers[5].params and specs[-1] is layers[-1]
