"""The UCI digits as the adapter tests use them (images in [0, 1], shuffled with seed 0), a ReLU6 network and
model changes."""

from __future__ import annotations

import copy

import torch
from torch import nn

from haq_plugin.api.layers import extract_layers
from haq_plugin.tasks.zoo import MobileNetV2

#: How every loader names the layers a policy and a model do not share, for a model whose ``fc`` is now
#: ``head``: 'missing' are the model's layers the policy lacks, 'unknown' the policy's layers the model lacks.
RENAMED_HEAD_DIFFERENCE = r"missing 1 layer\(s\): 'head'; unknown 1 layer\(s\): 'fc'"


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


def wider_head(model: nn.Module, extra: int = 6) -> nn.Module:
    """A copy of ``model`` whose classifier ``fc`` has ``extra`` more outputs: the same names, another shape.

    The model a policy was searched on, widened afterwards.
    """
    wider = copy.deepcopy(model)
    wider.fc = nn.Linear(model.fc.in_features, model.fc.out_features + extra)
    return wider.eval()


def assert_names_the_wider_head(message: str, model: nn.Module, wider: nn.Module, example: torch.Tensor) -> None:
    """``message`` names ``fc`` with its shape in the policy (``model``'s) and in ``wider``, in the shared words."""
    stored, given = ({spec.name: spec.shape_key() for spec in extract_layers(m, example)}["fc"]
                     for m in (model, wider))
    assert f"another shape in 1 layer(s): 'fc' (policy {stored}, model {given})" in message, message
    assert "searched on a different model" in message and "bit" not in message.lower(), message
