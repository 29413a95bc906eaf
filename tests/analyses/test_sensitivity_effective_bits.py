"""Sensitivity entries the backend ran at other bits than asked are marked, not shown as "no drop"."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

from haq_plugin.analyses.sensitivity import applied_bits, sensitivity
from haq_plugin.analyses.sensitivity_report import (
    OTHER_BITS, LayerSensitivity, SensitivityResult, sensitivity_csv, sensitivity_markdown)
from haq_plugin.api.plugins import load_backend

pytestmark = [pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated"),
              pytest.mark.usefixtures("one_thread")]

#: Layers whose input observer torch.ao's FX mode shares with another layer: the network input and the
#: stem's output (one QConfig builds both), and the tensor that ``left`` and ``right`` both read.
SHARED = ("stem.0", "entry.0", "left", "right")
#: Layers with an observer of their own: the residual add's output, and ``mix``'s output through pooling.
OWN = ("mix.0", "fc")


class SharedInputNet(nn.Module):
    """A stem, then two convs reading one tensor and added (a residual-style join), a conv, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.entry = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.left = nn.Conv2d(8, 8, 3, padding=1)
        self.right = nn.Conv2d(8, 8, 1)
        self.mix = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(8 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.entry(self.stem(x))
        y = self.mix(self.left(h) + self.right(h))
        return self.fc(torch.flatten(self.pool(y), 1))


@pytest.fixture(scope="module")
def task():
    torch.manual_seed(0)
    model = SharedInputNet().eval()
    x = torch.rand(64, 1, 8, 8)
    with torch.no_grad():
        labels = model(x).argmax(1)

    def agreement(quantized: nn.Module) -> float:
        """Percent of the float model's predictions the quantized model keeps."""
        return float((quantized(x).argmax(1) == labels).float().mean() * 100)

    return model, x, agreement


@pytest.fixture(scope="module")
def measured(task, tmp_path_factory):
    model, x, agreement = task
    return sensitivity(model, x[:1], hardware="bitfusion", backend="torch.ao", eval_fn=agreement,
                       calibration_data=[x[:16]], bits=[2], output_dir=tmp_path_factory.mktemp("sens") / "out",
                       progress=False)


def test_shared_input_entries_record_the_bits_torch_ao_applied(measured):
    rows = {row.name: row for row in measured.layers}
    assert set(rows) == {*SHARED, *OWN}
    for name in SHARED:
        assert rows[name].applied("activations", 2) == (8,) and not rows[name].measured("activations", 2), name
    for name in OWN:
        assert rows[name].measured("activations", 2), name
    assert all(row.measured("weights", 2) for row in measured.layers)
    assert {(row.name, target, bits) for row, target, bits in measured.unmeasured()} == \
        {(name, "activations", 2) for name in SHARED}


def test_csv_flags_the_shared_entries_and_leaves_their_values_empty(measured):
    with open(measured.output_dir / "sensitivity.csv") as handle:
        rows = {row["layer"]: row for row in csv.DictReader(handle)}
    for name in SHARED:
        assert rows[name]["effective"] == "a2_effective=8" and rows[name]["a2"] == "", name
    for name in OWN:
        assert rows[name]["effective"] == "" and float(rows[name]["a2"]) >= 0.0, name
    assert all(float(row["w2"]) >= 0.0 and float(row["a8"]) >= 0.0 for row in rows.values())


def test_markdown_marks_the_shared_entries_with_a_footnote(measured):
    markdown = (measured.output_dir / "sensitivity.md").read_text()
    lines = {line.split("|")[2].strip(" `"): line for line in markdown.splitlines() if line.startswith("| ")}
    for name in SHARED:
        assert f"(8){OTHER_BITS}" in lines[name], name
    for name in OWN:
        assert OTHER_BITS not in lines[name], name
    footnote = [line for line in markdown.splitlines() if line.startswith(OTHER_BITS)]
    assert len(footnote) == 1 and "Not measured (4 of 24 entries)" in footnote[0]
    assert (measured.output_dir / "sensitivity.png").stat().st_size > 10_000


def test_torchao_marks_the_branch_its_shared_input_quantizer_overrides(task, tmp_path):
    """PT2E gives ``left`` and ``right`` one input quantizer, which takes the bits of the last one written."""
    model, x, agreement = task
    result = sensitivity(model, x[:1], hardware="bitfusion", backend="torchao", eval_fn=agreement,
                         calibration_data=[x[:16]], bits=[2], output_dir=tmp_path / "out", progress=False)
    rows = {row.name: row for row in result.layers}
    assert rows["left"].applied("activations", 2) == (8,)
    assert rows["right"].applied("activations", 2) == (2,) and rows["right"].changed_along("activations", 2) == \
        ("left",)
    assert {row.name for row, _, _ in result.unmeasured()} == {"left", "right"}
    with open(result.output_dir / "sensitivity.csv") as handle:
        flags = {row["layer"]: row["effective"] for row in csv.DictReader(handle)}
    assert flags["left"] == "a2_effective=8" and flags["right"] == "a2_effective=2;a2_also=left"
    assert "(2; also left)" + OTHER_BITS in (result.output_dir / "sensitivity.md").read_text()


def test_brevitas_gives_every_input_its_own_quantizer(task):
    model, x, _ = task
    backend = load_backend("brevitas")
    backend.prepare(model, x[:1], [x[:16]])
    asked = {name: (8, 8) for name in (*SHARED, *OWN)}
    for name in asked:
        lowered = {**asked, name: (3, 2)}
        backend.set_policy(lowered)
        inputs = {layer: int(handles.input_bit_width) for layer, handles in backend._handles.items()}
        assert inputs == {layer: act for layer, (_, act) in lowered.items()}, name  # no input shared
        assert applied_bits(backend, lowered) == lowered, name


def _unit_result() -> SensitivityResult:
    """A block of two layers, one of which the backend kept at 8 bits when the block's inputs went to 2."""
    row = LayerSensitivity(0, "block", "2 layers, 10 weights", 1.0, {2: 80.0, 8: 90.0}, {2: 85.0, 8: 90.0},
                           ("a", "b"), {"weights": {2: (2,), 8: (8,)}, "activations": {2: (2, 8), 8: (8,)}})
    return SensitivityResult([row], (2,), "latency", "hw", "be", 90.0, 91.0, 5, 0.1, decisions="block")


def test_a_unit_split_between_widths_lists_them():
    result = _unit_result()
    assert "a2_effective=2/8" in sensitivity_csv(result)
    assert f"(2/8){OTHER_BITS}" in sensitivity_markdown(result)
    assert "| 80.00 |" in sensitivity_markdown(result)  # the weight entry was measured as asked
