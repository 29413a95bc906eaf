"""The groupwise backend: its grids' error bounds, exactness on llama.cpp's Q4_1 grid, torchao's own grid."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from haq_plugin import HaqError, extract_layers, load_backend
from haq_plugin.adapters.groupwise.grid import SCALE_BITS, GroupGrid, as_groups
from haq_plugin.adapters.groupwise.weights import rounded_weight


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 192), nn.ReLU(), nn.Linear(192, 10))


def _prepared(**options):
    model = _mlp()
    example = torch.randn(4, 128)
    backend = load_backend("groupwise", **options)
    backend.prepare(model, example, [example])
    return model, example, backend


@pytest.mark.parametrize("group_size", [32, 64, 0])
def test_float_grid_error_is_at_most_half_a_step_at_every_width(group_size):
    weight = torch.randn(64, 192)
    grid = GroupGrid(group_size)
    groups = as_groups(weight, group_size)
    span = groups.amax(-1, keepdim=True) - groups.amin(-1, keepdim=True)
    for bits in range(2, 9):
        error = (as_groups(rounded_weight(weight, bits, grid), group_size) - groups).abs()
        step = span / (2 ** bits - 1)
        # half a step, plus the float16 rounding of the group's minimum and scale
        assert bool((error <= step / 2 + 2e-3 * span + 1e-6).all()), bits
    assert (rounded_weight(weight, 8, grid) - weight).abs().max() < 0.01 * weight.abs().max()


def test_four_bits_in_groups_of_32_reproduce_q4_1_weights_exactly():
    """llama.cpp's Q4_1: a float16 scale and minimum per 32 weights, 4-bit integers 0..15 (both ends used)."""
    torch.manual_seed(1)
    out, groups = 48, 6
    q = torch.randint(0, 16, (out, groups, 32)).float()
    q[..., 0], q[..., 1] = 0, 15
    scale = (torch.rand(out, groups, 1) * 0.02 + 1e-3).half().float()
    minimum = (-torch.rand(out, groups, 1) * 0.1).half().float()
    weight = (q * scale + minimum).reshape(out, groups * 32)
    assert torch.equal(rounded_weight(weight, 4, GroupGrid(32)), weight)
    assert not torch.equal(rounded_weight(weight, 4, GroupGrid(64)), weight)  # other groups: another grid


def test_integer_grid_is_torchaos_own_quantize_(one_thread, tmp_path):
    from torchao.quantization import quantize_

    from haq_plugin.adapters.groupwise import load_quantize_config

    model, example, backend = _prepared(group_size=32, zero_point="integer")
    names = backend.layer_names
    bits = {names[0]: (3, 8), names[1]: (5, 8), names[2]: (2, 8)}
    backend.set_policy(bits)
    path = backend.export(bits, tmp_path)
    ours = backend.model(example)
    quantize_(model, load_quantize_config(path, model), filter_fn=None)
    theirs = model(example)
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ours, _mlp()(example), atol=1e-3)  # the policy did change the outputs
    assert path == tmp_path / "groupwise_policy.json"


def test_storage_counts_each_groups_float16_scale_and_zero():
    _, _, backend = _prepared(group_size=64)
    first = backend.layers[0]  # 128 -> 64
    assert backend.weight_storage_bits(first, 3) == 64 * 128 * 3 + 64 * 2 * SCALE_BITS
    per_channel = load_backend("groupwise", group_size=0)
    assert per_channel.weight_storage_bits(first, 3) == 64 * 128 * 3 + 64 * SCALE_BITS
    assert 64 * 128 * 3 + 64 * 2 * SCALE_BITS == 64 * 128 * 3.5  # 3 bits + 32/64: 3.5 bits per weight


