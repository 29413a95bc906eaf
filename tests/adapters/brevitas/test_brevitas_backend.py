"""The ``brevitas`` backend: real Brevitas quant layers whose bit widths change in place."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import brevitas.nn as qnn
from brevitas.quant_tensor import QuantTensor

from haq_plugin.adapters.brevitas import BrevitasBackend, apply_policy
from haq_plugin.api.errors import HaqError
from haq_plugin.api.layers import extract_layers
from haq_plugin.api.plugins import get_plugin_manager, load_backend
from haq_plugin.api.policy import Policy
from tests.adapters.digits import RENAMED_HEAD_DIFFERENCE, assert_names_the_wider_head, wider_head

QUANT_LAYERS = (qnn.QuantConv1d, qnn.QuantConv2d, qnn.QuantLinear)


# -- a small digits model of our own: signed network input, ReLU, BatchNorm, linear bottleneck --
class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)  # no ReLU after it: conv3 reads a signed input
        self.conv3 = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        x = torch.relu(self.conv3(x))
        return self.fc(x.mean(dim=(2, 3)))


NAMES = ["conv1", "conv2", "conv3", "fc"]


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1)
    x = (x - x.mean()) / x.std()  # standardised: the network input takes negative values
    return x, torch.tensor(data.target)


@pytest.fixture(scope="module")
def task():
    """A SmallNet trained for 80 Adam steps on the digits, with train/calibration/validation batches."""
    torch.manual_seed(0)
    x, y = digits()
    model = SmallNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(80):
        i = (step * 64) % 1200
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
        opt.step()
    model.eval()
    val_x, val_y = x[1300:], y[1300:]

    def eval_fn(m: nn.Module) -> float:
        return float((m(val_x).argmax(1) == val_y).float().mean() * 100)

    train = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 1200, 64)]
    return {"model": model, "example": x[:1], "calib": [x[:128], x[128:256]], "train": train,
            "eval_fn": eval_fn, "val_x": val_x}


@pytest.fixture
def backend(task) -> BrevitasBackend:
    b = load_backend("brevitas")
    b.prepare(task["model"], task["example"], task["calib"])
    return b


def quant_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QUANT_LAYERS)}


def capture_quant_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, QuantTensor]:
    """Each quant layer's quantized input (the output of its Brevitas input quantizer)."""
    seen: dict[str, QuantTensor] = {}
    hooks = [layer.input_quant.register_forward_hook(
        lambda mod, args, out, name=name: seen.__setitem__(name, out))
        for name, layer in quant_layers(model).items()]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return seen


# -- registration --------------------------------------------------------------------------
def test_backend_is_registered_through_its_entry_point():
    manager = get_plugin_manager()
    assert "brevitas" in manager.backends.names()
    assert not [p for p in manager.problems if p.plugin == "brevitas"]
    backend = load_backend("brevitas")
    assert isinstance(backend, BrevitasBackend)
    assert backend.export_filename == "brevitas_policy.json"
    assert backend.supported_bits == (2, 3, 4, 5, 6, 7, 8)
    assert backend.config == {"act_range": "percentile", "act_percentile": 99.99, "weight_range": "mse",
                              "clip_weights": None}


def test_bad_options_are_user_errors():
    with pytest.raises(HaqError, match="act_range"):
        load_backend("brevitas", act_range="kl")
    with pytest.raises(HaqError, match="act_percentile"):
        load_backend("brevitas", act_percentile="150")


# -- prepare -------------------------------------------------------------------------------
def test_prepare_converts_every_layer_to_a_brevitas_quant_layer_and_keeps_the_float_model(task, backend):
    layers = quant_layers(backend.model)
    assert {n: type(m) for n, m in layers.items()} == {
        "conv1": qnn.QuantConv2d, "conv2": qnn.QuantConv2d, "conv3": qnn.QuantConv2d, "fc": qnn.QuantLinear}
    assert not quant_layers(task["model"]), "the user's float model is left untouched"
    for layer in layers.values():
        assert layer.quant_weight().bit_width == 8 and layer.input_quant.bit_width() == 8
        assert layer.bias_quant.is_quant_enabled is False, "biases stay in floating point"
    # weights per output channel: one scale per output channel
    assert backend.model.conv2.quant_weight().scale.shape == (16, 1, 1, 1)
    assert backend.model.fc.quant_weight().scale.shape == (10, 1)
    assert backend.evaluate(task["eval_fn"]) == pytest.approx(task["eval_fn"](task["model"]), abs=1.0)


