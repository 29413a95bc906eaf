"""A small model whose first layer has one outlying weight, for the backends' ``weight_range`` tests.

Channel 0 of ``conv`` holds one weight twice as large as the rest of the
channel: min-max spends its 2-bit grid on that weight, while an MSE-clipped
range saturates it and keeps the other weights apart.  (A far larger outlier
keeps its min-max range under ``mse`` too: saturating it would cost more than
it saves.)  Every channel has 18
weights (at least the 16 that clipping needs), and the model feeds every layer
a non-negative input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from haq_plugin.adapters.common.weight_ranges import symmetric_scale
from haq_plugin.api.errors import HaqError
from haq_plugin.api.layers import extract_layers
from haq_plugin.api.policy import Policy

EXAMPLE = torch.rand(1, 2, 6, 6, generator=torch.Generator().manual_seed(1))
CALIBRATION = [torch.rand(8, 2, 6, 6, generator=torch.Generator().manual_seed(2))]
LAYERS = ("conv", "fc")
OUTLIER_CHANNEL = 0
BITS = {"conv": (2, 8), "fc": (8, 8)}  # the policy the tests set: 2-bit conv weights


class OutlierNet(nn.Module):
    """Conv 2->8 3x3 (18 weights per channel, one outlier), ReLU, Linear 288->4."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8 * 6 * 6, 4)
        with torch.no_grad():
            self.conv.weight[OUTLIER_CHANNEL, 0, 1, 1] = 2 * self.conv.weight[OUTLIER_CHANNEL].abs().max()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.relu(self.conv(x)), 1))


def minmax_scale(weight: torch.Tensor, quant_min: int, quant_max: int) -> torch.Tensor:
    """Per output channel, the scale that puts the channel's smallest and largest weight on the grid's ends."""
    rows = weight.detach().reshape(weight.shape[0], -1)
    return symmetric_scale(rows.amin(1), rows.amax(1), quant_min, quant_max)


def integer_levels(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The unclamped integers of ``weight`` at a per-output-channel ``scale``, one row per channel."""
    rows = weight.detach().reshape(weight.shape[0], -1)
    return torch.round(rows / scale.reshape(-1, 1))


def assert_minmax_range(scale: torch.Tensor, quant_min: int, quant_max: int) -> None:
    """``scale`` spans each channel of the model's conv from its smallest to its largest weight."""
    weight = OutlierNet().conv.weight
    assert torch.allclose(scale, minmax_scale(weight, quant_min, quant_max))
    levels = integer_levels(weight, scale)
    assert levels.min() >= quant_min and levels.max() <= quant_max  # no weight saturates
    assert ((levels.amax(1) == quant_max) | (levels.amin(1) == quant_min)).all()  # each channel reaches an end


def assert_clipped_range(scale: torch.Tensor, quant_min: int, quant_max: int) -> None:
    """``scale`` is narrower than min-max on the outlier's channel, whose outlier saturates, and nowhere wider."""
    weight = OutlierNet().conv.weight
    plain = minmax_scale(weight, quant_min, quant_max)
    assert scale[OUTLIER_CHANNEL] < plain[OUTLIER_CHANNEL]
    assert (scale <= plain + 1e-7).all()
    assert integer_levels(weight, scale)[OUTLIER_CHANNEL].max() > quant_max


def export_policy(backend: Any, path: Path) -> tuple[Path, dict[str, Any]]:
    """``backend``'s export of :data:`BITS` on the outlier model: the file written and its JSON."""
    written = backend.export(Policy.from_bits(extract_layers(OutlierNet().eval(), EXAMPLE), BITS), path)
    return written, json.loads(written.read_text())


def assert_refuses_an_unknown_weight_range(backend_class: type) -> None:
    """An unknown ``weight_range`` is a user error that lists the two choices."""
    with pytest.raises(HaqError, match=r"weight_range' must be one of minmax, mse; got 'median'"):
        backend_class(weight_range="median")
