"""Where a search evaluates: its torch device, and the Ray cluster of its workers.

:class:`Placement` is the driver's one definition of "on the device": the models
and batches a search evaluates with are placed through it, in this process and
on every Ray actor (:mod:`haq_plugin.engine.workers`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from haq_plugin.api.backend import QuantBackend
from haq_plugin.engine.device import to_device


@dataclass(frozen=True)
class Placement:
    """Where a search evaluates: its torch device, and the Ray cluster of its workers (None: a local one)."""

    device: torch.device = torch.device("cpu")
    ray_address: str | None = None

    @property
    def on_cpu(self) -> bool:
        return self.device.type == "cpu"

    def place(self, model: nn.Module, example_input: Any, calibration_data: Sequence[Any],
              train_data: Iterable[Any] | None) -> tuple[nn.Module, Any, Sequence[Any], Any]:
        """Model, example input and batches on the device: the same objects on the CPU, else copies.

        The caller's model is copied, not moved, so it is left where it was.
        """
        if self.on_cpu:
            return model, example_input, calibration_data, train_data
        moved_train = None if train_data is None else [to_device(batch, self.device) for batch in train_data]
        return (copy.deepcopy(model).to(self.device), to_device(example_input, self.device),
                [to_device(batch, self.device) for batch in calibration_data], moved_train)

    def place_backend(self, backend: QuantBackend) -> None:
        """Make sure the prepared fake-quantized model is on the device (a backend may build it on the CPU)."""
        if not self.on_cpu:
            backend.model.to(self.device)