def test_input_signs_follow_the_data(task, backend):
    # standardised network input and a BatchNorm output without ReLU are signed; ReLU outputs are not
    assert backend.input_signs == {"conv1": True, "conv2": False, "conv3": True, "fc": False}
    for name, layer in quant_layers(backend.model).items():
        assert layer.input_quant.is_signed == backend.input_signs[name]


def test_conv1d_models_get_quant_conv1d_layers():
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(24, 3)).eval()
    x = torch.randn(16, 2, 8)
    backend = load_backend("brevitas")
    backend.prepare(model, x[:1], [x])
    backend.set_policy({"0": (3, 5), "3": (6, 2)})
    backend.calibrate()
    conv, fc = backend.model[0], backend.model[3]
    assert isinstance(conv, qnn.QuantConv1d) and isinstance(fc, qnn.QuantLinear)
    assert (conv.quant_weight().bit_width, conv.input_quant.bit_width()) == (3, 5)
    assert (fc.quant_weight().bit_width, fc.input_quant.bit_width()) == (6, 2)


def test_layers_that_never_run_stay_in_floating_point():
    class WithSpareHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 5))
            self.spare = nn.Sequential(nn.Linear(5, 5))  # defined but not called in forward

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    x = torch.randn(8, 1, 8, 8)
    backend = load_backend("brevitas")
    backend.prepare(WithSpareHead().eval(), x[:1], [x])
    assert set(quant_layers(backend.model)) == {"body.0", "body.3"}
    assert type(backend.model.spare[0]) is nn.Linear


def test_prepare_needs_calibration_data(task):
    with pytest.raises(HaqError, match="calibration_data is empty"):
        load_backend("brevitas").prepare(task["model"], task["example"], [])


def test_methods_before_prepare_are_user_errors():
    backend = load_backend("brevitas")
    with pytest.raises(HaqError, match="prepare"):
        backend.set_policy({"conv1": (8, 8)})
    with pytest.raises(HaqError, match="prepare"):
        _ = backend.model


# -- bits really used ----------------------------------------------------------------------
MIXED = {"conv1": (2, 7), "conv2": (5, 3), "conv3": (8, 2), "fc": (3, 6)}


def test_mixed_policy_weights_take_at_most_2_pow_w_values_per_channel_exactly_as_computed(task):
    backend = load_backend("brevitas", weight_range="minmax")  # the plain per-channel maximum, recomputed below
    backend.prepare(task["model"], task["example"], task["calib"])
    backend.set_policy(MIXED)
    backend.calibrate()
    for name, layer in quant_layers(backend.model).items():
        w_bits = MIXED[name][0]
        quant = layer.quant_weight()
        assert quant.bit_width == w_bits
        values = quant.value.detach().flatten(1)
        for row in values:
            assert len(torch.unique(row)) <= 2 ** w_bits
        # independent reference: symmetric narrow-range rounding with a per-channel max scale
        weight = layer.weight.detach().flatten(1)
        qmax = 2 ** (w_bits - 1) - 1
        scale = weight.abs().amax(dim=1, keepdim=True) / qmax
        expected = torch.clamp(torch.round(weight / scale), -qmax, qmax) * scale
        torch.testing.assert_close(values, expected, rtol=1e-5, atol=1e-6)
        assert (values / scale).round().abs().amax() == qmax, "the full integer range is used"


def test_mixed_policy_inputs_take_at_most_2_pow_a_levels(task, backend):
    backend.set_policy(MIXED)
    backend.calibrate()
    inputs = capture_quant_inputs(backend.model, task["val_x"])
    for name, quant in inputs.items():
        a_bits = MIXED[name][1]
        assert isinstance(quant, QuantTensor) and int(quant.bit_width) == a_bits
        assert len(torch.unique(quant.value)) <= 2 ** a_bits
        ints = quant.value / quant.scale
        torch.testing.assert_close(ints, ints.round(), rtol=0, atol=1e-3)
        low, high = (-2 ** (a_bits - 1), 2 ** (a_bits - 1) - 1) if quant.signed else (0, 2 ** a_bits - 1)
        assert ints.round().min() >= low and ints.round().max() == high, "clipped at the calibrated range"


