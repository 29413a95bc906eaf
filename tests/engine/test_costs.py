import numpy as np
import pytest
import torch

from haq_plugin import HaqError, LayerSpec, extract_layers, load_hardware
from haq_plugin.engine.costs import build_cost_table
from haq_plugin.tasks.zoo import MobileNetV1


@pytest.fixture(scope="module")
def layers():
    return extract_layers(MobileNetV1(), torch.zeros(1, 3, 224, 224))[:6]


def test_table_matches_direct_simulation(layers):
    hw = load_hardware("bitfusion")
    table = build_cost_table(hw, layers, cache=False)
    assert table.bits == tuple(range(1, 9))
    for i, layer in enumerate(layers):
        for w, a in [(8, 8), (4, 2), (2, 8)]:
            cost = hw.layer_cost(layer, w, a)
            assert table.latency[i, table.index(w), table.index(a)] == cost.latency_s
            assert table.energy[i, table.index(w), table.index(a)] == cost.energy_j


def test_size_and_bops_are_hardware_independent(layers):
    table = build_cost_table(load_hardware("bismo-edge"), layers, cache=False)
    bits = [(8, 8), (4, 6), (2, 2), (3, 5), (8, 1), (6, 6)]
    assert table.policy_cost("size", bits) == sum(l.params * w / 8 for l, (w, _) in zip(layers, bits))
    assert table.policy_cost("bops", bits) == sum(l.macs * w * a for l, (w, a) in zip(layers, bits))
    with pytest.raises(HaqError, match="no energy model"):
        table.metric("energy")


def test_cache_round_trip_and_key(layers, tmp_path, monkeypatch):
    monkeypatch.setenv("HAQ_PLUGIN_CACHE", str(tmp_path))
    hw = load_hardware("bitfusion")
    cold = build_cost_table(hw, layers)
    warm = build_cost_table(hw, layers)
    assert not cold.from_cache and warm.from_cache
    np.testing.assert_array_equal(cold.latency, warm.latency)
    np.testing.assert_array_equal(cold.energy, warm.energy)
    other = build_cost_table(load_hardware("bitfusion", bandwidth_bits=64), layers)
    assert not other.from_cache  # options are part of the key
    assert other.uniform_cost("latency") > cold.uniform_cost("latency")


def test_lower_bits_cost_less_overall(layers):
    for name in ("bitfusion", "bitfusion-cloud", "bismo-edge", "bismo-cloud"):
        table = build_cost_table(load_hardware(name), layers, cache=False)
        costs = [table.uniform_cost("latency", b) for b in (8, 4, 2)]
        assert costs[0] > costs[1] > costs[2], name


def test_unsupported_bits_are_rejected():
    hw = load_hardware("bitfusion")
    layer = LayerSpec(name="fc", kind="linear", in_channels=64, out_channels=10)
    with pytest.raises(HaqError, match="does not support"):
        build_cost_table(hw, [layer], bits=[4, 16], cache=False)


# --- cache key: each model's own code -----------------------------------------------------------------------


def test_code_hash_covers_a_models_own_module_and_project_imports_only():
    from haq_plugin.storage.code_hash import project_imports

    bitfusion = project_imports("haq_plugin.hardware_models.bitfusion")
    bismo = project_imports("haq_plugin.hardware_models.bismo")
    assert {"haq_plugin.hardware_models.bitfusion.rules", "haq_plugin.api.hardware", "haq_plugin.api.bits"} <= bitfusion
    assert not any("bismo" in name for name in bitfusion)
    assert not any("bitfusion" in name for name in bismo)
    assert "haq_plugin.hardware_models.bismo.validation" in bismo
    assert all(name.startswith("haq_plugin.") for name in bitfusion | bismo)


def test_cache_key_does_not_depend_on_what_else_is_imported(tmp_path):
    import subprocess
    import sys

    script = ("import sys; {extra}from haq_plugin.engine.costs import model_code_hash; "
              "from haq_plugin.hardware_models.bitfusion import BitFusionEdge; print(model_code_hash(BitFusionEdge))")
    hashes = {subprocess.run([sys.executable, "-c", script.format(extra=extra)], capture_output=True, text=True,
                             check=True).stdout.strip()
              for extra in ("", "import haq_plugin.hardware_models.bismo, haq_plugin.engine.search; ")}
    assert len(hashes) == 1 and len(hashes.pop()) == 16


