"""GPTQ rounding: the column updates lower a layer's output error, on the backend's own float grid."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from haq_plugin import HaqError, load_backend
from haq_plugin.adapters.groupwise.gptq import gptq_levels, inverse_factor
from haq_plugin.adapters.groupwise.grid import GroupGrid, as_groups
from haq_plugin.adapters.groupwise.hessians import input_hessians
from haq_plugin.adapters.groupwise.weights import rounded_weight


def _correlated_inputs(rows: int, features: int, seed: int = 0) -> torch.Tensor:
    """Inputs whose features are strongly correlated, as a language model's hidden states are."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=generator) / features ** 0.5
    scales = torch.logspace(0, -2, features).unsqueeze(0)
    return (torch.randn(rows, features, generator=generator) * scales) @ mixing + 0.3


@pytest.mark.parametrize("group_size", [32, 0])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gptq_lowers_the_output_error_of_rounding_to_nearest(bits, group_size):
    torch.manual_seed(0)
    weight = torch.randn(48, 128)
    inputs = _correlated_inputs(512, 128)
    grid = GroupGrid(group_size)
    levels = gptq_levels(weight, inverse_factor(inputs.T @ inputs), bits, grid)
    gptq = levels.values(weight.shape)
    nearest = rounded_weight(weight, bits, grid)

    def output_error(rounded: torch.Tensor) -> float:
        return float((inputs @ (rounded - weight).T).square().mean())

    assert output_error(gptq) < 0.8 * output_error(nearest)
    assert int(levels.levels.max()) <= 2 ** bits - 1
    # the ranges are float16 values, as a GGUF block stores them
    assert torch.equal(levels.low, levels.low.half().float()) and torch.equal(levels.scale, levels.scale.half().float())
    assert as_groups(gptq, group_size).shape == levels.levels.shape


def test_with_uncorrelated_inputs_gptq_is_rounding_to_nearest():
    """A diagonal Hessian moves no error to other columns: every column is rounded alone."""
    torch.manual_seed(1)
    weight = torch.randn(16, 64)
    hessian = torch.diag(torch.rand(64) + 0.5)
    levels = gptq_levels(weight, inverse_factor(hessian), 3, GroupGrid(32))
    assert torch.equal(levels.values(weight.shape), rounded_weight(weight, 3, GroupGrid(32)))


def test_layers_reading_one_tensor_share_one_hessian():
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 4), nn.Linear(8, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(self.a(x) * self.b(x))

    batches = [torch.randn(5, 8), torch.randn(3, 8)]
    hessians = input_hessians(TwoHeads(), ["a", "b", "c"], batches)
    inputs = torch.cat(batches)
    assert hessians["a"] is hessians["b"]
    assert torch.allclose(hessians["a"], inputs.T @ inputs, atol=1e-5)
    assert hessians["c"].shape == (4, 4)


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_the_backend_rounds_with_gptq_and_keeps_each_width_once():
    model, inputs = _mlp(), _correlated_inputs(256, 64, seed=2)
    outputs = model(inputs).detach()
    errors = {}
    for rounding in ("nearest", "gptq"):
        backend = load_backend("groupwise", group_size=32, rounding=rounding)
        backend.prepare(model, inputs[:4], [inputs[:128], inputs[128:]])
        backend.set_policy({name: (3, 8) for name in backend.layer_names})
        with torch.no_grad():
            errors[rounding] = float((backend.model(inputs) - outputs).square().mean())
    assert errors["gptq"] < errors["nearest"]
    kept = backend._weights._levels  # 3 bits only: prepare's 8 bits round to nearest
    assert sorted(kept) == sorted((name, 3) for name in backend.layer_names)
    backend.set_policy({name: (4, 8) for name in backend.layer_names})
    backend.set_policy({name: (3, 8) for name in backend.layer_names})
    assert len(kept) == 2 * len(backend.layer_names)  # 3 bits came back from the kept levels
    backend.set_policy({name: (8, 8) for name in backend.layer_names})
    for name in backend.layer_names:
        float_weight = model.get_submodule(name).weight
        assert torch.equal(backend.model.get_submodule(name).weight, rounded_weight(float_weight, 8, GroupGrid(32)))


def test_gptq_refuses_what_it_cannot_round():
    with pytest.raises(HaqError, match="rounding=gptq needs zero_point=float"):
        load_backend("groupwise", rounding="gptq", zero_point="integer")
    conv = nn.Sequential(nn.Conv2d(3, 32, 1), nn.Flatten(), nn.Linear(32 * 4, 10))
    backend = load_backend("groupwise", group_size=0, rounding="gptq")
    example = torch.randn(2, 3, 2, 2)
    with pytest.raises(HaqError, match="rounds nn.Linear layers only; '0' is a Conv2d"):
        backend.prepare(conv, example, [example])


def test_a_gptq_policy_file_applies_the_searched_weights_given_the_calibration(tmp_path):
    import copy

    from haq_plugin import Policy
    from haq_plugin.adapters.groupwise import apply_policy

    model, inputs = _mlp(), _correlated_inputs(64, 64, seed=3)
    calibration = [inputs[:32], inputs[32:]]
    backend = load_backend("groupwise", group_size=32, rounding="gptq")
    backend.prepare(model, inputs[:4], calibration)
    bits = {name: (2 + i, 8) for i, name in enumerate(backend.layer_names)}
    backend.set_policy(bits)
    path = backend.export(Policy.from_bits(backend.layers, bits), tmp_path)
    with pytest.raises(HaqError, match="rounding=gptq, whose weights depend on calibration inputs"):
        apply_policy(copy.deepcopy(model), path)
    applied = apply_policy(copy.deepcopy(model), path, calibration_data=calibration)
    for name in backend.layer_names:
        assert torch.equal(applied.get_submodule(name).weight, backend.model.get_submodule(name).weight), name