def test_set_policy_changes_bits_in_place_without_new_modules(task, backend):
    model = backend.model
    modules_before = [id(m) for m in model.modules()]
    out8 = model(task["val_x"]).detach()
    backend.set_policy({name: (2, 2) for name in NAMES})
    backend.calibrate()
    assert backend.model is model and [id(m) for m in model.modules()] == modules_before
    for layer in quant_layers(model).values():
        assert layer.quant_weight().bit_width == 2 and layer.input_quant.bit_width() == 2
    assert not torch.allclose(model(task["val_x"]), out8)
    assert backend.bits == {name: (2, 2) for name in NAMES}


def test_calibration_resets_previous_statistics_and_keeps_the_range(backend):
    """With percentile ranges the calibrated range, scale x integer threshold, is the same at every bit width."""
    def input_scales() -> dict[str, float]:
        return {n: float(layer.input_quant.scale().detach()) for n, layer in quant_layers(backend.model).items()}

    def levels(bits: int, signed: bool) -> int:
        return 2 ** (bits - 1) if signed else 2 ** bits - 1  # Brevitas' IntScaling threshold

    backend.calibrate()
    first = input_scales()
    backend.set_policy({name: (4, 3) for name in NAMES})
    backend.calibrate()
    backend.calibrate()  # statistics do not accumulate over calls
    three_bit = input_scales()
    for name, signed in backend.input_signs.items():
        range8, range3 = first[name] * levels(8, signed), three_bit[name] * levels(3, signed)
        assert range3 == pytest.approx(range8, rel=1e-5)


