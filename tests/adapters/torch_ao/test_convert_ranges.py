"""``convert_in_range`` on a ReLU6 network: every converted layer reads and stores integers in the policy's ranges.

The measurement of a user's deployment: a MobileNet-V2-style network with
ReLU6 (which torch.ao does not fuse into the conv before it), a mixed policy
exported and loaded as a user does, prepared for QAT or post-training, then
converted; each converted layer's input integers are read on digits it was
not calibrated on.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.ao.nn.quantized.reference.modules.utils import ReferenceQuantizedModule
from torch.ao.quantization import disable_observer
from torch.ao.quantization.quantize_fx import prepare_fx, prepare_qat_fx

from haq_plugin.adapters.torch_ao import TorchAoFxBackend, backend_config, convert_in_range, load_qconfig_mapping
from haq_plugin.api.layers import extract_layers
from tests.adapters.digits import mobilenet_v2_relu6, shuffled_digits

pytestmark = [pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated"),
              pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor"), pytest.mark.usefixtures("one_thread")]

EXAMPLE = torch.zeros(1, 1, 8, 8)


@pytest.fixture(scope="module")
def digits():
    x, y = shuffled_digits()
    return {"train": (x[:1200], y[:1200]), "val": x[1200:]}


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    return _train(mobilenet_v2_relu6(), digits["train"], steps=15, lr=1e-2).eval()


@pytest.fixture(scope="module")
def bits(trained):
    """Every width from 2 to 8 bits in use, the first layer kept at 8/8."""
    names = [spec.name for spec in extract_layers(trained, EXAMPLE)]
    policy = {name: (2 + i % 6, 2 + (i * 3) % 7) for i, name in enumerate(names)}
    return {**policy, names[0]: (8, 8)}


def _train(model: nn.Module, data, steps: int, lr: float, start: int = 0) -> nn.Module:
    x, y = data
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(start, start + steps):
        batch = torch.arange(step * 64, step * 64 + 64) % len(y)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        optimizer.step()
    return model


def _mapping(model: nn.Module, bits, tmp_path, quantize: str = "weights+activations"):
    """What a user applies: the exported file, loaded with the model; and the bits each layer's input gets."""
    backend = TorchAoFxBackend()
    backend.quantize = quantize
    backend.prepare(model, EXAMPLE, [EXAMPLE])
    path = backend.export(bits, tmp_path / "qconfig_mapping.json")
    effective = backend.effective_act_bits(bits) if quantize != "weights" else {}
    return load_qconfig_mapping(path, model, EXAMPLE), effective


def _qat(model: nn.Module, mapping, data) -> torch.fx.GraphModule:
    """QAT as usually run: observers on, then frozen for the last steps while the weights keep moving."""
    qat = prepare_qat_fx(copy.deepcopy(model).train(), mapping, (EXAMPLE,), backend_config=backend_config())
    _train(qat, data, steps=5, lr=1e-2)
    qat.apply(disable_observer)
    return _train(qat, data, steps=5, lr=5e-2, start=5).eval()


def _input_scales(prepared: torch.fx.GraphModule, names) -> dict[str, float]:
    """The scale of the observer in front of each layer, read before the conversion changes the model."""
    modules = dict(prepared.named_modules(remove_duplicate=False))
    return {node.target: float(modules[node.args[0].target].calculate_qparams()[0])
            for node in prepared.graph.nodes if node.op == "call_module" and node.target in names}


