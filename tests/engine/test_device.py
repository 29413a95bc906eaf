"""``--device``: resolving a device name, and moving batches of any common shape."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from haq_plugin import HaqError
from haq_plugin.engine.device import BatchesOnDevice, model_device, on_model_device, resolve_device, to_device

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


def test_cpu_and_auto_resolve_on_this_machine():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected and resolve_device(None).type == expected
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_refused_with_the_way_out(spec):
    with pytest.raises(HaqError, match=r"CUDA is not available.*--device cpu"):
        resolve_device(spec)


@pytest.mark.parametrize("spec, message", [("tpu", "not one of auto, cpu, cuda or cuda:N"),
                                           ("cuda:x", "GPU index must be a number"),
                                           ("", "not one of")])
def test_unknown_devices_name_what_is_allowed(spec, message):
    with pytest.raises(HaqError, match=message):
        resolve_device(spec)


def test_to_device_moves_every_tensor_and_keeps_the_rest():
    meta = torch.device("meta")  # a real device without memory: shows a move happened
    batch = {"x": torch.ones(2), "pair": (torch.zeros(1), [torch.ones(3), "label"]), "n": 3}
    moved = to_device(batch, meta)
    assert moved["x"].device == meta and moved["pair"][0].device == meta and moved["pair"][1][0].device == meta
    assert moved["pair"][1][1] == "label" and moved["n"] == 3
    assert isinstance(moved["pair"], tuple) and isinstance(moved["pair"][1], list)
    assert batch["x"].device.type == "cpu"  # the input is not changed


def test_model_device_and_batches_follow_the_model():
    model = nn.Linear(2, 2)
    assert model_device(model) == torch.device("cpu") and model_device(nn.ReLU()) == torch.device("cpu")
    x = torch.ones(1, 2)
    assert on_model_device(x, model) is x  # already there: the very tensor
    placed = BatchesOnDevice([(x, torch.tensor([1]))])
    assert placed.on(torch.device("cpu"))[0][0] is x
    assert placed.on(torch.device("meta"))[0][0].device.type == "meta"
    assert placed.on(torch.device("meta")) is placed.on(torch.device("meta"))  # moved once, then reused