def test_editing_another_model_leaves_the_key_unchanged(tmp_path, monkeypatch):
    """A copy of the package tree where bismo/__init__.py differs: BitFusion's hash stays, BISMO's changes."""
    import shutil
    import subprocess
    import sys

    import haq_plugin

    pkg = tmp_path / "haq_plugin"
    shutil.copytree(haq_plugin.__path__[0], pkg, ignore=shutil.ignore_patterns("__pycache__"))
    models = tmp_path / "hardware_models_src"
    import haq_plugin.hardware_models as hm

    shutil.copytree(hm.__path__[0], models, ignore=shutil.ignore_patterns("__pycache__"))
    if (pkg / "hardware_models").exists():
        shutil.rmtree(pkg / "hardware_models")
    shutil.move(str(models), str(pkg / "hardware_models"))
    script = ("from haq_plugin.storage.code_hash import module_source_hash as h; "
              "print(h('haq_plugin.hardware_models.bitfusion'), h('haq_plugin.hardware_models.bismo'))")

    def hashes() -> list[str]:
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                             cwd=tmp_path, env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
        return out.stdout.split()

    before = hashes()
    with open(pkg / "hardware_models" / "bismo" / "__init__.py", "a") as handle:
        handle.write("\n# edited\n")
    after = hashes()
    assert before[0] == after[0] and before[1] != after[1]


# --- cache faults: fall back or rebuild ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["regular-file", "uncreatable", "read-only"])
def test_unusable_cache_warns_once_and_runs_without_it(kind, layers, tmp_path, monkeypatch, capsys):
    import os

    if kind == "regular-file":
        root = tmp_path / "a-file"
        root.write_text("not a directory")
    elif kind == "uncreatable":
        (tmp_path / "a-file").write_text("x")
        root = tmp_path / "a-file" / "sub" / "dir"
    else:
        if os.geteuid() == 0:
            pytest.skip("root ignores directory permissions")
        root = tmp_path / "ro"
        root.mkdir()
        root.chmod(0o500)
    monkeypatch.setenv("HAQ_PLUGIN_CACHE", str(root))
    hw = load_hardware("bismo-edge")
    try:
        first = build_cost_table(hw, layers)
        second = build_cost_table(hw, layers)
    finally:
        if kind == "read-only":
            root.chmod(0o700)
    assert not first.from_cache and not second.from_cache
    np.testing.assert_array_equal(first.latency, build_cost_table(hw, layers, cache=False).latency)
    lines = [l for l in capsys.readouterr().err.splitlines() if "cache" in l]
    assert len(lines) == 1 and lines[0].startswith("haq-plugin: warning: cost-table cache unusable")


def _cached_file(tmp_path):
    files = list((tmp_path / "cost-tables").glob("*.npz"))
    assert len(files) == 1
    return files[0]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong-shape", "energy-missing"])
def test_damaged_cache_file_is_a_miss_and_is_rewritten(damage, layers, tmp_path, monkeypatch):
    monkeypatch.setenv("HAQ_PLUGIN_CACHE", str(tmp_path))
    hw = load_hardware("bitfusion")
    good = build_cost_table(hw, layers)
    path = _cached_file(tmp_path)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 100)
    elif damage == "wrong-shape":
        np.savez(path, latency=np.ones((2, 8, 8)), energy=np.ones((2, 8, 8)))
    else:
        np.savez(path, latency=good.latency)
    rebuilt = build_cost_table(hw, layers)
    assert not rebuilt.from_cache
    np.testing.assert_array_equal(rebuilt.latency, good.latency)
    np.testing.assert_array_equal(rebuilt.energy, good.energy)
    again = build_cost_table(hw, layers)
    assert again.from_cache and _cached_file(tmp_path) == path
    np.testing.assert_array_equal(again.energy, good.energy)
    assert not list((tmp_path / "cost-tables").glob("*.tmp"))


def test_policy_with_a_width_outside_the_table_names_the_layer(layers):
    table = build_cost_table(load_hardware("bismo-edge"), layers, bits=[2, 4, 8], cache=False)
    bits = [(8, 8)] * len(layers)
    bits[3] = (8, 6)
    with pytest.raises(HaqError, match=rf"layer '{layers[3].name}': 6-bit activations are not in the cost table"):
        table.policy_cost("latency", bits)


def test_hardware_bit_check_names_the_layer_when_given():
    hw = load_hardware("bitfusion")
    with pytest.raises(HaqError, match=r"does not support 16-bit weights \(layer 'fc'\); supported bit widths"):
        hw.check_bits(16, 8, layer="fc")
    with pytest.raises(HaqError, match="not a bit width"):
        hw.check_bits(4.5, 8)
    with pytest.raises(HaqError, match="not a bit width"):
        build_cost_table(hw, [LayerSpec(name="fc", kind="linear", in_channels=4, out_channels=2)], bits=[True, 8])
