"""``llamacpp-cpu`` with llama-cpp-python installed, on the tiny random-weight Llama (skipped without it).

CI does not install the ``llamacpp`` extra: ``pip install llama-cpp-python`` builds
llama.cpp from source, about 20 minutes on 2 CPU cores (cmake and a C++ compiler
needed).  Here the tiny Llama of :mod:`tests.tasks.llm.tiny_llama` (2 blocks,
hidden 64) is written as a float32 GGUF, llama.cpp loads it and generates, and the
table measured on it (a few seconds) must cover every (shape, type) its layers
need with positive latencies.

Whether a lower type is faster is not asserted at this size: each tensor is a
few thousand weights, its time per token is microseconds of dispatch in which
Q4_1 and Q8_0 differ less than the timing noise of a shared machine; the
SmolLM2 table of ``benchmarks/llamacpp_table.py`` (RESULTS.md section 12) shows
where lower bits are faster.  What is asserted: widths that share a type
(2-4 Q4_1, 6-8 Q8_0) cost the same, since they are the same file.
"""

from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp", reason="the llamacpp extra (llama-cpp-python) is not installed")
pytest.importorskip("transformers", reason="the llm extra is not installed")

from haq_plugin import extract_layers, load_hardware  # noqa: E402
from haq_plugin.adapters.groupwise.gguf_types import WRITTEN_TYPES  # noqa: E402
from haq_plugin.cli import main  # noqa: E402
from haq_plugin.hardware_models.llamacpp.variants import TYPES, Calibration, shape_label  # noqa: E402
from tests.tasks.llm.tiny_llama import tiny_llama, write_gguf  # noqa: E402

OPTIONS = {"threads": 1, "context": 64, "prompt_tokens": 16, "decode_tokens": 8, "repeats": 3}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(gguf path, layers)`` of the tiny Llama."""
    import torch

    root = tmp_path_factory.mktemp("llamacpp")
    model, tokenizer = tiny_llama(seed=1)
    model.config.max_position_embeddings = 512  # room for the default text window of `cost` (256 tokens)
    path = write_gguf(root / "tiny.gguf", model, tokenizer)
    return path, extract_layers(model, torch.randint(0, 300, (1, 8)))


@pytest.fixture(scope="module")
def hardware(tiny):
    return load_hardware("llamacpp-cpu", model=f"gguf:{tiny[0]}", **OPTIONS)


def generated_tokens(path) -> int:
    import llama_cpp

    model = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=1, verbose=False, seed=0)
    try:
        out = model.create_completion("for x in", max_tokens=8, temperature=0.0)
    finally:
        model.close()
    return out["usage"]["completion_tokens"]


def test_the_tiny_gguf_and_a_mixed_export_of_it_load_in_llama_cpp_and_generate(tiny, tmp_path):
    path, _ = tiny
    assert generated_tokens(path) >= 1
    calibration = Calibration(path)
    mixed = calibration.write(tmp_path / "mixed.gguf", {t.name: TYPES[i % 3] for i, t in
                                                        enumerate(calibration.tensors)})
    assert generated_tokens(mixed) >= 1


def test_the_table_covers_every_shape_and_type_of_the_tiny_model_with_positive_latencies(tiny, hardware):
    _, layers = tiny
    table = hardware.table()
    assert set(table.counts) == {shape_label((layer.out_channels, layer.in_channels)) for layer in layers}
    for label in table.counts:
        assert set(table.delta["decode"][label]) == set(TYPES) - {"Q8_0"}
    for layer in layers:
        costs = hardware.layer_costs(layer, [(w, 8) for w in sorted(WRITTEN_TYPES)])
        assert all(c.latency_s > 0 and c.details["prompt_s"] > 0 for c in costs), (layer.name, costs, table.base)
        by_type = {c.details["gguf_type"]: c.latency_s for c in costs}
        assert len(by_type) == 3  # 2-4 share Q4_1's figure, 6-8 Q8_0's
        assert costs[0].latency_s == costs[2].latency_s and costs[4].latency_s == costs[6].latency_s


def test_cost_and_hw_show_on_the_command_line(tiny, capsys):
    path, _ = tiny
    options = [item for key, value in OPTIONS.items() for item in ("--hw-option", f"{key}={value}")]
    main(["cost", "--model", f"gguf:{path}", "--hw", "llamacpp-cpu", "--hw-option", f"model=gguf:{path}",
          *options, "--bits", "4/8"])
    out = capsys.readouterr().out
    assert "on llamacpp-cpu" in out and "total latency" in out and "lm_head" in out
    main(["hw", "show", "llamacpp-cpu"])
    shown = capsys.readouterr().out
    assert "unavailable" not in shown and "--hw-option phase='decode'" in shown
