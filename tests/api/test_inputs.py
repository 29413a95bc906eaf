"""Models with several inputs: a tuple (positional) or a dict (keyword) example input, end to end.

The model adds two linear branches, one per input, so each input matters; it is
searched with every built-in backend that can take it, and the one that cannot
says so in one line that names the backends that can.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from haq_plugin import HaqError, extract_layers, search
from haq_plugin.api.inputs import as_positional, call_model, input_kind, require_one_tensor
from haq_plugin.tasks.demo import digits_splits

pytestmark = pytest.mark.usefixtures("one_thread")


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(64, 32)
        self.mask = nn.Linear(64, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.image(x.flatten(1)) + self.mask(mask.flatten(1))))


@pytest.fixture(scope="module")
def task():
    splits = digits_splits()
    x, y = splits["train"]
    torch.manual_seed(0)
    model = TwoInputs()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x, 1 - x), y).backward()
        opt.step()
    xv, yv = splits["val"]
    return model.eval(), x, xv, yv


def accuracy(xv, yv, as_dict):
    def evaluate(model):
        with torch.no_grad():
            scores = model(x=xv, mask=1 - xv) if as_dict else model(xv, 1 - xv)
        return float((scores.argmax(1) == yv).float().mean() * 100)
    return evaluate


def test_call_model_and_positional_binding():
    model = TwoInputs()
    a, b = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    expected = model(a, b)
    assert torch.equal(call_model(model, (a, b)), expected)
    assert torch.equal(call_model(model, {"mask": b, "x": a}), expected)
    assert as_positional(model, {"mask": b, "x": a})[0] is a  # forward's order, whatever the dict's
    with pytest.raises(HaqError, match="do not fit TwoInputs.forward"):
        as_positional(model, {"image": a})
    assert input_kind((a, b)) == "a tuple of 2 inputs" and input_kind({"x": a}) == "keyword inputs x"


def test_layer_extraction_sees_both_branches(task):
    model, *_ = task
    names = [layer.name for layer in extract_layers(model, {"x": torch.zeros(1, 64), "mask": torch.zeros(1, 64)})]
    assert names == ["image", "mask", "head"]


@pytest.mark.parametrize("backend, as_dict", [("torch.ao", False), ("torch.ao", True), ("torchao", False),
                                              ("torchao", True)])
def test_a_two_input_model_is_searched(task, backend, as_dict, tmp_path):
    model, x, xv, yv = task
    example = {"x": x[:1], "mask": 1 - x[:1]} if as_dict else (x[:1], 1 - x[:1])
    calibration = [({"x": x[:128], "mask": 1 - x[:128]},) if as_dict else ((x[:128], 1 - x[:128]),)]
    result = search(model, example, hardware="bitfusion", backend=backend, budget=0.8, episodes=2,
                    strategy="random", eval_fn=accuracy(xv, yv, as_dict), calibration_data=calibration,
                    keep_first_layer_8bit=False, keep_last_layer_8bit=False, progress=False,
                    output_dir=tmp_path / "out")
    assert set(result.policy.bits) == {"image", "mask", "head"}
    best = result.history[result.best_episode]
    assert result.float_accuracy > 80 and best.accuracy > 50  # both inputs reached the model


def test_brevitas_names_what_it_cannot_take_and_who_can(task):
    model, x, xv, yv = task
    with pytest.raises(HaqError) as caught:
        search(model, (x[:1], 1 - x[:1]), hardware="bitfusion", backend="brevitas", budget=0.8, episodes=1,
               strategy="random", eval_fn=accuracy(xv, yv, False), calibration_data=[((x[:8], x[:8]),)],
               progress=False)
    message = str(caught.value)
    assert "takes models with one tensor input" in message and "a tuple of 2 inputs" in message
    assert "--backend torch.ao or --backend torchao" in message
    with pytest.raises(HaqError, match="one tensor input"):
        require_one_tensor({"x": x}, "brevitas", "why")
