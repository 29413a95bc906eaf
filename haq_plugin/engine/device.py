"""Where a search runs its models: ``--device auto|cpu|cuda|cuda:N``.

The accuracy side of a search (the float model, the fake-quantized model, the
calibration, evaluation and training batches) runs on one torch device; the
cost table and the DDPG agent stay on the CPU, where their tiny networks are
fastest.  :func:`resolve_device` turns the user's choice into a
:class:`torch.device` and refuses one this machine does not have *before* any
work starts; :func:`to_device` moves a batch of any common shape (a tensor, a
tuple or list of tensors, a dict of them) without touching anything else.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from haq_plugin.api.errors import HaqError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The device ``spec`` names: ``auto`` is CUDA when available, else the CPU."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        return _cuda_device(text)
    raise HaqError(f"device {spec!r} is not one of {DEVICE_CHOICES}.")


def _cuda_device(text: str) -> torch.device:
    index_text = text.partition(":")[2]
    if text.startswith("cuda:") and not index_text.isdigit():
        raise HaqError(f"device {text!r}: the GPU index must be a number, as in cuda:0.")
    if not torch.cuda.is_available():
        build = f"a build with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise HaqError(f"device {text!r}: CUDA is not available on this machine (torch {torch.__version__} is "
                       f"{build}, and it sees no GPU). Use --device cpu, or --device auto to take a GPU only "
                       "where there is one.")
    count = torch.cuda.device_count()
    if index_text and int(index_text) >= count:
        raise HaqError(f"device {text!r}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}.")
    return torch.device(text)


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor in it on ``device`` (tuples, lists and dicts are rebuilt; the rest is kept)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, tuple):
        return tuple(to_device(item, device) for item in batch)
    if isinstance(batch, list):
        return [to_device(item, device) for item in batch]
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    return batch


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter or buffer (the CPU for a model without tensors)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def on_model_device(batch: Any, model: nn.Module) -> Any:
    """``batch`` moved to where ``model`` is: what an ``eval_fn`` calls to work on any ``--device``."""
    return to_device(batch, model_device(model))


class BatchesOnDevice:
    """Batches moved to a device once, on their first use there: an ``eval_fn`` runs in every episode."""

    def __init__(self, batches: Any) -> None:
        self.batches = list(batches)
        self._moved: dict[str, list[Any]] = {}

    def on(self, device: torch.device) -> list[Any]:
        """The batches on ``device`` (on the CPU they are the very tensors given)."""
        key = str(device)
        if key not in self._moved:
            self._moved[key] = [to_device(batch, device) for batch in self.batches]
        return self._moved[key]
