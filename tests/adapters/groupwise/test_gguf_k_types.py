"""The K-type GGUF export (llama.cpp's quantizer) and llama.cpp's perplexity of exported files.

Skipped without the ``llamacpp`` extra.  Two tiny Llamas: one with hidden size 256
(rows that K types hold: every tensor must get the K type of its bits), one with
the default hidden size 64 (no row holds a super-block of 256: every tensor must be
reported as a fallback).  The perplexity checks run the trained tiny Llama, whose
perplexity (about 8) moves when its weights are rounded.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

pytest.importorskip("llama_cpp", reason="the llamacpp extra (llama-cpp-python) is not installed")
pytest.importorskip("transformers", reason="the llm extra is not installed")

from haq_plugin import Policy, extract_layers, load_backend  # noqa: E402
from haq_plugin.adapters.groupwise.gguf_export import recipe_path  # noqa: E402
from haq_plugin.adapters.groupwise.gguf_k_types import K_TYPES, describe_fallbacks, fallbacks  # noqa: E402
from haq_plugin.adapters.groupwise.gguf_names import gguf_name, in_gguf_order  # noqa: E402
from haq_plugin.hardware_models.llamacpp.perplexity import gguf_perplexity  # noqa: E402
from haq_plugin.tasks.llm.perplexity import perplexity  # noqa: E402
from tests.tasks.llm.tiny_llama import tiny_llama, tiny_text, trained_tiny_llama, write_gguf  # noqa: E402

HEADS, KV_HEADS = 4, 2  # tiny_llama's
# relative RMS distance from the searched (fake-quantized) weights that llama.cpp's re-rounding may add:
# about half a step of the K type's grid, whose scales are themselves 4 to 8-bit numbers
K_BOUNDS = {"Q2_K": 0.25, "Q3_K": 0.25, "Q4_K": 0.04, "Q5_K": 0.04, "Q6_K": 0.04, "Q8_0": 0.01}


def _prepared(root, model, tokenizer, bits_of):
    """``(backend, layers, bits, source, model)``: the tiny Llama written as a GGUF, reloaded, the groupwise backend."""
    from transformers import AutoModelForCausalLM

    source = write_gguf(root / "source.gguf", model, tokenizer)
    loaded = AutoModelForCausalLM.from_pretrained(root, gguf_file="source.gguf", dtype=torch.float32).eval()
    example = torch.randint(0, 300, (1, 8))
    layers = extract_layers(loaded, example)
    bits = {layer.name: bits_of(i) for i, layer in enumerate(layers)}
    backend = load_backend("groupwise", group_size=32)
    backend.prepare(loaded, example, [example], layers=layers)
    return backend, layers, bits, source, loaded


def _policy(layers, bits):
    return Policy.from_bits(layers, {name: (width, 8) for name, width in bits.items()})


@pytest.fixture(scope="module")
def k_export(tmp_path_factory):
    """Hidden 256: every width 2..8 exported in K types."""
    root = tmp_path_factory.mktemp("k-types")
    backend, layers, bits, source, _ = _prepared(root, *tiny_llama(seed=3, hidden_size=256, intermediate_size=512),
                                              lambda i: 2 + i % 7)
    path = backend.export_gguf(_policy(layers, bits), root / "k.gguf", source, types="k")
    return backend, bits, path


def test_every_tensor_has_the_k_type_of_its_bits(k_export):
    backend, bits, path = k_export
    types = {tensor.name: tensor.tensor_type.name for tensor in gguf.GGUFReader(str(path)).tensors}
    for layer, width in bits.items():
        assert types[gguf_name(layer, tied=True)] == K_TYPES[width], layer
    assert {types[name] for name in types if "norm" in name} == {"F32"}
    assert fallbacks(path) == {}
    assert len(recipe_path(path).read_text().split()) == len(bits)
    assert not list(path.parent.glob(".k.gguf*"))  # the staging float32 file and the log are gone


def test_dequantized_k_tensors_are_near_the_searched_weights(k_export):
    backend, bits, path = k_export
    tensors = {tensor.name: tensor for tensor in gguf.GGUFReader(str(path)).tensors}
    for layer, width in bits.items():
        name = gguf_name(layer, tied=True)
        searched = in_gguf_order(backend._weights.rounded(layer, width), name, HEADS, KV_HEADS).numpy()
        tensor = tensors[name]
        stored = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(searched.shape)
        distance = np.sqrt(np.mean((stored - searched) ** 2) / np.mean(searched ** 2))
        assert distance <= K_BOUNDS[K_TYPES[width]], (layer, width, distance)
        assert distance > 0 or K_TYPES[width] == "Q8_0"  # a real re-rounding, not a copy


def test_rows_narrower_than_a_super_block_are_reported_as_fallbacks(tmp_path):
    backend, layers, bits, source, _ = _prepared(tmp_path, *tiny_llama(seed=3), lambda i: 3)
    path = backend.export_gguf(_policy(layers, bits), tmp_path / "k.gguf", source, types="k")
    found = fallbacks(path)
    assert set(found) == {gguf_name(layer, tied=True) for layer in bits}  # hidden 64: no row holds 256 weights
    assert {asked for asked, _ in found.values()} == {"Q3_K"}
    written = {kind for _, kind in found.values()}
    assert written and not written & {"Q3_K", "F32"}
    assert describe_fallbacks(found).startswith(f"{len(bits)} tensors: ")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The trained tiny Llama as a float32 GGUF and its backend, with 4 windows of 64 tokens of its text."""
    root = tmp_path_factory.mktemp("k-perplexity")
    model, tokenizer = trained_tiny_llama()
    backend, layers, _, source, loaded = _prepared(root, model, tokenizer, lambda i: 8)
    ids = torch.tensor(tokenizer(tiny_text(), add_special_tokens=False)["input_ids"])
    return root, backend, layers, source, loaded, ids[:256].reshape(4, 64)


def test_llama_cpp_perplexity_of_the_float_file_is_transformers_perplexity(trained):
    root, backend, layers, source, float_model, windows = trained
    assert gguf_perplexity(source, windows) == pytest.approx(perplexity(float_model, windows), rel=2e-4)


@pytest.mark.parametrize("width, types, tolerance", [(8, "exact", 0.002), (4, "exact", 0.01), (3, "exact", 0.01),
                                                     (4, "k", 0.03)])
def test_llama_cpp_perplexity_of_an_export_is_near_the_searched_one(trained, width, types, tolerance):
    """Exact types differ only by llama.cpp's 8-bit activations in its dot products; K types also re-round."""
    root, backend, layers, source, _, windows = trained
    bits = {layer.name: (width, 8) for layer in layers}
    backend.set_policy(bits)
    searched = perplexity(backend.model, windows)
    path = backend.export_gguf(Policy.from_bits(layers, bits), root / f"{types}-{width}.gguf", source, types=types)
    measured = gguf_perplexity(path, windows)
    assert measured == pytest.approx(searched, rel=tolerance)