def count_forwards(model: nn.Module) -> list[int]:
    calls = [0]
    model.register_forward_pre_hook(lambda module, args: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("act_range", ["percentile", "mse"])
def test_restored_input_ranges_equal_a_new_calibration_bit_for_bit(task, act_range):
    """Ranges found on the prepared weights are reused; a finetune in between does not spoil them."""
    calib = task["calib"] if act_range == "percentile" else [task["calib"][0][:48]]
    cached, fresh = (load_backend("brevitas", act_range=act_range) for _ in range(2))
    for b in (cached, fresh):
        b.prepare(task["model"], task["example"], calib)
    passes, calibration_passes = count_forwards(cached.model), 0
    policies = [MIXED, {name: (3, 8) for name in NAMES}, MIXED, {name: (4, 2) for name in NAMES}]
    for i, bits in enumerate(policies):
        for b in (cached, fresh):
            b.set_policy(bits)
        fresh._ranges.clear()  # always calibrates anew
        fresh.calibrate()
        before = passes[0]
        cached.calibrate()
        calibration_passes += passes[0] - before
        state, expected = cached.model.state_dict(), fresh.model.state_dict()
        assert all(torch.equal(state[k], expected[k]) for k in expected)
        assert cached.evaluate(task["eval_fn"]) == fresh.evaluate(task["eval_fn"])
        if i == 1:
            for b in (cached, fresh):
                b.finetune(task["train"], steps=3, lr=3e-3)
    # percentile ranges do not depend on the bits: only prepare calibrated; MSE ranges do, per input width
    assert calibration_passes == (0 if act_range == "percentile" else 2 * len(calib))


def test_weight_only_calibration_has_nothing_to_collect(task):
    backend = load_backend("brevitas")
    backend.quantize = "weights"
    backend.prepare(task["model"], task["example"], task["calib"])
    passes = count_forwards(backend.model)
    backend.set_policy(MIXED)
    before = {k: t.clone() for k, t in backend.model.state_dict().items()}
    backend.calibrate()
    assert passes[0] == 0
    after = backend.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(not layer.input_quant.is_quant_enabled for layer in quant_layers(backend.model).values())


@pytest.mark.parametrize("act_range", ["percentile", "mse"])
def test_bits_changed_in_place_quantize_exactly_like_a_freshly_built_model(task, tmp_path, act_range):
    calib = task["calib"] if act_range == "percentile" else [task["calib"][0][:48]]  # MSE search is slow
    backend = load_backend("brevitas", act_range=act_range)
    backend.prepare(task["model"], task["example"], calib)
    layers = extract_layers(task["model"], task["example"])
    scales = {}
    for bits in (MIXED, {name: (3, 8) for name in NAMES}):
        backend.set_policy(bits)
        backend.calibrate()
        scales[bits["conv3"][1]] = float(backend.model.conv3.input_quant.scale().detach())
        path = backend.export(Policy.from_bits(layers, bits), tmp_path / f"{act_range}.json")
        fresh = apply_policy(task["model"], path, calibration_data=calib).eval()
        with torch.no_grad():
            torch.testing.assert_close(backend.model(task["val_x"]), fresh(task["val_x"]))
    # conv3 has a signed input; its range is scale x 2**(bits - 1)
    range2, range8 = scales[2] * 2, scales[8] * 2 ** 7
    if act_range == "percentile":
        assert range2 == pytest.approx(range8, rel=1e-5), "percentile ranges do not depend on the bits"
    else:
        assert range2 < 0.8 * range8, "MSE clips harder when there are fewer levels"


@pytest.mark.parametrize("bad, message", [
    ({"conv1": (1, 8), "conv2": (8, 8), "conv3": (8, 8), "fc": (8, 8)}, "1 bit is refused"),
    ({"conv1": (8, 9), "conv2": (8, 8), "conv3": (8, 8), "fc": (8, 8)}, "More than 8 bits"),
    ({"conv1": (8, 8), "conv2": (8, 8), "conv3": (8, 8)}, r"\(missing 1 layer\(s\): 'fc'\)\.$"),
    ({"conv1": (8, 8), "conv2": (8, 8), "conv3": (8, 8), "fc": (8, 8), "head": (8, 8)},
     r"\(unknown 1 layer\(s\): 'head'\)\.$"),
    ({"conv1": (8.5, 8), "conv2": (8, 8), "conv3": (8, 8), "fc": (8, 8)}, "conv1"),
])
def test_unsupported_bits_are_refused_with_the_reason(backend, bad, message):
    with pytest.raises(HaqError, match=message):
        backend.set_policy(bad)


# -- finetuning ----------------------------------------------------------------------------
def test_finetune_zero_steps_is_a_no_op(task, backend):
    before = {n: t.clone() for n, t in backend.model.state_dict().items()}
    backend.finetune(task["train"], steps=0)
    after = backend.model.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_finetune_trains_and_episodes_stay_independent(task, backend):
    low = {name: (3, 3) for name in NAMES}
    backend.set_policy(low)
    backend.calibrate()
    plain = backend.evaluate(task["eval_fn"])
    weight_before = backend.model.conv2.weight.detach().clone()
    backend.finetune(task["train"], steps=15, lr=3e-3)
    assert not torch.equal(backend.model.conv2.weight, weight_before)
    assert not backend.model.training
    tuned = backend.evaluate(task["eval_fn"])
    assert tuned > plain, "quantization-aware training recovers accuracy at 3 bits"
    # the next episode starts from the prepared weights again
    backend.set_policy(low)
    assert torch.equal(backend.model.conv2.weight, weight_before)
    backend.calibrate()
    assert backend.evaluate(task["eval_fn"]) == pytest.approx(plain)


def test_finetune_needs_labelled_batches(task, backend):
    with pytest.raises(HaqError, match="inputs, targets"):
        backend.finetune(task["calib"], steps=2)


# -- export and apply_policy ---------------------------------------------------------------
def test_export_writes_the_documented_json(task, backend, tmp_path):
    layers = extract_layers(task["model"], task["example"])
    policy = Policy.from_bits(layers, MIXED, hardware="test")
    path = backend.export(policy, tmp_path)
    assert path == tmp_path / "brevitas_policy.json"
    data = json.loads(path.read_text())
    assert data["format"] == "haq_plugin.brevitas_policy" and data["format_version"] == 1
    assert data["example_input_shape"] == [1, 1, 8, 8]
    assert data["quantizers"]["weight"].endswith("Int8WeightPerChannelFloat")
    assert data["quantizers"]["act_range"] == "percentile" and data["quantizers"]["bias"] is None
    assert [(e["name"], e["quant_layer"], e["weight_bit_width"], e["input_bit_width"], e["input_signed"])
            for e in data["layers"]] == [
        ("conv1", "QuantConv2d", 2, 7, True), ("conv2", "QuantConv2d", 5, 3, False),
        ("conv3", "QuantConv2d", 8, 2, True), ("fc", "QuantLinear", 3, 6, False)]
    assert Policy.from_dict(data["policy"]).bits == MIXED


def test_apply_policy_checks_the_fingerprint_and_the_file(task, backend, tmp_path):
    layers = extract_layers(task["model"], task["example"])
    path = backend.export(Policy.from_bits(layers, MIXED), tmp_path / "p.json")
    other = SmallNet()
    other.conv3 = nn.Conv2d(16, 16, 3, padding=1)
    with pytest.raises(HaqError, match="different model"):
        apply_policy(other, path)
    data = json.loads(path.read_text())
    data["layers"][1]["weight_bit_width"] = 7
    (tmp_path / "edited.json").write_text(json.dumps(data))
    with pytest.raises(HaqError, match="edited inconsistently"):
        apply_policy(task["model"], tmp_path / "edited.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something"}))
    with pytest.raises(HaqError, match="not a Brevitas policy file"):
        apply_policy(task["model"], tmp_path / "other.json")


