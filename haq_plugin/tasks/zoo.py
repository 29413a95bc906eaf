"""Reference networks with ImageNet shapes, for cost analysis (``--model zoo:NAME``).

torchvision is not a dependency (its wheels do not import beside every torch
build), so the four networks HAQ and BitFusion studies use are defined here.
Layer shapes follow the original papers: MobileNet-V1 (Howard et al. 2017),
MobileNet-V2 (Sandler et al. 2018), ResNet-18/50 (He et al. 2016).  Weights are
random: these models are for hardware cost, not accuracy.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                 relu: bool = True, relu6: bool = False) -> nn.Sequential:
    """Conv (no bias) + BatchNorm (+ ReLU or ReLU6), 'same' padding."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU6(inplace=True) if relu6 else nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MobileNetV1(nn.Module):
    """MobileNet-V1 (width 1.0): a stem conv and 13 depthwise-separable blocks."""

    # (out_channels, stride) of each depthwise-separable block
    CONFIG = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
              (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]

    def __init__(self, num_classes: int = 1000, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        c = lambda n: max(8, int(n * width))  # noqa: E731
        blocks: list[nn.Module] = [conv_bn_relu(in_channels, c(32), 3, 2)]
        cin = c(32)
        for cout, stride in self.CONFIG:
            blocks.append(nn.Sequential(conv_bn_relu(cin, cin, 3, stride, groups=cin),
                                        conv_bn_relu(cin, c(cout), 1)))
            cin = c(cout)
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class InvertedResidual(nn.Module):
    """MobileNet-V2 block: 1x1 expand (skipped when t=1), 3x3 depthwise, 1x1 linear project."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, relu6: bool = True) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_relu(cin, hidden, 1, relu6=relu6))
        layers += [conv_bn_relu(hidden, hidden, 3, stride, groups=hidden, relu6=relu6),
                   conv_bn_relu(hidden, cout, 1, relu=False)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNet-V2 (width 1.0): 53 quantizable layers at 224x224, as in HAQ's tables."""

    # (expansion t, out_channels c, repeats n, first stride s)
    CONFIG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
              (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 1000, width: float = 1.0, in_channels: int = 3,
                 config: list[tuple[int, int, int, int]] | None = None, stem_stride: int = 2,
                 stem_channels: int = 32, last_channels: int = 1280, dropout: float = 0.2,
                 relu6: bool = True) -> None:
        """``relu6=False`` uses plain ReLU, which torch.ao can fuse into conv+bn+relu."""
        super().__init__()
        c = lambda n: max(8, int(round(n * width)))  # noqa: E731
        cin = c(stem_channels)
        blocks: list[nn.Module] = [conv_bn_relu(in_channels, cin, 3, stem_stride, relu6=relu6)]
        for t, cout, n, s in (config or self.CONFIG):
            for i in range(n):
                blocks.append(InvertedResidual(cin, c(cout), s if i == 0 else 1, t, relu6))
                cin = c(cout)
        blocks.append(conv_bn_relu(cin, last_channels, 1, relu6=relu6))
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(last_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(cin, planes, 3, stride)
        self.conv2 = conv_bn_relu(planes, planes, 3, relu=False)
        self.downsample = _downsample(cin, planes * self.expansion, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(self.conv2(self.conv1(x)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(cin, planes, 1)
        self.conv2 = conv_bn_relu(planes, planes, 3, stride)
        self.conv3 = conv_bn_relu(planes, planes * 4, 1, relu=False)
        self.downsample = _downsample(cin, planes * 4, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + identity)


def _downsample(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """ResNet for ImageNet: 7x7/2 stem, max-pool, four stages, average pool, FC."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int],
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, 64, 7, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages: list[nn.Module] = []
        cin = 64
        for i, (planes, repeats) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for j in range(repeats):
                blocks.append(block(cin, planes, 2 if (j == 0 and i > 0) else 1))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.stem(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def mobilenet_v1() -> nn.Module:
    return MobileNetV1()


def mobilenet_v2() -> nn.Module:
    return MobileNetV2()


def resnet18() -> nn.Module:
    return ResNet(BasicBlock, [2, 2, 2, 2])


def resnet50() -> nn.Module:
    return ResNet(Bottleneck, [3, 4, 6, 3])


ZOO: dict[str, Callable[[], nn.Module]] = {
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
    "resnet18": resnet18,
    "resnet50": resnet50,
}

IMAGENET_INPUT_SHAPE = (1, 3, 224, 224)
