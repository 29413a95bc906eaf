import json

import pytest
import torch
from torch import nn

from haq_plugin import HaqError, extract_layers
from haq_plugin.api.policy import SCHEMA_VERSION, Policy


@pytest.fixture
def layers():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    return extract_layers(model, torch.zeros(1, 1, 8, 8))


def test_round_trip_keeps_bits_order_and_provenance(tmp_path, layers):
    policy = Policy.from_bits(layers, {"3": (4, 6), "0": (8, 8)}, seed=3, hardware={"name": "bitfusion"})
    assert list(policy.bits) == ["0", "3"]
    path = policy.save(tmp_path / "policy.json")
    loaded = Policy.load(path)
    assert loaded.bits == {"0": (8, 8), "3": (4, 6)}
    assert loaded.provenance == {"seed": 3, "hardware": {"name": "bitfusion"}}
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION
    loaded.check_layers(layers)


def _write(tmp_path, data):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(schema_version=99), "schema_version"),
    (lambda d: d["layers"][0].update(weight_bits=17), r"layers\[0\]\.weight_bits"),
    (lambda d: d["layers"][1].update(activation_bits=0), r"layers\[1\]\.activation_bits"),
    (lambda d: d["layers"][0].pop("shape"), "lacks field 'shape'"),
    (lambda d: d.update(layers=[]), "'layers' must be a non-empty list"),
    (lambda d: d["layers"].append(dict(d["layers"][0])), "appears twice"),
])
def test_invalid_files_name_the_offending_field(tmp_path, layers, mutate, message):
    data = Policy.uniform(layers, 4, 4).to_dict()
    mutate(data)
    with pytest.raises(HaqError, match=message):
        Policy.load(_write(tmp_path, data))


def test_not_json_and_missing_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(HaqError, match="not valid JSON"):
        Policy.load(bad)
    with pytest.raises(HaqError, match="does not exist"):
        Policy.load(tmp_path / "missing.json")


def test_applying_to_a_different_model_lists_differences(layers):
    policy = Policy.uniform(layers, 4, 4)
    other = extract_layers(nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(8 * 36, 10)),
                           torch.zeros(1, 1, 8, 8))
    with pytest.raises(HaqError) as err:
        policy.check_layers(other)
    text = str(err.value)
    assert "(missing 1 layer(s): '2'; unknown 1 layer(s): '3'; another shape in 1 layer(s): '0' (policy conv:1->4" \
        in text
    assert f", model {other[0].shape_key()}))" in text


def test_missing_and_extra_layers_in_bits(layers):
    with pytest.raises(HaqError, match="no bits given for layer '3'"):
        Policy.from_bits(layers, {"0": (4, 4)})
    with pytest.raises(HaqError, match="unknown layer"):
        Policy.from_bits(layers, {"0": (4, 4), "3": (4, 4), "9": (2, 2)})


def test_binary_and_deeply_nested_files_are_clear_errors(tmp_path):
    binary = tmp_path / "policy.pt"
    binary.write_bytes(b"\x80\x02}q\x00(\xff\xfe" * 50)
    with pytest.raises(HaqError, match=r"policy.pt is not a text file \(it is not valid UTF-8\)"):
        Policy.load(binary)
    nested = tmp_path / "nested.json"
    nested.write_text('{"a":' * 50_000 + "1" + "}" * 50_000)
    with pytest.raises(HaqError, match="nested too deeply"):
        Policy.load(nested)
    with pytest.raises(HaqError, match="is a directory"):
        Policy.load(tmp_path)


def test_a_different_model_error_names_the_model_the_policy_was_searched_on(layers):
    other = extract_layers(nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(8 * 36, 10)),
                           torch.zeros(1, 1, 8, 8))
    policy = Policy.uniform(layers, 4, 4, task={"model": "mypkg.nets:small", "input_shape": None, "data": None})
    with pytest.raises(HaqError, match=r"\)\): it was searched on a different model \(--model mypkg.nets:small\); "
                                       r"pass --model mypkg.nets:small to use it\.$"):
        policy.check_layers(other)
    unrecorded = Policy.uniform(layers, 4, 4)
    with pytest.raises(HaqError, match=r"searched on a different model; load it with that model, or search again"):
        unrecorded.check_layers(other)


def test_bits_are_checked_like_everywhere_else(layers):
    with pytest.raises(HaqError, match=r"weight bits of layer '0': True is not a bit width"):
        Policy.from_bits(layers, [(True, 8), (4, 4)])
    with pytest.raises(HaqError, match=r"activation bits of layer '3': 17 is not a bit width; use an integer "
                                       r"from 1 to 16"):
        Policy.from_bits(layers, {"0": (8, 8), "3": (4, 17)})
    with pytest.raises(HaqError, match=r"layer '3': expected a \(weight_bits, activation_bits\) pair, got 4"):
        Policy.from_bits(layers, {"0": (8, 8), "3": 4})
    names = [("0", "a"), ("3", "b")]
    with pytest.raises(HaqError, match=r"Policy bits do not match its layers \(missing 1 layer\(s\): '3'\)"):
        Policy(bits={"0": (8, 8)}, layers=names)
    policy = Policy(bits={"0": (8, 8), "3": [4, 2]}, layers=names)
    assert policy.bits == {"0": (8, 8), "3": (4, 2)}  # lists (as JSON gives them) become pairs
