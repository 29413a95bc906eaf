"""The torchao PT2E backend: annotations, the search inner loop, the export file and a user's own scripts."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from haq_plugin import HaqError, extract_layers
from haq_plugin.adapters.torchao.quantizer import LAYER_OPS, LayerBitsQuantizer, layer_nodes
from haq_plugin.adapters.torchao import TorchaoPt2eBackend, load_quantize_config, load_quantizer
from haq_plugin.cli import cli
from haq_plugin.api.plugins import load_backend
from haq_plugin.api.policy import Policy

from torchao.quantization import IntxWeightOnlyConfig, quantize_
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
from tests.adapters.digits import (RENAMED_HEAD_DIFFERENCE, RenamedHead, assert_names_the_wider_head, shuffled_digits,
                                   wider_head)

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")]

DEQUANT_PER_CHANNEL = torch.ops.quantized_decomposed.dequantize_per_channel.default
DEQUANT_PER_TENSOR = torch.ops.quantized_decomposed.dequantize_per_tensor.default


class DigitsNet(nn.Module):
    """Conv-ReLU stem, a 1x1 projection, a residual 3x3 block, a classifier.

    No BatchNorm: torchao's conv-BN folding costs about a minute per convert on a
    loaded CPU; the demo tests (MobileNet-V2 with BN) cover the folding.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.proj = nn.Sequential(nn.Conv2d(8, 12, 1))
        self.expand = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(12 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(self.stem(x))
        z = self.expand(y) + y
        return self.fc(torch.flatten(self.pool(z), 1))


class RenamedNet(RenamedHead, DigitsNet):
    """DigitsNet with its classifier called ``head``."""


class BranchyNet(DigitsNet):
    """A forward pass that branches on the data, which torch.export cannot capture."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(self.stem(x))
        if y.mean() > 0:
            y = self.expand(y) + y
        return self.fc(torch.flatten(self.pool(y), 1))


LAYERS = ["stem.0", "proj.0", "expand.0", "fc"]
MIXED = {"stem.0": (4, 3), "proj.0": (2, 8), "expand.0": (6, 5), "fc": (3, 2)}
EXAMPLE = torch.zeros(1, 1, 8, 8)


@pytest.fixture(scope="module")
def digits():
    return shuffled_digits()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean() * 100)


@pytest.fixture(scope="module")
def task(digits):
    x, y = digits
    torch.manual_seed(0)
    model = DigitsNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(80):
        i = (step * 64) % 1200
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
        opt.step()
    model.eval()
    return {"model": model, "calibration": [x[:256]], "train": [(x[i:i + 64], y[i:i + 64]) for i in range(0, 512, 64)],
            "eval_fn": lambda m: accuracy(m, x[1300:], y[1300:]), "val": (x[1300:], y[1300:]),
            "float": accuracy(model, x[1300:], y[1300:])}


@pytest.fixture(scope="module")
def backend(task) -> TorchaoPt2eBackend:
    backend = TorchaoPt2eBackend()
    backend.prepare(task["model"], EXAMPLE, task["calibration"])
    return backend


def layer_ops(graph_module) -> list:
    """The conv/linear nodes in graph order (conversion can drop a node's module name, not its place)."""
    return [node for node in graph_module.graph.nodes if node.op == "call_function" and node.target in LAYER_OPS]


def converted_ranges(graph_module) -> dict[str, dict[str, tuple]]:
    """Layer -> the (quant_min, quant_max, dtype) of the dequantize ops feeding its weight and its input."""
    ranges = {}
    for name, node in zip(LAYERS, layer_ops(graph_module), strict=True):
        weight, inp = node.args[1], node.args[0]
        ranges[name] = {"weight": tuple(weight.args[-3:]) if weight.target == DEQUANT_PER_CHANNEL else None,
                        "input": tuple(inp.args[-3:]) if inp.target == DEQUANT_PER_TENSOR else None}
    return ranges


def integer_weights(graph_module) -> dict[str, torch.Tensor]:
    """Layer -> the stored integer weight tensor of the converted graph."""
    return {name: getattr(graph_module, node.args[1].args[0].target)
            for name, node in zip(LAYERS, layer_ops(graph_module), strict=True)}


def expected_ranges(bits) -> dict[str, dict[str, tuple]]:
    return {name: {"weight": (-2 ** (w - 1), 2 ** (w - 1) - 1, torch.int8),
                   "input": None if a is None else (0, 2 ** a - 1, torch.uint8)} for name, (w, a) in bits.items()}


# -- the backend ----------------------------------------------------------------------------------
def test_registered_with_its_file_name_and_bits():
    backend = load_backend("torchao")
    assert isinstance(backend, TorchaoPt2eBackend)
    assert backend.export_filename == "torchao_quantizer.json"
    assert backend.supported_bits == tuple(range(2, 9))


def test_mixed_policy_converts_to_exactly_each_layers_ranges(backend):
    fake_quants = {id(fq) for fq in backend._all_fake_quants()}
    backend.set_policy(MIXED)
    backend.calibrate()
    assert {id(fq) for fq in backend._all_fake_quants()} == fake_quants, "ranges change in place"
    converted = convert_pt2e(copy.deepcopy(backend.model))
    assert converted_ranges(converted) == expected_ranges(MIXED)


def test_each_output_channel_has_at_most_2_to_the_w_integer_weights(backend):
    backend.set_policy(MIXED)
    backend.calibrate()
    for name, weights in integer_weights(convert_pt2e(copy.deepcopy(backend.model))).items():
        w = MIXED[name][0]
        assert weights.dtype == torch.int8
        assert int(weights.min()) >= -2 ** (w - 1) and int(weights.max()) <= 2 ** (w - 1) - 1
        per_channel = [len(torch.unique(channel)) for channel in weights.flatten(1)]
        assert max(per_channel) <= 2 ** w
        if w == 2:
            assert max(per_channel) >= 3, "2-bit weights use more than one sign"


def test_accuracy_follows_the_bits_and_the_fake_model_matches_the_converted_one(backend, task):
    backend.set_policy({n: (8, 8) for n in LAYERS})
    eight = backend.evaluate(task["eval_fn"])
    assert abs(eight - task["float"]) <= 1.0
    backend.set_policy({n: (2, 2) for n in LAYERS})
    two = backend.evaluate(task["eval_fn"])
    assert two < task["float"] - 20
    backend.set_policy(MIXED)
    fake = backend.evaluate(task["eval_fn"])
    assert abs(task["eval_fn"](convert_pt2e(copy.deepcopy(backend.model))) - fake) <= 1.0


def test_set_policy_without_calibrate_is_calibrated_by_evaluate(backend, task):
    backend.set_policy(MIXED)
    backend.calibrate()
    calibrated = backend.evaluate(task["eval_fn"])
    backend.set_policy({n: (8, 8) for n in LAYERS})
    backend.evaluate(task["eval_fn"])
    backend.set_policy(MIXED)
    assert backend.evaluate(task["eval_fn"]) == calibrated


def test_finetune_trains_and_the_next_policy_restores_the_weights(backend, task):
    backend.set_policy(MIXED)
    before = backend.evaluate(task["eval_fn"])
    weights = {k: v.clone() for k, v in backend.model.state_dict().items() if k.endswith("weight")}
    backend.finetune(task["train"], steps=0)
    assert all(torch.equal(backend.model.state_dict()[k], v) for k, v in weights.items())
    backend.finetune(task["train"], steps=4, lr=1e-2)
    assert any(not torch.equal(backend.model.state_dict()[k], v) for k, v in weights.items())
    backend.set_policy(MIXED)
    assert all(torch.equal(backend.model.state_dict()[k], v) for k, v in weights.items())
    assert backend.evaluate(task["eval_fn"]) == before
    with pytest.raises(HaqError, match="inputs, targets"):
        backend.finetune(task["calibration"], steps=2)


def test_prepare_uses_the_given_layers_and_finetune_an_injected_loss(task):
    layers = extract_layers(task["model"], EXAMPLE)
    backend = TorchaoPt2eBackend()
    backend.prepare(task["model"], EXAMPLE, task["calibration"], layers=layers)
    assert backend.layers == layers and backend.layer_names == LAYERS
    calls = []

    def loss(outputs, targets):
        calls.append(outputs.shape)
        return nn.functional.cross_entropy(outputs, targets)

    backend.loss_fn = loss
    backend.finetune(task["train"], steps=3)
    assert calls == [torch.Size([64, 10])] * 3


@pytest.mark.parametrize("bits, message", [
    ({**MIXED, "fc": (1, 8)}, r"weight bits of layer 'fc': 1 bits are not supported.*2, 3, 4"),
    ({**MIXED, "fc": (8, 9)}, r"activation bits of layer 'fc': 9 bits"),
    ({k: v for k, v in MIXED.items() if k != "fc"}, r"missing 1 layer\(s\): 'fc'"),
    ({**MIXED, "head": (8, 8)}, r"unknown 1 layer\(s\): 'head'"),
])
def test_bad_bits_are_refused_with_the_reason(backend, bits, message):
    with pytest.raises(HaqError, match=message):
        backend.set_policy(bits)


def test_methods_before_prepare_are_user_errors():
    backend = TorchaoPt2eBackend()
    for call in (lambda: backend.set_policy(MIXED), backend.calibrate, lambda: backend.evaluate(len),
                 lambda: backend.export(MIXED, "x.json"), lambda: backend.finetune([], 1)):
        with pytest.raises(HaqError, match=r"call prepare\(model, example_input, calibration_data\) first"):
            call()


def test_an_unexportable_model_is_refused_naming_the_construct(task, capfd):
    with pytest.raises(HaqError, match=r"torch.export cannot capture BranchyNet: .*(data-dependent|Could not guard)"
                                       r".*--backend torch.ao"):
        TorchaoPt2eBackend().prepare(BranchyNet().eval(), EXAMPLE, task["calibration"])
    assert "def forward" not in capfd.readouterr().err, "torch.export's partial graph is not dumped on the user"


def test_weight_only_mode_quantizes_weights_only(task):
    backend = TorchaoPt2eBackend(quantize="weights")
    backend.prepare(task["model"], EXAMPLE, task["calibration"])
    backend.set_policy(MIXED)
    backend.calibrate()
    assert all(not entry.inputs and len(entry.weights) == 1 for entry in backend._fake_quants.values())
    converted = convert_pt2e(copy.deepcopy(backend.model))
    assert converted_ranges(converted) == expected_ranges({n: (w, None) for n, (w, _) in MIXED.items()})


# -- the export file and what a user does with it -------------------------------------------------
def test_export_writes_the_documented_file_and_reload_gives_the_same_annotations(backend, task, tmp_path):
    policy = Policy.from_bits(extract_layers(task["model"], EXAMPLE), MIXED)
    path = backend.export(policy, tmp_path)
    assert path.name == "torchao_quantizer.json"
    data = json.loads(path.read_text())
    assert (data["format"], data["schema_version"], data["quantize"]) == \
        ("haq-plugin torchao PT2E quantizer", 1, "weights+activations")
    stem = data["layers"][0]
    assert stem["name"] == "stem.0" and (stem["weight_bits"], stem["activation_bits"]) == (4, 3)
    assert stem["weight"] == {"dtype": "int8", "quant_min": -8, "quant_max": 7,
                              "qscheme": "per_channel_symmetric", "ch_axis": 0}
    assert stem["activation"] == {"dtype": "uint8", "quant_min": 0, "quant_max": 7,
                                  "qscheme": "per_tensor_affine", "ch_axis": None}

    def annotations(quantizer):
        graph = torch.export.export(copy.deepcopy(task["model"]), (EXAMPLE,)).module()
        quantizer.annotate(graph)
        return {name: [(spec.dtype, spec.quant_min, spec.quant_max, spec.qscheme, spec.ch_axis)
                       for spec in node.meta["quantization_annotation"].input_qspec_map.values()]
                for name, (node,) in layer_nodes(graph).items()}

    assert annotations(load_quantizer(path)) == annotations(LayerBitsQuantizer(MIXED))
    assert annotations(load_quantizer(path))["fc"] == [(torch.uint8, 0, 3, torch.per_tensor_affine, None),
                                                       (torch.int8, -4, 3, torch.per_channel_symmetric, 0)]


def test_a_users_qat_script_runs_with_the_exported_quantizer(backend, task, tmp_path):
    path = backend.export(Policy.from_bits(extract_layers(task["model"], EXAMPLE), MIXED), tmp_path / "q.json")
    x_val, y_val = task["val"]
    # -- the user's script ------------------------------------------------------------------------
    model = copy.deepcopy(task["model"])
    example_input = task["train"][0][0]
    quantizer = load_quantizer(path)
    qat = prepare_qat_pt2e(torch.export.export(model, (example_input,)).module(), quantizer)
    optimizer = torch.optim.Adam(qat.parameters(), lr=3e-3)
    for x, y in task["train"]:
        optimizer.zero_grad()
        nn.functional.cross_entropy(qat(x), y).backward()
        optimizer.step()
    int_model = convert_pt2e(qat)
    accuracy_int = accuracy(lambda v: torch.cat([int_model(v[i:i + 64]) for i in range(0, 448, 64)]),
                            x_val[:448], y_val[:448])
    # ------------------------------------------------------------------------------------------
    assert converted_ranges(int_model) == expected_ranges(MIXED)
    assert accuracy_int > 60, "a few QAT steps at these bits keep the model useful"


def test_post_training_prepare_pt2e_with_the_loader(backend, task, tmp_path):
    path = backend.export(Policy.from_bits(extract_layers(task["model"], EXAMPLE), MIXED), tmp_path / "q.json")
    observed = prepare_pt2e(torch.export.export(copy.deepcopy(task["model"]), (torch.cat([EXAMPLE] * 2),),
                                                dynamic_shapes=({0: torch.export.Dim("batch")},)).module(),
                            load_quantizer(path, for_training=False))
    with torch.no_grad():
        observed(task["calibration"][0])
    int_model = convert_pt2e(observed)
    assert converted_ranges(int_model) == expected_ranges(MIXED)
    backend.set_policy(MIXED)
    assert abs(task["eval_fn"](int_model) - backend.evaluate(task["eval_fn"])) <= 2.0


def test_a_model_with_a_renamed_layer_is_refused(backend, task, tmp_path):
    path = backend.export(MIXED, tmp_path / "q.json")
    renamed = RenamedNet()
    renamed.load_state_dict({k.replace("fc.", "head."): v for k, v in task["model"].state_dict().items()})
    graph = torch.export.export(renamed.eval(), (EXAMPLE,)).module()
    with pytest.raises(HaqError, match=r"do not match the model's conv/linear modules \(" + RENAMED_HEAD_DIFFERENCE):
        prepare_qat_pt2e(graph, load_quantizer(path))
    for load in (load_quantizer, load_quantize_config):
        with pytest.raises(HaqError, match=r"layers do not match the model's \(" + RENAMED_HEAD_DIFFERENCE + r"\)"):
            load(path, model=renamed, example_input=EXAMPLE)


def test_the_loaders_refuse_a_wider_model_with_the_same_layer_names(backend, task, tmp_path):
    path = backend.export(Policy.from_bits(extract_layers(task["model"], EXAMPLE), MIXED), tmp_path / "q.json")
    wider = wider_head(task["model"])
    for load in (load_quantizer, load_quantize_config):
        with pytest.raises(HaqError) as refusal:
            load(path, model=wider, example_input=EXAMPLE)
        assert_names_the_wider_head(str(refusal.value), task["model"], wider, EXAMPLE)
        assert load(path, model=task["model"], example_input=EXAMPLE) is not None
    assert load_quantizer(path, False, model=task["model"], example_input=EXAMPLE).for_training is False
    with pytest.raises(HaqError, match="model given without example_input"):
        load_quantizer(path, model=wider)


def test_a_file_of_another_kind_is_refused(tmp_path):
    path = tmp_path / "q.json"
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(HaqError, match="not a torchao quantizer file"):
        load_quantizer(path)
    path.write_text(json.dumps({"format": "haq-plugin torchao PT2E quantizer", "schema_version": 1,
                                "layers": [{"name": "fc", "weight_bits": 12, "activation_bits": 8}]}))
    with pytest.raises(HaqError, match="weight_bits: 12 bits are not supported"):
        load_quantizer(path)


def test_importing_the_backend_prints_no_cuda_extension_warnings():
    proc = subprocess.run([sys.executable, "-c", "import haq_plugin.adapters.torchao"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Failed to load" not in proc.stderr and "_C" not in proc.stderr
    assert proc.stderr.strip() == ""


# -- the demo --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo():
    from haq_plugin.tasks.demo import load_demo

    return load_demo()


@pytest.mark.slow
def test_demo_uniform_8_bit_keeps_float_accuracy(demo):
    backend = TorchaoPt2eBackend()
    backend.prepare(demo.model, demo.example_input, demo.calibration_data)
    backend.set_policy({n: (8, 8) for n in backend.layer_names})
    assert abs(backend.evaluate(demo.eval_fn) - demo.float_val_accuracy) <= 0.5


@pytest.mark.slow
def test_demo_weight_only_quantize_recipe(demo, tmp_path, caplog):
    layers = extract_layers(demo.model, demo.example_input)
    bits = {layer.name: (4 if i % 2 else 6, 8) for i, layer in enumerate(layers)}
    backend = TorchaoPt2eBackend(quantize="weights")
    backend.prepare(demo.model, demo.example_input, demo.calibration_data, layers=layers)
    path = backend.export(Policy.from_bits(layers, bits), tmp_path)
    assert all(entry["activation_bits"] is None for entry in json.loads(path.read_text())["layers"])
    config = load_quantize_config(path)
    taken = {name: c for name, c in config.fqn_to_config.items() if c is not None}
    assert {"classifier", "features.5.0", "features.1.conv.1.0"} <= set(taken)
    assert all(isinstance(c, IntxWeightOnlyConfig) and c.weight_dtype == getattr(torch, f"int{bits[n][0]}")
               and c.granularity.axis == 0 for n, c in taken.items())
    assert "features.0.0" in caplog.text, "layers left in floating point are named"
    model = copy.deepcopy(demo.model)
    quantize_(model, config, filter_fn=None)
    modules = dict(model.named_modules())
    for name in taken:
        weight = modules[name].weight
        w = bits[name][0]
        assert int(weight.qdata.min()) >= -2 ** (w - 1) and int(weight.qdata.max()) <= 2 ** (w - 1) - 1
        assert weight.scale.shape[0] == modules[name].weight.shape[0]
    assert demo.eval_fn(model) >= demo.float_val_accuracy - 3


@pytest.mark.slow
def test_cli_export_and_backends_list(demo, tmp_path):
    layers = extract_layers(demo.model, demo.example_input)
    policy_path = Policy.from_bits(layers, {layer.name: (5, 6) for layer in layers}).save(tmp_path / "policy.json")
    out = tmp_path / "torchao_quantizer.json"
    result = CliRunner().invoke(cli, ["export", "--policy", str(policy_path), "--backend", "torchao", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "torchao format, 14 layers" in result.output
    assert {entry["weight_bits"] for entry in json.loads(out.read_text())["layers"]} == {5}
    listing = CliRunner().invoke(cli, ["backends", "list"])
    assert listing.exit_code == 0 and "torchao" in listing.output and "torchao_quantizer.json" in listing.output