def _layer_inputs(int_model: nn.Module, names, x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    handles = [int_model.get_submodule(name).register_forward_pre_hook(
        lambda module, args, name=name: seen.__setitem__(name, args[0])) for name in names]
    with torch.no_grad():
        int_model(x)
    for handle in handles:
        handle.remove()
    return seen


def _out_of_range(int_model, bits, effective, scales, x) -> list[str]:
    """The layers whose input or weight integers leave the policy's ranges, each with what it read."""
    wrong = []
    for name, seen in _layer_inputs(int_model, list(bits), x).items():
        ints, weight = seen.int_repr(), int_model.get_submodule(name).weight().int_repr()
        act_high, (w_low, w_high) = 2 ** effective[name] - 1, (-(2 ** (bits[name][0] - 1)), 2 ** (bits[name][0] - 1) - 1)
        if not (0 <= int(ints.min()) and int(ints.max()) <= act_high and len(torch.unique(ints)) <= act_high + 1
                and seen.q_scale() == pytest.approx(scales[name]) and w_low <= int(weight.min())
                and int(weight.max()) <= w_high):
            wrong.append(f"{name}: a={effective[name]} zero point {seen.q_zero_point()}, integers "
                         f"{int(ints.min())}..{int(ints.max())}; weights {int(weight.min())}..{int(weight.max())}")
    return wrong


def test_qat_conversion_keeps_every_layer_input_and_weight_in_range(trained, bits, digits, tmp_path):
    mapping, effective = _mapping(trained, bits, tmp_path)
    qat = _qat(trained, mapping, digits["train"])
    scales = _input_scales(qat, bits)
    int_model = convert_in_range(qat)
    assert _out_of_range(int_model, bits, effective, scales, digits["val"]) == []


def test_post_training_conversion_keeps_every_layer_input_and_weight_in_range(trained, bits, digits, tmp_path):
    mapping, effective = _mapping(trained, bits, tmp_path)
    ptq = prepare_fx(copy.deepcopy(trained).eval(), mapping, (EXAMPLE,), backend_config=backend_config())
    x, _ = digits["train"]
    with torch.no_grad():
        for batch in (x[:256], x[256:512]):
            ptq(batch)
    scales = _input_scales(ptq, bits)
    int_model = convert_in_range(ptq)
    assert _out_of_range(int_model, bits, effective, scales, digits["val"]) == []


def _reference(module: nn.Module) -> ReferenceQuantizedModule:
    """The reference Conv/Linear of a converted weight-only layer (the first child when a ReLU was fused)."""
    return module if isinstance(module, ReferenceQuantizedModule) else module[0]


def test_weight_only_conversion_stores_the_policy_integers(trained, bits, digits, tmp_path):
    mapping, _ = _mapping(trained, bits, tmp_path, quantize="weights")
    qat = _qat(trained, mapping, digits["train"])
    with torch.no_grad():
        expected = qat(digits["val"])
    int_model = convert_in_range(qat)
    for name, (w_bits, _) in bits.items():
        layer = _reference(int_model.get_submodule(name))
        low, high = -(2 ** (w_bits - 1)), 2 ** (w_bits - 1) - 1
        assert isinstance(layer, ReferenceQuantizedModule), name
        assert (layer.weight_quant_min, layer.weight_quant_max) == (low, high), name
        quantized = layer.get_quantized_weight()
        ints = quantized.int_repr().flatten(1)
        assert low <= int(ints.min()) and int(ints.max()) <= high, name
        assert max(len(torch.unique(row)) for row in ints) <= 2 ** w_bits, name
        assert torch.allclose(layer.weight, quantized.dequantize(), atol=1e-7), name  # stored on the grid
    with torch.no_grad():
        assert torch.allclose(int_model(digits["val"]), expected, atol=1e-4)  # what the QAT model computed


def test_the_saturation_warning_follows_the_engine_and_the_cpu(caplog):
    from haq_plugin.adapters.torch_ao.convert import warn_if_kernels_saturate

    ranges = {"stem.0": (-128, 127), "fc": (-8, 7)}
    vnni = "VNNI" in torch.backends.cpu.get_cpu_capability()
    engine = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = "x86"
        assert warn_if_kernels_saturate(ranges) is (not vnni)
        assert warn_if_kernels_saturate({"fc": (-8, 7)}) is False  # a 4-bit layer cannot overflow 16 bits
        torch.backends.quantized.engine = "onednn"
        assert warn_if_kernels_saturate(ranges) is False
    finally:
        torch.backends.quantized.engine = engine
    if not vnni:
        assert "stem.0" in caplog.text and "'onednn' before convert_in_range" in caplog.text
