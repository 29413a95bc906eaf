"""The UCI digits as the adapter tests use them (images in [0, 1], shuffled with seed 0), and a model change."""

from __future__ import annotations

import torch


def shuffled_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as (N, 1, 8, 8) images and labels, in one seeded random order."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[order], y[order]


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
