"""The UCI digits as the adapter tests use them (images in [0, 1], shuffled with seed 0), a ReLU6 network and a
model change."""

from __future__ import annotations

import torch
from torch import nn

from haq_plugin.tasks.zoo import MobileNetV2


def shuffled_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as (N, 1, 8, 8) images and labels, in one seeded random order."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[order], y[order]


def mobilenet_v2_relu6() -> nn.Module:
    """The MobileNet-V2-style digits network of issue 16: 12 layers, ReLU6 everywhere, which FX does not fuse."""
    return MobileNetV2(num_classes=10, in_channels=1, config=[(4, 24, 1, 2), (4, 24, 1, 1), (4, 32, 1, 2)],
                       stem_stride=1, stem_channels=16, last_channels=64, dropout=0.0, relu6=True)


class RenamedHead:
    """Mixin for the tests' DigitsNet models: the classifier ``fc`` renamed ``head``.

    A model changed after its policy was searched; put it first in the bases,
    ``class RenamedNet(RenamedHead, DigitsNet)``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.head = self.fc
        del self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(self.stem(x))
        return self.head(torch.flatten(self.pool(self.expand(y) + y), 1))
