import pytest
import torch
from torch import nn

from haq_plugin import HaqError, LayerSpec, extract_layers
from haq_plugin.tasks.zoo import MobileNetV2, resnet18


def test_resnet_layers_in_execution_order_with_downsample():
    layers = extract_layers(resnet18(), torch.zeros(1, 3, 224, 224))
    assert len(layers) == 21
    assert layers[0].name == "stem.0" and layers[0].reads_network_input
    assert not any(l.reads_network_input for l in layers[1:])
    stem = layers[0]
    assert (stem.kernel_size, stem.stride, stem.in_size, stem.out_size) == ((7, 7), (2, 2), (224, 224), (112, 112))
    downsample = next(l for l in layers if l.name == "layer2.0.downsample.0")
    assert downsample.kernel_size == (1, 1) and downsample.stride == (2, 2)
    assert (downsample.in_size, downsample.out_size) == ((56, 56), (28, 28))
    # the downsample conv runs before the block's main path in forward() (identity computed first)
    names = [l.name for l in layers]
    assert names.index("layer2.0.downsample.0") < names.index("layer2.0.conv1.0")
    assert layers[-1].kind == "linear" and layers[-1].in_channels == 512
    assert sum(l.macs for l in layers) == 1_814_073_344  # ResNet-18 conv+fc MACs at 224x224


def test_mobilenet_v2_has_53_layers_and_depthwise_flags():
    layers = extract_layers(MobileNetV2(), torch.zeros(1, 3, 224, 224))
    assert len(layers) == 53
    depthwise = [l for l in layers if l.is_depthwise]
    assert len(depthwise) == 17
    dw = depthwise[0]
    assert dw.groups == dw.in_channels == dw.out_channels == 32
    assert dw.params == 32 * 9 and dw.macs == 32 * 9 * 112 * 112
    assert sum(l.macs for l in layers) == 300_774_272


def test_linear_only_model():
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    layers = extract_layers(model, torch.zeros(4, 20))
    assert [l.name for l in layers] == ["0", "2"]
    assert layers[0].kind == "linear" and layers[0].macs == 600 and layers[0].params == 600
    assert layers[1].kernel_size == (1, 1) and layers[1].in_size == (1, 1)


def test_conv1d_and_grouped_conv():
    model = nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.Conv1d(8, 8, 3, groups=2))
    first, second = extract_layers(model, torch.zeros(1, 4, 16))
    assert first.in_size == (16, 1) and first.out_size == (16, 1) and first.kernel_size == (3, 1)
    assert second.groups == 2 and not second.is_depthwise and second.params == 8 * 4 * 3


def test_shared_module_is_rejected():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.fc(x))

    with pytest.raises(HaqError, match="called more than once"):
        extract_layers(Twice(), torch.zeros(1, 4))


def test_model_without_quantizable_layers_is_rejected():
    with pytest.raises(HaqError, match="no quantizable layer"):
        extract_layers(nn.Sequential(nn.ReLU()), torch.zeros(1, 4))


def test_extraction_restores_training_mode():
    model = nn.Sequential(nn.Linear(2, 2)).train()
    extract_layers(model, torch.zeros(1, 2))
    assert model.training


def test_layer_spec_by_hand_matches_extracted():
    by_hand = LayerSpec(name="features.0.0", kind="conv", in_channels=3, out_channels=32, kernel_size=3,
                        stride=2, groups=1, in_size=224, out_size=112, reads_network_input=True)
    extracted = extract_layers(MobileNetV2(), torch.zeros(1, 3, 224, 224))[0]
    assert by_hand == extracted
    assert by_hand.padding == (1, 1)


def test_layer_spec_derives_out_size_and_validates():
    spec = LayerSpec(name="c", kind="conv", in_channels=8, out_channels=8, kernel_size=3, padding=1,
                     stride=2, groups=8, in_size=15)
    assert spec.out_size == (8, 8) and spec.is_depthwise
    with pytest.raises(HaqError, match="kind"):
        LayerSpec(name="x", kind="pool", in_channels=1, out_channels=1)
    with pytest.raises(HaqError, match="groups"):
        LayerSpec(name="x", kind="conv", in_channels=6, out_channels=4, groups=4)


def test_a_non_module_model_is_refused():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(HaqError, match="must be a torch nn.Module, got OrderedDict"):
        extract_layers(model.state_dict(), torch.zeros(1, 2))


@pytest.mark.parametrize("example, message", [
    (torch.zeros(1, 1, 8, 8), r"example input \(shape 1x1x8x8\): RuntimeError: .*to have 3 channels, but got 1"),
    (torch.zeros(1, 3, 9, 9), r"example input \(shape 1x3x9x9\): RuntimeError: mat1 and mat2 shapes cannot be "
                              r"multiplied \(1x196 and 144x10\)"),
    ((torch.zeros(1, 3, 8, 8), torch.zeros(1)), r"example input \(shape \(1x3x8x8, 1\)\): TypeError"),
])
def test_a_forward_that_fails_on_the_example_input_is_one_clear_error(example, message):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).train()
    with pytest.raises(HaqError, match=message) as err:
        extract_layers(model, example)
    assert "\n" not in str(err.value) and "--input-shape" in str(err.value)
    assert model.training  # restored, and the hooks are gone: a good input still works afterwards
    assert [spec.name for spec in extract_layers(model, torch.zeros(1, 3, 8, 8))] == ["0", "2"]
    assert all(not m._forward_hooks for m in model.modules())