class RenamedSmallNet(SmallNet):
    """SmallNet with its classifier called ``head``: a model changed after its policy was searched."""

    def __init__(self) -> None:
        super().__init__()
        self.head = self.fc
        del self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv3(self.bn2(self.conv2(x))))
        return self.head(x.mean(dim=(2, 3)))


def test_apply_policy_refuses_a_wider_or_renamed_model_in_the_shared_words(task, backend, tmp_path):
    path = backend.export(Policy.from_bits(extract_layers(task["model"], task["example"]), MIXED), tmp_path)
    wider = wider_head(task["model"])
    with pytest.raises(HaqError) as refusal:
        apply_policy(wider, path)
    assert_names_the_wider_head(str(refusal.value), task["model"], wider, task["example"])
    with pytest.raises(HaqError, match=r"layers do not match the model's \(" + RENAMED_HEAD_DIFFERENCE + r"\)"):
        apply_policy(RenamedSmallNet().eval(), path)
    assert set(quant_layers(apply_policy(task["model"], path))) == set(NAMES)


def test_user_applies_a_policy_trains_and_keeps_the_bits(task, backend, tmp_path):
    """What a user does with the exported file: apply, train with their own loop, check, export."""
    layers = extract_layers(task["model"], task["example"])
    path = backend.export(Policy.from_bits(layers, MIXED), tmp_path / "brevitas_policy.json")
    float_model = SmallNet()
    float_model.load_state_dict(task["model"].state_dict())
    qmodel = apply_policy(float_model, path, calibration_data=task["calib"])
    optimizer = torch.optim.SGD(qmodel.parameters(), lr=0.01, momentum=0.9)
    qmodel.train()
    weight_before = qmodel.conv2.weight.detach().clone()
    for x, y in task["train"][:5]:
        optimizer.zero_grad()
        nn.functional.cross_entropy(qmodel(x), y).backward()
        optimizer.step()
    qmodel.eval()
    assert not torch.equal(qmodel.conv2.weight, weight_before)
    for name, layer in quant_layers(qmodel).items():
        assert layer.quant_weight().bit_width == MIXED[name][0]
        assert layer.input_quant.bit_width() == MIXED[name][1]
        assert layer.input_quant.is_signed == backend.input_signs[name]
    assert not quant_layers(float_model)

    # Brevitas' QONNX exporter needs onnx and onnxoptimizer (the 'onnx' extra, part of 'dev'). Its default
    # is torch's dynamo exporter (from torch 2.9 on); the TorchScript one (dynamo=False) must agree with it.
    expected = sorted(b for pair in MIXED.values() for b in pair)
    assert qonnx_quant_widths(qmodel, task["example"], tmp_path / "default.onnx") == expected
    assert qonnx_quant_widths(qmodel, task["example"], tmp_path / "torchscript.onnx", dynamo=False) == expected


