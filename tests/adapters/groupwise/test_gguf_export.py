"""The GGUF export: a tiny random Llama at mixed bits, read back with ``gguf`` and with transformers.

The source is the tiny Llama written as a float32 GGUF by the tests' own writer
(q/k rows in llama.cpp's order); the model is what transformers loads from it, as
``--model gguf:FILE`` does.  Every width 2-8 appears, so every row of the type table
is checked.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="the llm extra is not installed")

from haq_plugin import HaqError, Policy, extract_layers, load_backend  # noqa: E402
from haq_plugin.adapters.groupwise.gguf_export import recipe_path, write_gguf  # noqa: E402
from haq_plugin.adapters.groupwise.gguf_names import gguf_name, hf_name, in_gguf_order  # noqa: E402
from haq_plugin.adapters.groupwise.gguf_types import RECIPE_TYPES, WRITTEN_TYPES, gguf_blocks  # noqa: E402
from haq_plugin.adapters.groupwise.grid import GroupGrid  # noqa: E402
from haq_plugin.adapters.groupwise.weights import rounded_weight  # noqa: E402
from tests.tasks.llm.tiny_llama import one_line, tiny_llama, write_gguf as write_tiny_gguf  # noqa: E402

GRID = GroupGrid(32)
HEADS, KV_HEADS = 4, 2  # tiny_llama's


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``(model, bits, path)``: the GGUF-loaded tiny Llama, its mixed bits, and the exported GGUF."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("gguf-export")
    write_tiny_gguf(root / "source.gguf", *tiny_llama(seed=3))
    model = AutoModelForCausalLM.from_pretrained(root, gguf_file="source.gguf", dtype=torch.float32).eval()
    example = torch.randint(0, 300, (1, 8))
    layers = extract_layers(model, example)
    bits = {layer.name: 2 + i % 7 for i, layer in enumerate(layers)}  # every width 2..8; lm_head (tied) too
    backend = load_backend("groupwise", group_size=32)
    backend.prepare(model, example, [example], layers=layers)
    path = backend.export_gguf(Policy.from_bits(layers, {n: (b, 8) for n, b in bits.items()}), root / "out.gguf",
                               root / "source.gguf")
    return model, bits, path


def _fake_quantized(model, layer: str, bits: int) -> torch.Tensor:
    return rounded_weight(model.get_submodule(layer).weight.detach(), bits, GRID)


def _tensors(path) -> dict:
    return {tensor.name: tensor for tensor in gguf.GGUFReader(str(path)).tensors}


def test_every_searched_tensor_has_the_type_of_the_table(exported):
    model, bits, path = exported
    tensors = _tensors(path)
    for layer, width in bits.items():
        assert tensors[gguf_name(layer, tied=True)].tensor_type.name == WRITTEN_TYPES[width], layer
    assert {tensors[name].tensor_type.name for name in tensors if "norm" in name} == {"F32"}  # copied as they were
    assert "output.weight" not in tensors  # tied: lm_head is the embedding


def _q8_0_bound(values: np.ndarray) -> np.ndarray:
    """Half a Q8_0 step per weight (``amax / 254`` of its block of 32), plus the float16 step's rounding
    times up to 127 levels (``amax / 2048``)."""
    blocks = np.abs(values).reshape(-1, 32).max(axis=1, keepdims=True) * (1 / 254 + 2 ** -11)
    return np.broadcast_to(blocks, (blocks.shape[0], 32)).reshape(values.shape) + 1e-7


def test_dequantized_tensors_are_the_fake_quantized_weights(exported):
    model, bits, path = exported
    tensors = _tensors(path)
    for layer, width in bits.items():
        name = gguf_name(layer, tied=True)
        expected = in_gguf_order(_fake_quantized(model, layer, width), name, HEADS, KV_HEADS).numpy()
        got = gguf.quants.dequantize(np.asarray(tensors[name].data), tensors[name].tensor_type)
        if width <= 5:  # Q4_1, Q5_1: the same float16 scale and minimum, the same levels
            assert np.array_equal(got, expected), layer
        else:
            assert bool((np.abs(got - expected) <= _q8_0_bound(expected)).all()), layer


def test_the_recipe_lists_every_decoder_linear_with_its_k_type(exported):
    model, bits, path = exported
    lines = recipe_path(path).read_text().splitlines()
    assert lines == [f"{gguf_name(layer, tied=True)}={RECIPE_TYPES[width]}" for layer, width in bits.items()]
    assert "blk.0.attn_q.weight=q2_k" in lines and "blk.1.attn_output.weight=q5_k" in lines
    assert {hf_name(line.split("=")[0], tied=True) for line in lines} == set(bits)


def test_transformers_reloads_the_fake_quantized_weights(exported):
    from transformers import AutoModelForCausalLM

    model, bits, path = exported
    reloaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    for layer, width in bits.items():
        expected = _fake_quantized(model, layer, width)
        got = reloaded.get_submodule(layer).weight.detach()
        if width <= 5:
            assert torch.equal(got, expected), layer
        else:
            assert bool((got - expected).abs().le(torch.from_numpy(_q8_0_bound(expected.numpy()).copy())).all())
    norm = "model.layers.1.input_layernorm.weight"
    assert torch.equal(reloaded.state_dict()[norm], model.state_dict()[norm])


def test_metadata_and_tokenizer_are_copied(exported):
    path = exported[2]
    source = gguf.GGUFReader(str(path.parent / "source.gguf")).fields
    written = gguf.GGUFReader(str(path)).fields
    for key in ("general.architecture", "llama.attention.head_count", "llama.block_count", "tokenizer.ggml.model",
                "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id"):
        assert written[key].contents() == source[key].contents(), key
    assert written["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0  # the MLPs hold most weights


@pytest.mark.parametrize("group_size", [64, 0])
@pytest.mark.parametrize("weight_range", ["minmax", "mse"])
def test_larger_groups_and_clipped_ranges_are_exact_too(group_size, weight_range):
    torch.manual_seed(0)
    weight = torch.randn(16, 128)
    grid = GroupGrid(group_size, "float", weight_range)
    for bits in (2, 3, 4, 5):
        data, qtype = gguf_blocks(weight, bits, grid)
        assert np.array_equal(gguf.quants.dequantize(data, qtype), rounded_weight(weight, bits, grid).numpy())


@pytest.mark.parametrize("grid, message", [
    (GroupGrid(32, "integer"), "zero_point=integer (torchao's grid), which no GGUF block type holds"),
    (GroupGrid(16), "group_size=16 puts two groups in one GGUF block of 32 weights"),
])
def test_grids_without_an_exact_block_are_refused(grid, message):
    with pytest.raises(HaqError) as error:
        gguf_blocks(torch.randn(4, 64), 4, grid)
    assert message in one_line(error)


def test_a_source_that_is_not_llama_is_refused(tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    for step in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file,
                 writer.close):
        step()
    with pytest.raises(HaqError) as error:
        write_gguf(tmp_path / "out.gguf", tmp_path / "gpt2.gguf", {"lm_head": torch.zeros(4, 32)}, {"lm_head": 8},
                   GRID)
    assert "is a 'gpt2' model; the GGUF export writes Llama-architecture language models only" in one_line(error)
    assert not (tmp_path / "out.gguf").exists()


def test_a_layer_outside_llamas_names_is_refused():
    with pytest.raises(HaqError) as error:
        gguf_name("model.layers.0.mlp.fc1", tied=False)
    assert "layer 'model.layers.0.mlp.fc1' is not a Llama decoder linear" in one_line(error)
    assert gguf_name("lm_head", tied=False) == "output.weight"


def test_gptq_levels_are_written_as_they_are(tmp_path):
    """GPTQ's levels are not the nearest ones: the file must hold the searched weights, not a re-rounding."""
    from transformers import AutoModelForCausalLM

    write_tiny_gguf(tmp_path / "source.gguf", *tiny_llama(seed=4))
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="source.gguf", dtype=torch.float32).eval()
    calibration = [torch.randint(0, 300, (1, 32)) for _ in range(4)]
    layers = [layer for layer in extract_layers(model, calibration[0]) if layer.name != "lm_head"]
    bits = {layer.name: 2 + i % 4 for i, layer in enumerate(layers)}  # 2..5: Q4_1 and Q5_1, exact
    backend = load_backend("groupwise", group_size=32, rounding="gptq")
    backend.prepare(model, calibration[0], calibration, layers=layers)
    backend.set_policy({name: (b, 8) for name, b in bits.items()})
    path = backend.export_gguf(Policy.from_bits(layers, {n: (b, 8) for n, b in bits.items()}), tmp_path / "out.gguf",
                               tmp_path / "source.gguf")
    tensors = _tensors(path)
    moved = 0
    for layer, width in bits.items():
        name = gguf_name(layer, tied=True)
        searched = backend.model.get_submodule(layer).weight.detach()
        got = gguf.quants.dequantize(np.asarray(tensors[name].data), tensors[name].tensor_type)
        assert np.array_equal(got, in_gguf_order(searched, name, HEADS, KV_HEADS).numpy()), layer
        moved += not torch.equal(searched, _fake_quantized(model, layer, width))
    assert moved == len(bits)  # every layer's GPTQ weights differ from rounding to nearest