def test_policy_changes_only_the_layers_whose_bits_change():
    model, example, backend = _prepared(group_size=32)
    names = backend.layer_names
    backend.set_policy({name: (8, 8) for name in names})
    before = {name: dict(backend.model.named_modules())[name].weight.clone() for name in names}
    backend.set_policy({names[0]: (8, 8), names[1]: (2, 8), names[2]: (8, 8)})
    after = {name: dict(backend.model.named_modules())[name].weight for name in names}
    assert torch.equal(before[names[0]], after[names[0]]) and torch.equal(before[names[2]], after[names[2]])
    assert not torch.equal(before[names[1]], after[names[1]])
    assert len(torch.unique(as_groups(after[names[1]].detach(), 32)[0, 0])) <= 4
    backend.set_policy({name: (8, 8) for name in names})  # back: the float weights were kept
    assert torch.equal(dict(backend.model.named_modules())[names[1]].weight, before[names[1]])
    fresh = _mlp()
    assert all(torch.equal(model[i].weight, fresh[i].weight) for i in (0, 2, 4))  # the user's model is untouched


def test_mse_ranges_never_round_worse_than_full_ranges():
    torch.manual_seed(3)
    weight = torch.randn(64, 128)
    weight[::7, ::13] *= 8  # outliers, where narrowing the range pays
    for bits in (2, 3, 4):
        full = (rounded_weight(weight, bits, GroupGrid(64)) - weight).square().sum()
        mse = (rounded_weight(weight, bits, GroupGrid(64, weight_range="mse")) - weight).square().sum()
        assert mse <= full
    assert mse < full  # and strictly better with outliers at 4 bits


def test_apply_policy_writes_the_weights_the_search_evaluated(tmp_path):
    from haq_plugin.adapters.groupwise import apply_policy

    _, example, backend = _prepared(group_size=64, weight_range="mse")
    bits = dict(zip(backend.layer_names, [(4, 8), (2, 8), (3, 8)]))
    backend.set_policy(bits)
    path = backend.export(bits, tmp_path)
    fresh = apply_policy(_mlp(), path)
    assert torch.equal(fresh(example), backend.model(example))


def test_refusals_are_one_line_and_name_what_to_do(tmp_path):
    with pytest.raises(HaqError, match="group_size") as bad_size:
        load_backend("groupwise", group_size=48)
    assert "\n" not in str(bad_size.value)
    with pytest.raises(HaqError, match="zero_point=float"):
        load_backend("groupwise", weight_range="mse", zero_point="integer")
    odd = nn.Sequential(nn.Linear(96, 8))
    backend = load_backend("groupwise", group_size=64)
    with pytest.raises(HaqError, match=r"does not divide .* group sizes that divide every layer: 16, 32") as why:
        backend.prepare(odd, torch.randn(1, 96), [torch.randn(1, 96)])
    assert "\n" not in str(why.value)
    with pytest.raises(HaqError, match=r"does not support quantize='weights\+activations'.*use --quantize weights"):
        backend.quantize = "weights+activations"
    _, _, ready = _prepared()
    with pytest.raises(HaqError, match="bits"):
        ready.set_policy({name: (1, 8) for name in ready.layer_names})
    path = ready.export({name: (4, 8) for name in ready.layer_names}, tmp_path)
    from haq_plugin.adapters.groupwise import apply_policy

    with pytest.raises(HaqError, match=r"\[64, 128\] in the file but \[64, 96\]"):
        apply_policy(nn.Sequential(nn.Linear(96, 64), nn.ReLU(), nn.Linear(64, 192), nn.ReLU(), nn.Linear(192, 10)),
                     path)


def test_layers_are_found_like_every_backend_finds_them():
    model = _mlp()
    _, _, backend = _prepared()
    assert backend.layer_names == [layer.name for layer in extract_layers(model, torch.randn(1, 128))]


def test_a_latency_search_runs_weight_only_with_one_note(caplog, tmp_path):
    """The backend declares weights only: under latency (default weights+activations) it says so, once."""
    from haq_plugin import DDPGConfig, search

    model = _mlp()
    x = torch.randn(32, 128)
    with caplog.at_level("INFO"):
        result = search(model, x[:1], hardware="llm-decode", backend="groupwise", constraint="latency", budget=0.6,
                        eval_fn=lambda m: 50.0 + float(m(x).std()), calibration_data=[x], episodes=2,
                        keep_last_layer_8bit=False, progress=False,
                        ddpg=DDPGConfig(warmup_episodes=2, hidden=16, batch_size=4))
    assert result.settings.quantize == "weights"
    notes = [r.getMessage() for r in caplog.records if "groupwise" in r.getMessage() and "weights" in r.getMessage()]
    assert len(notes) == 1, notes