def qonnx_quant_widths(qmodel: nn.Module, example: torch.Tensor, path, **export_kwargs) -> list[int]:
    """The bit widths of the ``Quant`` nodes that Brevitas' QONNX exporter writes for ``qmodel``, sorted."""
    pytest.importorskip("onnx", reason="install the 'onnx' extra for Brevitas' QONNX exporter")
    pytest.importorskip("onnxoptimizer", reason="install the 'onnx' extra for Brevitas' QONNX exporter")
    import onnx
    from onnx import numpy_helper
    from brevitas.export import export_qonnx

    export_qonnx(copy.deepcopy(qmodel).eval(), args=example, export_path=str(path), **export_kwargs)
    exported = onnx.load(str(path))
    nodes = list(exported.graph.node) + [n for f in exported.functions for n in f.node]
    constants = {init.name: numpy_helper.to_array(init) for init in exported.graph.initializer}
    constants.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t)
                      for n in nodes if n.op_type == "Constant"})
    return sorted(int(constants[n.input[3]]) for n in nodes if n.op_type == "Quant")


# -- the demo task -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo():
    demo_module = pytest.importorskip("haq_plugin.tasks.demo", reason="haq_plugin.tasks.demo is not available")
    return demo_module.load_demo()


def test_demo_uniform_8_bit_matches_float_and_2_bit_collapses(demo):
    backend = load_backend("brevitas")
    backend.prepare(demo.model, demo.example_input, demo.calibration_data)
    names = [layer.name for layer in extract_layers(demo.model, demo.example_input)]
    results = {}
    for bits in (8, 2):
        backend.set_policy({name: (bits, bits) for name in names})
        backend.calibrate()
        results[bits] = backend.evaluate(demo.eval_fn)
    float_accuracy = demo.eval_fn(demo.model)
    assert abs(results[8] - float_accuracy) <= 0.5
    assert results[2] < float_accuracy - 20
    # non-negative pixels, ReLU6 outputs unsigned; linear bottleneck outputs signed
    signs = backend.input_signs
    assert signs["features.0.0"] is False and signs["features.1.conv.0.0"] is False
    assert signs["features.2.conv.0.0"] is True and signs["features.3.conv.0.0"] is True


@pytest.mark.slow
def test_demo_policy_exports_with_the_default_exporter_on_a_narrow_range_weight_grid(demo, tmp_path):
    """README: Brevitas' default (dynamo) QONNX exporter works on the demo; its 2-bit weights are ternary."""
    from haq_plugin.adapters.common.integer_ranges import weight_range

    layers = extract_layers(demo.model, demo.example_input)
    bits = {layer.name: (2 + i % 7, 2 + (i * 3) % 7) for i, layer in enumerate(layers)}
    backend = BrevitasBackend()
    backend.prepare(demo.model, demo.example_input, demo.calibration_data)
    path = backend.export(Policy.from_bits(layers, bits), tmp_path / "brevitas_policy.json")
    qmodel = apply_policy(demo.model, path, calibration_data=demo.calibration_data)
    for name, (w_bits, _) in bits.items():
        quant = qmodel.get_submodule(name).quant_weight()
        integers = torch.round(quant.value / quant.scale)
        top = 2 ** (w_bits - 1) - 1
        assert integers.min() >= -top and integers.max() <= top, name  # narrow range: never -2^(w-1)
    two_bit = [name for name, (w, _) in bits.items() if w == 2]
    ternary = torch.round(qmodel.get_submodule(two_bit[0]).quant_weight().value
                          / qmodel.get_submodule(two_bit[0]).quant_weight().scale).unique()
    assert ternary.tolist() == [-1.0, 0.0, 1.0] and weight_range(2) == (-2, 1)  # torch.ao: full range
    expected = sorted(b for pair in bits.values() for b in pair)
    assert qonnx_quant_widths(qmodel, demo.example_input, tmp_path / "demo.onnx") == expected
