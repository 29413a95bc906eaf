"""Per-layer sensitivity on the demo with real backends, hardware models and cost tables."""

from __future__ import annotations

import csv

import pytest

from haq_plugin.engine.costs import build_cost_table
from haq_plugin.api.errors import HaqError
from haq_plugin.api.layers import extract_layers
from haq_plugin.tasks.specs import load_model, load_task_data
from haq_plugin.api.plugins import load_backend, load_hardware
from haq_plugin.analyses.sensitivity import check_bit_list, parse_bit_list, sensitivity

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

BITS = (2, 4)


@pytest.fixture(scope="module")
def demo():
    return load_model("demo"), load_task_data(None, "demo")


@pytest.fixture(scope="module")
def measured(demo, tmp_path_factory):
    source, data = demo
    return sensitivity(source.model, source.example_input, hardware="bitfusion", backend="brevitas",
                       eval_fn=data.eval_fn, calibration_data=data.calibration_data, bits=BITS,
                       output_dir=tmp_path_factory.mktemp("sens") / "out", progress=False)


def test_eight_bit_column_is_the_uniform_8bit_accuracy(measured, demo):
    source, data = demo
    backend = load_backend("brevitas")  # a fresh, independent instance
    backend.prepare(source.model, source.example_input, data.calibration_data)
    backend.set_policy({layer.name: (8, 8) for layer in extract_layers(source.model, source.example_input)})
    backend.calibrate()
    uniform8 = backend.evaluate(data.eval_fn)
    assert measured.eight_bit_accuracy == uniform8
    assert {row.weights[8] for row in measured.layers} == {uniform8}
    assert {row.activations[8] for row in measured.layers} == {uniform8}


def test_some_layer_drops_at_two_bits(measured):
    drops_w = [measured.eight_bit_accuracy - row.weights[2] for row in measured.layers]
    drops_a = [measured.eight_bit_accuracy - row.activations[2] for row in measured.layers]
    assert max(drops_w) > 3.0 and max(drops_a) > 3.0
    # lower bits never help much: 4 bits is within a point of 8 bits for most layers
    close = [row for row in measured.layers if measured.eight_bit_accuracy - row.weights[4] < 1.0]
    assert len(close) >= len(measured.layers) - 2


def test_cost_shares_come_from_the_cost_table(measured, demo):
    source, _ = demo
    layers = extract_layers(source.model, source.example_input)
    table = build_cost_table(load_hardware("bitfusion"), layers, bits=[2, 4, 8])
    latency = table.layer_costs("latency", [(8, 8)] * len(layers))
    assert [row.cost_share for row in measured.layers] == pytest.approx(list(latency / latency.sum()))
    assert sum(row.cost_share for row in measured.layers) == pytest.approx(1.0)
    assert measured.evaluations == len(layers) * len(BITS) * 2 + 1


def test_outputs_hold_the_measured_table(measured):
    directory = measured.output_dir
    with open(directory / "sensitivity.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(measured.layers) == 14
    assert list(rows[0])[3:] == ["w2", "w4", "w8", "a2", "a4", "a8", "effective"]
    for row, layer in zip(rows, measured.layers):
        assert row["layer"] == layer.name
        assert float(row["w2"]) == pytest.approx(layer.weights[2], abs=1e-4)
        assert float(row["a4"]) == pytest.approx(layer.activations[4], abs=1e-4)
    markdown = (directory / "sensitivity.md").read_text()
    assert f"| 0 | `{measured.layers[0].name}` |" in markdown and "latency share" in markdown
    assert (directory / "sensitivity.png").stat().st_size > 10_000


def test_torch_ao_and_another_constraint(demo, capsys):
    source, data = demo
    result = sensitivity(source.model, source.example_input, hardware="bismo-edge", backend="torch.ao",
                         eval_fn=data.eval_fn, calibration_data=data.calibration_data, bits=[2],
                         constraint="size", progress=True)
    err = capsys.readouterr().err
    assert "14 layers x 1 bit widths x 2 (weights, activations) = 28 evaluations" in err
    params = [layer.params for layer in extract_layers(source.model, source.example_input)]
    assert [row.cost_share for row in result.layers] == pytest.approx([p / sum(params) for p in params])
    # torch.ao clips 2-bit weight ranges by MSE, so the drop is smaller than with min-max ranges
    assert min(row.weights[2] for row in result.layers) < result.eight_bit_accuracy - 1.0


@pytest.mark.parametrize("bits, message", [
    ([], "at least one"), ([1], "1 bits are not supported"), ([9], "9 bits are not supported"),
    ([2, 2], "give each width once"), ([4, 8], "without 8"), (["x"], "not a bit width"),
])
def test_bad_bit_lists_are_refused(bits, message):
    with pytest.raises(HaqError, match=message):
        check_bit_list(bits, load_hardware("bitfusion"), load_backend("brevitas"))


def test_bit_text_and_constraints_are_checked(demo):
    assert parse_bit_list("2,3,4") == (2, 3, 4)
    with pytest.raises(HaqError, match="--bits '2;3'"):
        parse_bit_list("2;3")
    source, data = demo
    kwargs = dict(backend="brevitas", eval_fn=data.eval_fn, calibration_data=data.calibration_data, progress=False)
    with pytest.raises(HaqError, match="no energy model"):
        sensitivity(source.model, source.example_input, hardware="bismo-edge", constraint="energy", **kwargs)
    with pytest.raises(HaqError, match="Unknown constraint 'speed'"):
        sensitivity(source.model, source.example_input, hardware="bitfusion", constraint="speed", **kwargs)
