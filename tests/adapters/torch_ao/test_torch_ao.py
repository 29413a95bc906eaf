"""The torch.ao backend: QConfig semantics, the search inner loop, export and a user's QAT script."""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import re
import warnings

import pytest
import torch
from torch import nn
import torch.ao.nn.intrinsic as nni
import torch.ao.nn.quantized as nnq
from torch.ao.nn.intrinsic import qat as nniqat
from torch.ao.quantization import FakeQuantize, QConfig, QConfigMapping
from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver
from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

from haq_plugin import HaqError, extract_layers
from haq_plugin.adapters.torch_ao.qconfig import FullRangeSymmetricObserver
from haq_plugin.adapters.torch_ao import (
    TorchAoFxBackend, load_qconfig_mapping, prepare_qat_eager, qconfig_mapping_for)
from haq_plugin.api.plugins import load_backend
from haq_plugin.api.policy import Policy
from haq_plugin.tasks.zoo import BasicBlock, ResNet
from tests.adapters.digits import (RENAMED_HEAD_DIFFERENCE, RenamedHead, assert_names_the_wider_head, shuffled_digits,
                                   wider_head)

# User-side calls below (prepare_qat_fx, convert_fx in a user's own script) print torch's notices.
pytestmark = [pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated"),
              pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor"), pytest.mark.usefixtures("one_thread")]

# -- a small model of our own, trained on the scikit-learn digits ---------------------------------


class DigitsNet(nn.Module):
    """Conv-BN-ReLU stem, a linear bottleneck (signed output), a residual block, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.proj = nn.Sequential(nn.Conv2d(8, 12, 1, bias=False), nn.BatchNorm2d(12))
        self.expand = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(12 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(self.stem(x))
        z = self.expand(y) + y
        return self.fc(torch.flatten(self.pool(z), 1))


class BranchyNet(nn.Module):
    """A forward pass with data-dependent control flow, which torch.fx cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.amin() < 0:  # data-dependent: rescale inputs that were not scaled to [0, 1]
            x = (x - x.amin()) / (x.amax() - x.amin())
        h = self.body(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


LAYERS = ["stem.0", "proj.0", "expand.0", "fc"]
EXAMPLE = torch.zeros(1, 1, 8, 8)


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        idx = torch.arange(step * 64, step * 64 + 64) % len(y)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


def _accuracy(x: torch.Tensor, y: torch.Tensor):
    def evaluate(model: nn.Module) -> float:
        with torch.no_grad():
            return float((model(x).argmax(1) == y).float().mean() * 100)
    return evaluate


@pytest.fixture(scope="module")
def digits():
    x, y = shuffled_digits()
    return {"train": (x[:1200], y[:1200]), "val": (x[1200:], y[1200:])}


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    return _train(DigitsNet(), *digits["train"], steps=80)


@pytest.fixture
def task(trained, digits):
    x, y = digits["train"]
    return {"model": trained, "calibration": [x[:256], x[256:512]], "train": [(x[:64], y[:64]), (x[64:128], y[64:128])],
            "eval_fn": _accuracy(*digits["val"])}


@pytest.fixture
def backend(task):
    backend = TorchAoFxBackend()
    backend.prepare(task["model"], EXAMPLE, task["calibration"])
    return backend


# -- helpers that read a prepared model --------------------------------------------------------------


def _input_fake_quants(prepared: torch.fx.GraphModule, layers=LAYERS) -> dict[str, FakeQuantize]:
    """The fake-quantizer whose output is each layer's input, read from the FX graph."""
    modules = dict(prepared.named_modules(remove_duplicate=False))
    found = {}
    for node in prepared.graph.nodes:
        if node.op == "call_module" and node.target in layers:
            found[node.target] = modules[node.args[0].target]
    return found


def _ranges(fq: FakeQuantize) -> tuple[int, int]:
    return int(fq.activation_post_process.quant_min), int(fq.activation_post_process.quant_max)


def _wrange(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _arange(bits: int) -> tuple[int, int]:
    return 0, 2 ** bits - 1


def _ctor(ctor):
    return (ctor.p.func, ctor.p.keywords) if ctor is not None else None


def _describe(mapping: QConfigMapping):
    qc = lambda q: None if q is None else (_ctor(q.activation), _ctor(q.weight))  # noqa: E731
    return {
        "global": qc(mapping.global_qconfig),
        "module_name": [(name, qc(q)) for name, q in mapping.module_name_qconfigs.items()],
        "order": [(key, qc(q)) for key, q in mapping.module_name_object_type_order_qconfigs.items()],
        "object_type": list(mapping.object_type_qconfigs.items()),
        "regex": list(mapping.module_name_regex_qconfigs.items()),
    }


MIXED = {"stem.0": (2, 7), "proj.0": (3, 6), "expand.0": (5, 4), "fc": (4, 3)}


# -- registration and bit widths ---------------------------------------------------------------------


def test_registered_under_its_name_with_its_file_name_and_bits():
    backend = load_backend("torch.ao")
    assert isinstance(backend, TorchAoFxBackend)
    assert backend.export_filename == "qconfig_mapping.json"
    assert backend.supported_bits == tuple(range(2, 9))


@pytest.mark.parametrize("bad", [1, 9, 0])
def test_bit_widths_outside_2_to_8_are_refused_with_the_reason(backend, bad):
    with pytest.raises(HaqError, match=r"supports 2 to 8 bits.*\[-1, 0\]"):
        backend.set_policy({**{n: (8, 8) for n in LAYERS}, "proj.0": (bad, 8)})
    with pytest.raises(HaqError, match="activation bit width of layer 'fc'"):
        backend.set_policy({**{n: (8, 8) for n in LAYERS}, "fc": (8, bad)})


def test_policy_must_name_exactly_the_model_layers(backend):
    with pytest.raises(HaqError, match=r"the model's quantizable layers \(missing 1 layer\(s\): 'fc'\)\.$"):
        backend.set_policy({n: (8, 8) for n in LAYERS[:-1]})
    with pytest.raises(HaqError, match=r"\(unknown 1 layer\(s\): 'head'\)\.$"):
        backend.set_policy({**{n: (8, 8) for n in LAYERS}, "head": (8, 8)})
    with pytest.raises(HaqError, match="other_act_bits"):
        TorchAoFxBackend(other_act_bits=12)


# -- FX semantics ---------------------------------------------------------------------------------------


def test_observer_in_front_of_each_layer_has_that_layers_activation_bits(backend):
    """An FX activation qconfig quantizes a node's output, so each layer's a-bits sit on its producer."""
    assert backend.mode == "fx"
    backend.set_policy(MIXED)
    inputs = _input_fake_quants(backend.model)
    effective = backend.effective_act_bits()
    # The network input has no QConfig of its own: FX builds its observer from the first layer's
    # QConfig, which also builds that layer's output observer (the input of proj.0).
    assert backend.plan.shared() == [["stem.0", "proj.0"]]
    assert effective == {"stem.0": 6, "proj.0": 6, "expand.0": 4, "fc": 3}
    for name in LAYERS:
        assert _ranges(inputs[name]) == _arange(effective[name]), name
        assert _ranges(backend.model.get_submodule(name).weight_fake_quant) == _wrange(MIXED[name][0]), name
    # The residual add produces fc's input (through pool and flatten): one call of operator.add at top level.
    key = backend.plan.input_key["fc"]
    assert (key.kind, key.module_name, key.index) == ("module_name_object_type_order", "", 0)
    # Every layer not sharing an observer gets exactly its own bits.
    assert all(effective[n] == MIXED[n][1] for n in ("expand.0", "fc"))


def test_exported_mapping_builds_the_same_observers_as_the_backend(backend, task, tmp_path):
    backend.set_policy(MIXED)
    path = backend.export(MIXED, tmp_path / "q.json")
    fresh = prepare_qat_fx(copy.deepcopy(task["model"]).train(), load_qconfig_mapping(path), (EXAMPLE,))
    ours, theirs = _input_fake_quants(backend.model), _input_fake_quants(fresh)
    for name in LAYERS:
        assert _ranges(theirs[name]) == _ranges(ours[name]), name
        assert _ranges(fresh.get_submodule(name).weight_fake_quant) == \
            _ranges(backend.model.get_submodule(name).weight_fake_quant), name
    def activation_ranges(model):
        return sorted(_ranges(m) for n, m in model.named_modules()
                      if isinstance(m, FakeQuantize) and not n.endswith("weight_fake_quant"))
    assert activation_ranges(backend.model) == activation_ranges(fresh)  # every observer, not only layer inputs


def test_resnet_blocks_exported_mapping_matches_and_branch_inputs_share_one_observer(tmp_path):
    """A block input read by conv1 and by the downsample conv has one observer: both get the smaller bits."""
    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10).eval()
    x = torch.rand(1, 3, 32, 32)
    backend = TorchAoFxBackend()
    backend.prepare(model, x, [x])
    layers = backend.plan.layers
    bits = {name: (2 + i % 7, 2 + (i * 3) % 7) for i, name in enumerate(layers)}
    backend.set_policy(bits)
    assert ["layer2.0.downsample.0", "layer2.0.conv1.0"] in backend.plan.shared()
    effective = backend.effective_act_bits()
    assert effective["layer2.0.conv1.0"] == effective["layer2.0.downsample.0"] == \
        min(bits["layer2.0.conv1.0"][1], bits["layer2.0.downsample.0"][1])
    path = backend.export(bits, tmp_path / "q.json")
    fresh = prepare_qat_fx(copy.deepcopy(model).train(), load_qconfig_mapping(path), (x,))
    ours, theirs = _input_fake_quants(backend.model, layers), _input_fake_quants(fresh, layers)
    for name in layers:
        assert _ranges(theirs[name]) == _ranges(ours[name]) == _arange(effective[name]), name
        assert _ranges(fresh.get_submodule(name).weight_fake_quant) == _wrange(bits[name][0]), name


def test_conv_bn_relu_fusion_takes_the_qconfig_of_the_conv_name(task, tmp_path):
    mapping = qconfig_mapping_for(MIXED, task["model"], EXAMPLE)
    assert not any(hasattr(m, "qconfig") for m in task["model"].modules())  # traced a copy
    names = list(mapping.module_name_qconfigs)
    assert "stem.0" in names and not {"stem.1", "stem.2", "proj.1"} & set(names)
    prepared = prepare_qat_fx(copy.deepcopy(task["model"]).train(), mapping, (EXAMPLE,))
    assert type(prepared.get_submodule("stem.0")) is nniqat.ConvBnReLU2d
    assert type(prepared.get_submodule("proj.0")) is nniqat.ConvBn2d
    assert _ranges(prepared.get_submodule("stem.0").weight_fake_quant) == _wrange(2)
    assert _ranges(prepared.get_submodule("expand.0").weight_fake_quant) == _wrange(5)


def test_signed_activation_qconfig_is_silently_ignored_by_the_default_backend_config(task):
    """Why activations are affine quint8: a qint8 activation QConfig leaves the layer in float."""
    signed = QConfig(activation=FakeQuantize.with_args(observer=MinMaxObserver, quant_min=-8, quant_max=7,
                                                       dtype=torch.qint8, qscheme=torch.per_tensor_affine),
                     weight=FakeQuantize.with_args(observer=PerChannelMinMaxObserver, quant_min=-8, quant_max=7,
                                                   dtype=torch.qint8, qscheme=torch.per_channel_symmetric))
    mapping = qconfig_mapping_for({n: (8, 8) for n in LAYERS}, task["model"], EXAMPLE)
    mapping.set_module_name("expand.0", signed)
    prepared = prepare_qat_fx(copy.deepcopy(task["model"]).train(), mapping, (EXAMPLE,))
    prepared(task["calibration"][0])
    converted = convert_fx(prepared.eval())
    assert type(converted.get_submodule("expand.0")) is nni.ConvReLU2d  # still floating point
    assert type(converted.get_submodule("proj.0")) is nnq.Conv2d


def test_affine_unsigned_activations_represent_negative_inputs(task):
    """The network input and a linear bottleneck output are signed; quint8 affine keeps their sign."""
    x = task["calibration"][0] - 0.5  # network input now in [-0.5, 0.5]
    backend = TorchAoFxBackend()
    backend.prepare(task["model"], EXAMPLE, [x])
    backend.set_policy({n: (8, 6) for n in LAYERS})
    backend.calibrate()
    inputs = _input_fake_quants(backend.model)
    first = inputs["stem.0"]
    assert 0 < int(first.zero_point) < 63
    out = first(x)
    assert out.min() < -0.4
    assert (out - x).abs().max() <= float(first.scale) / 2 + 1e-6
    # proj.0 ends with BatchNorm and no ReLU: expand.0 reads negative values through its own observer.
    seen = {}
    handle = inputs["expand.0"].register_forward_hook(lambda m, a, o: seen.update(x=a[0], q=o))
    with torch.no_grad():
        backend.model(x)
    handle.remove()
    bottleneck = inputs["expand.0"]
    assert seen["x"].min() < 0 and 0 < int(bottleneck.zero_point) < 63
    assert seen["q"].min() < 0
    assert (seen["q"] - seen["x"]).abs().max() <= float(bottleneck.scale) / 2 + 1e-6


@pytest.mark.parametrize("bits", [2, 4, 6])
def test_weight_observer_keeps_converted_integers_inside_the_range(bits):
    """torch's symmetric scale puts the largest positive weight at quant_max + 1/2; convert stores 2^(w-1)."""
    lo, hi = _wrange(bits)
    # Row 0: the positive side is the larger (stock scale 1.0, so hi + 1/2 is exact and rounds up);
    # row 1: the negative side is the larger; row 2: an all-zero channel.
    weight = torch.tensor([[-0.3, 0.1, hi + 0.5], [float(lo), 0.5, 1.0], [0.0, 0.0, 0.0]])

    def integers(observer_class):
        observer = observer_class(quant_min=lo, quant_max=hi, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
        observer(weight)
        scale, zero_point = observer.calculate_qparams()
        return torch.quantize_per_channel(weight, scale, zero_point, 0, torch.qint8).int_repr()

    assert int(integers(PerChannelMinMaxObserver).max()) == hi + 1  # outside the w-bit range
    ours = integers(FullRangeSymmetricObserver)
    assert int(ours.max()) == hi and int(ours.min()) == lo  # both ends in use, nothing beyond
    assert ours[0].tolist()[2] == hi and ours[1].tolist()[0] == lo


# -- acceptance: fake quantization really uses the bits ----------------------------------------------


def test_fake_quantized_weights_and_activations_take_at_most_2_to_the_bits_levels(backend, task):
    backend.set_policy(MIXED)
    backend.calibrate()
    model = backend.model
    effective = backend.effective_act_bits()
    outputs, handles = {}, []
    for name in LAYERS:
        layer = model.get_submodule(name)
        handles.append(layer.weight_fake_quant.register_forward_hook(
            lambda m, a, o, name=name: outputs.__setitem__(("w", name), o.detach())))
    for name, fq in _input_fake_quants(model).items():
        handles.append(fq.register_forward_hook(
            lambda m, a, o, name=name: outputs.setdefault(("a", name), []).append(o)))
    with torch.no_grad():
        model(task["calibration"][0])
    for handle in handles:
        handle.remove()
    for name in LAYERS:
        w_bits, a_bits = MIXED[name]
        weight = outputs[("w", name)].flatten(1)
        levels = [len(torch.unique(row)) for row in weight]
        assert max(levels) <= 2 ** w_bits, name
        if weight.shape[1] >= 2 ** (w_bits + 1):
            assert max(levels) > 2 ** (w_bits - 1), name  # the full range is in use, not a narrower one
        # An observer shared through pooling runs twice (the add's output, then the pooled values).
        act_levels = [len(torch.unique(out)) for out in outputs[("a", name)]]
        assert max(act_levels) <= 2 ** effective[name] <= 2 ** a_bits, name
        if name != "stem.0":  # the digits themselves have only 17 grey levels
            assert act_levels[0] > 2 ** (effective[name] - 1), name


def test_fewer_bits_cost_accuracy(backend, task):
    accuracy = {}
    for bits in (8, 2):
        backend.set_policy({n: (bits, bits) for n in LAYERS})
        backend.calibrate()
        accuracy[bits] = backend.evaluate(task["eval_fn"])
    float_accuracy = task["eval_fn"](task["model"])
    assert float_accuracy > 85
    assert abs(accuracy[8] - float_accuracy) <= 1.5
    assert accuracy[2] < float_accuracy - 20


# -- the inner loop ------------------------------------------------------------------------------------


def test_set_policy_changes_ranges_in_place_without_retracing_or_copying(backend, monkeypatch):
    model = backend.model
    graph_code = model.code
    fqs = {name: id(m) for name, m in model.named_modules() if isinstance(m, FakeQuantize)}
    params = [id(p) for p in model.parameters()]
    backend.calibrate()
    act_fq = _input_fake_quants(model)["expand.0"]
    assert torch.isfinite(act_fq.activation_post_process.min_val)

    def refuse(*args, **kwargs):
        raise AssertionError("set_policy must not copy or trace the model")
    monkeypatch.setattr(copy, "deepcopy", refuse)
    monkeypatch.setattr("haq_plugin.adapters.torch_ao.plan.prepare_qat_fx", refuse)
    backend.set_policy(MIXED)
    assert backend.model is model and model.code == graph_code
    assert {name: id(m) for name, m in model.named_modules() if isinstance(m, FakeQuantize)} == fqs
    assert [id(p) for p in model.parameters()] == params
    assert act_fq.activation_post_process.min_val == float("inf")  # statistics were reset
    assert _ranges(act_fq) == _arange(4)


def test_calibrate_freezes_the_ranges(backend, task):
    backend.set_policy(MIXED)
    backend.calibrate()
    fq = _input_fake_quants(backend.model)["expand.0"]
    scale = fq.scale.clone()
    with torch.no_grad():
        backend.model(task["calibration"][0] * 5)  # far outside the calibrated range
    assert torch.equal(fq.scale, scale)


def test_finetune_trains_and_the_next_policy_restores_the_prepared_weights(backend, task):
    weights = {k: v.clone() for k, v in backend.model.state_dict().items() if k.endswith("weight")}
    backend.set_policy(MIXED)
    before = backend.evaluate(task["eval_fn"])
    backend.finetune(task["train"], steps=0)
    assert all(torch.equal(backend.model.state_dict()[k], v) for k, v in weights.items())
    backend.finetune(task["train"], steps=3, lr=1e-2)
    assert any(not torch.equal(backend.model.state_dict()[k], v) for k, v in weights.items())
    backend.set_policy(MIXED)
    assert all(torch.equal(backend.model.state_dict()[k], v) for k, v in weights.items())
    backend.calibrate()
    assert backend.evaluate(task["eval_fn"]) == before


def test_evaluate_calibrates_a_new_policy_first(backend, task):
    backend.set_policy(MIXED)
    accuracy = backend.evaluate(task["eval_fn"])
    fq = _input_fake_quants(backend.model)["fc"]
    assert not fq.observer_enabled[0]
    backend.set_policy(MIXED)
    backend.calibrate()
    assert backend.evaluate(task["eval_fn"]) == accuracy


def test_known_torch_ao_deprecations_are_filtered_only_around_our_calls(task, tmp_path):
    filters_before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend = TorchAoFxBackend()
        backend.prepare(task["model"], EXAMPLE, task["calibration"])
        backend.set_policy(MIXED)
        backend.evaluate(task["eval_fn"])
        backend.export(MIXED, tmp_path / "q.json")
        load_qconfig_mapping(tmp_path / "q.json", task["model"], EXAMPLE)
    assert not [w for w in caught if "deprecated" in str(w.message)], [str(w.message)[:80] for w in caught]
    assert warnings.filters == filters_before
    with pytest.warns(DeprecationWarning, match="torch.ao.quantization is deprecated"):
        prepare_qat_fx(copy.deepcopy(task["model"]).train(), load_qconfig_mapping(tmp_path / "q.json"),
                       (EXAMPLE,))


# -- export ------------------------------------------------------------------------------------------


def test_export_round_trips_the_exact_qconfig_mapping(backend, task, tmp_path):
    layers = extract_layers(task["model"], EXAMPLE)
    policy = Policy.from_bits(layers, MIXED)
    path = backend.export(policy, tmp_path / "sub" / "qconfig_mapping.json")
    text = path.read_text()
    data = json.loads(text)  # plain JSON: no pickles
    assert data["format"] == "haq-plugin torch.ao QConfigMapping" and data["graph"] == "traced"
    assert [e["name"] for e in data["layers"]] == LAYERS
    assert data["layers"][0]["shape"] == layers[0].shape_key()
    assert data["shared_activation_observers"] == [["stem.0", "proj.0"]]
    expected = _describe(qconfig_mapping_for(MIXED, task["model"], EXAMPLE))
    loaded = _describe(load_qconfig_mapping(path))
    assert loaded == expected
    assert [name for name, _ in loaded["module_name"]] == LAYERS
    stem = dict(loaded["module_name"])["stem.0"]
    assert stem[1] == (FakeQuantize, {"observer": FullRangeSymmetricObserver, "quant_min": -2, "quant_max": 1,
                                      "dtype": torch.qint8, "qscheme": torch.per_channel_symmetric, "ch_axis": 0})
    assert stem[0] == (FakeQuantize, {"observer": MinMaxObserver, "quant_min": 0, "quant_max": 63,
                                      "dtype": torch.quint8, "qscheme": torch.per_tensor_affine})
    assert [(key[0], key[1].__name__, key[2]) for key, _ in loaded["order"]] == [("", "add", 0)]
    assert loaded["order"][0][1][0][1]["quant_max"] == 2 ** 3 - 1  # the add feeds fc (3 bits)


def test_export_without_the_model_assumes_a_chain_and_the_model_rebuilds_it_exactly(task, tmp_path, caplog):
    layers = extract_layers(task["model"], EXAMPLE)
    with caplog.at_level(logging.WARNING, logger="haq_plugin.adapters.torch_ao"):
        path = TorchAoFxBackend().export(Policy.from_bits(layers, MIXED), tmp_path / "q.json")
    assert "without the model" in caplog.text
    assert json.loads(path.read_text())["graph"] == "assumed-chain"
    exact = _describe(load_qconfig_mapping(path, task["model"], EXAMPLE))
    assert exact == _describe(qconfig_mapping_for(MIXED, task["model"], EXAMPLE))


class RenamedNet(RenamedHead, DigitsNet):
    """DigitsNet with its classifier called ``head``: a model changed after its policy was searched."""


def test_a_renamed_layer_is_refused_with_the_example_input_and_named_in_a_warning_without(backend, task,
                                                                                          tmp_path):
    path = backend.export(MIXED, tmp_path / "q.json")
    renamed = RenamedNet().eval()
    # the unsafe form: prepare_qat_fx ignores 'fc' and gives 'head' the global QConfig, 8-bit weights
    blind = prepare_qat_fx(copy.deepcopy(renamed).train(), load_qconfig_mapping(path), (EXAMPLE,))
    assert _ranges(blind.get_submodule("head").weight_fake_quant) == _wrange(8) != _wrange(MIXED["fc"][0])
    with pytest.raises(HaqError, match=r"do not match the model's \(" + RENAMED_HEAD_DIFFERENCE + r"\)") as refusal:
        load_qconfig_mapping(path, renamed, EXAMPLE)
    assert "bit" not in str(refusal.value)
    with pytest.warns(UserWarning, match=r"names layer\(s\) this model lacks: fc; the model's layer\(s\) head "
                                         r"are not in it and would get the global QConfig \(8 bits\)"):
        mapping = load_qconfig_mapping(path, renamed)
    assert list(mapping.module_name_qconfigs) == LAYERS
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert _describe(load_qconfig_mapping(path, task["model"])) == _describe(load_qconfig_mapping(path))


def test_a_wider_model_with_the_same_layer_names_is_refused(backend, task, tmp_path):
    policy = Policy.from_bits(extract_layers(task["model"], EXAMPLE), MIXED)
    wider = wider_head(task["model"])
    for path in (backend.export(policy, tmp_path / "policy.json"), backend.export(MIXED, tmp_path / "bits.json")):
        with pytest.raises(HaqError) as refusal:
            load_qconfig_mapping(path, wider, EXAMPLE)
        assert_names_the_wider_head(str(refusal.value), task["model"], wider, EXAMPLE)
        assert _describe(load_qconfig_mapping(path, task["model"], EXAMPLE)) == _describe(load_qconfig_mapping(path))


def test_malformed_mapping_files_are_explained(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(HaqError, match="not a torch.ao QConfigMapping file"):
        load_qconfig_mapping(bad)
    with pytest.raises(HaqError, match="does not exist"):
        load_qconfig_mapping(tmp_path / "missing.json")


def test_mapping_files_cannot_import_arbitrary_code(backend, tmp_path):
    path = backend.export({n: (8, 8) for n in LAYERS}, tmp_path / "q.json")
    data = json.loads(path.read_text())
    data["qconfig_mapping"]["global"]["weight"]["class"] = "os.system"
    path.write_text(json.dumps(data))
    with pytest.raises(HaqError, match="not a class of torch.ao.quantization"):
        load_qconfig_mapping(path)


def test_summary_shows_the_effective_bits_where_an_observer_is_shared(task, tmp_path):
    """stem.0 is kept at 8 bits and shares its observer with proj.0's input: proj.0 really gets 8 bits."""
    from haq_plugin.engine.search import search

    result = search(task["model"], EXAMPLE, hardware="bismo-edge", backend="torch.ao", constraint="bops",
                    budget=0.5, eval_fn=task["eval_fn"], calibration_data=task["calibration"], episodes=1,
                    strategy="uniform", keep_last_layer_8bit=False, output_dir=tmp_path, progress=False)
    bits = result.policy.bits
    assert bits["stem.0"] == (8, 8) and bits["proj.0"][1] < 8
    exported = {e["name"]: e for e in json.loads((tmp_path / "qconfig_mapping.json").read_text())["layers"]}
    assert exported["stem.0"]["effective_activation_bits"] == 8  # a kept first layer is 8-bit, input included
    assert exported["proj.0"]["effective_activation_bits"] == 8
    rows = {line.split("|")[2].strip(): line.split("|")[5].strip()
            for line in (tmp_path / "summary.md").read_text().splitlines() if line.startswith("| ") and "`" in line}
    assert rows["`stem.0`"] == "8"
    assert rows["`proj.0`"] == f"{bits['proj.0'][1]} (8 effective)"
    assert rows["`fc`"] == str(bits["fc"][1]) and exported["fc"]["effective_activation_bits"] == bits["fc"][1]
    assert "quantizes the input of proj.0 with other bits" in (tmp_path / "summary.md").read_text()


def test_effective_bits_are_reported_only_where_activations_are_quantized(backend, task):
    from types import SimpleNamespace

    from haq_plugin.storage.report import effective_act_bits

    result = SimpleNamespace(policy=Policy.from_bits(extract_layers(task["model"], EXAMPLE), MIXED))
    assert effective_act_bits(backend, result) == {"stem.0": 6, "proj.0": 6, "expand.0": 4, "fc": 3}
    weights_only = TorchAoFxBackend()
    weights_only.quantize = "weights"
    weights_only.prepare(task["model"], EXAMPLE, task["calibration"])
    assert effective_act_bits(weights_only, result) is None  # float activations: no bits to show


def test_post_training_prepare_fx_needs_an_eval_model(backend, task, tmp_path):
    """README: the exported mapping also serves prepare_fx on an eval() model; on a train() model torch stops."""
    from torch.ao.quantization.quantize_fx import prepare_fx
    from haq_plugin.adapters.torch_ao import backend_config, convert_in_range

    bits = {name: (8, 8) if name == "stem.0" else (4, 6) for name in LAYERS}  # the README's example
    path = backend.export(bits, tmp_path / "q.json")
    mapping = load_qconfig_mapping(path, task["model"], EXAMPLE)
    with pytest.raises(AssertionError, match="Fusion only for eval!"):
        prepare_fx(copy.deepcopy(task["model"]).train(), mapping, (EXAMPLE,), backend_config=backend_config())
    ptq = prepare_fx(copy.deepcopy(task["model"]).eval(), mapping, (EXAMPLE,), backend_config=backend_config())
    for batch in task["calibration"]:
        ptq(batch)
    engine = torch.backends.quantized.engine
    torch.backends.quantized.engine = "onednn"  # exact on every CPU (see warn_if_kernels_saturate); weights
    try:                                         # are packed for the engine at convert time
        int_model = convert_in_range(ptq)
        converted = task["eval_fn"](int_model)
    finally:
        torch.backends.quantized.engine = engine
    for name, (w_bits, _) in bits.items():
        weight = int_model.get_submodule(name).weight()
        low, high = _wrange(w_bits)
        assert low <= int(weight.int_repr().min()) and int(weight.int_repr().max()) <= high, name
    backend.set_policy(bits)
    backend.calibrate()
    assert abs(converted - backend.evaluate(task["eval_fn"])) <= 1  # what the search measured


# -- a user's training script --------------------------------------------------------------------------


def test_user_script_prepare_train_convert_carries_the_policy_bits(task, digits, tmp_path):
    policy_bits = {"stem.0": (6, 5), "proj.0": (4, 5), "expand.0": (3, 7), "fc": (5, 4)}
    backend = TorchAoFxBackend()
    backend.prepare(task["model"], EXAMPLE, task["calibration"])
    path = backend.export(policy_bits, tmp_path / "qconfig_mapping.json")

    # -- what a user writes -------------------------------------------------------------
    model = copy.deepcopy(task["model"])
    mapping = load_qconfig_mapping(path)
    qat_model = prepare_qat_fx(model.train(), mapping, (EXAMPLE,))
    optimizer = torch.optim.SGD(qat_model.parameters(), lr=0.01, momentum=0.9)
    x, y = digits["train"]
    for i in range(5):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(qat_model(x[i * 64:(i + 1) * 64]), y[i * 64:(i + 1) * 64])
        loss.backward()
        optimizer.step()
    qat_model.eval()
    in_front = {name: (fq.scale.item(), int(fq.zero_point), _ranges(fq))
                for name, fq in _input_fake_quants(qat_model).items()}
    int_model = convert_fx(qat_model)
    seen = {}
    for name in LAYERS:
        int_model.get_submodule(name).register_forward_pre_hook(
            lambda m, a, name=name: seen.__setitem__(name, a[0]))
    with torch.no_grad():
        logits = int_model(digits["val"][0])
    # -----------------------------------------------------------------------------------

    assert (logits.argmax(1) == digits["val"][1]).float().mean() > 0.7
    for name, (w_bits, a_bits) in policy_bits.items():
        qweight = int_model.get_submodule(name).weight()
        ints = qweight.int_repr().flatten(1)
        lo, hi = _wrange(w_bits)
        assert lo <= int(ints.min()) and int(ints.max()) <= hi, name
        assert max(len(torch.unique(row)) for row in ints) <= 2 ** w_bits
        scale, zero_point, qrange = in_front[name]
        assert qrange == _arange(a_bits), name
        assert seen[name].is_quantized
        assert seen[name].q_scale() == pytest.approx(scale) and seen[name].q_zero_point() == zero_point, name


# -- eager mode -------------------------------------------------------------------------------------------


def test_untraceable_model_falls_back_to_eager_mode_with_one_message(digits, caplog, tmp_path):
    x, y = digits["train"]
    model = _train(BranchyNet(), x, y, steps=40)
    layers = [spec.name for spec in extract_layers(model, EXAMPLE)]
    assert layers == ["stem.0", "body.0", "fc"]
    backend = TorchAoFxBackend()
    with caplog.at_level(logging.WARNING, logger="haq_plugin.adapters.torch_ao"):
        backend.prepare(model, EXAMPLE, [x[:256]])
    messages = [r.getMessage() for r in caplog.records if r.name == "haq_plugin.adapters.torch_ao"]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert re.search(r"FX cannot trace BranchyNet .*eager mode", messages[0])
    assert backend.mode == "eager"
    assert type(backend.model.get_submodule("body.0")) is nniqat.ConvBnReLU2d

    bits = {"stem.0": (6, 5), "body.0": (3, 4), "fc": (4, 2)}
    backend.set_policy(bits)
    for name, (w_bits, a_bits) in bits.items():
        layer = backend.model.get_submodule(name)
        assert _ranges(layer.weight_fake_quant) == _wrange(w_bits)
        assert _ranges(layer.input_fake_quant) == _arange(a_bits)
    assert backend.effective_act_bits() == {name: a for name, (_, a) in bits.items()}
    seen = {}
    backend.model.get_submodule("fc").input_fake_quant.register_forward_hook(
        lambda m, a, o: seen.__setitem__("fc", o))
    eval_fn = _accuracy(*digits["val"])
    backend.set_policy({n: (8, 8) for n in layers})
    assert backend.evaluate(eval_fn) >= eval_fn(model) - 2
    backend.set_policy(bits)
    backend.evaluate(eval_fn)
    assert len(torch.unique(seen["fc"])) <= 4

    path = backend.export(bits, tmp_path / "q.json")
    assert json.loads(path.read_text())["mode"] == "eager"
    rebuilt = prepare_qat_eager(model, load_qconfig_mapping(path))
    for name, (w_bits, a_bits) in bits.items():
        assert _ranges(rebuilt.get_submodule(name).weight_fake_quant) == _wrange(w_bits)
        assert _ranges(rebuilt.get_submodule(name).input_fake_quant) == _arange(a_bits)
    with pytest.raises(HaqError, match="cannot trace BranchyNet"):
        TorchAoFxBackend(mode="fx").prepare(model, EXAMPLE, [x[:64]])


# -- the embedded demo ---------------------------------------------------------------------------------

_HAS_DEMO = importlib.util.find_spec("haq_plugin.tasks.demo") is not None


@pytest.fixture(scope="module")
def demo():
    from haq_plugin.tasks.demo import load_demo

    return load_demo()


@pytest.mark.slow
@pytest.mark.skipif(not _HAS_DEMO, reason="haq_plugin.tasks.demo is not available yet")
def test_demo_uniform_8_bit_keeps_accuracy_and_2_bit_loses_it(demo):
    backend = TorchAoFxBackend()
    backend.prepare(demo.model, demo.example_input, demo.calibration_data)
    names = backend.plan.layers
    backend.set_policy({n: (8, 8) for n in names})
    eight = backend.evaluate(demo.eval_fn)
    backend.set_policy({n: (2, 2) for n in names})
    two = backend.evaluate(demo.eval_fn)
    assert abs(eight - demo.float_val_accuracy) <= 0.5
    assert two < demo.float_val_accuracy - 30
