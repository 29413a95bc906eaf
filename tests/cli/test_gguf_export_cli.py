"""``haq-plugin export --format gguf`` as a user types it, and its one-line refusals (exit 2).

The model is a tiny random Llama written as a GGUF (``--model gguf:FILE``); the policy
is written here at mixed bits with the provenance a search records, so the export
finds the model, the data and the searched backend options in it.
"""

from __future__ import annotations

import gguf
import pytest

pytest.importorskip("transformers", reason="the llm extra is not installed")

from haq_plugin import Policy, extract_layers  # noqa: E402
from haq_plugin.adapters.groupwise.gguf_types import RECIPE_TYPES, WRITTEN_TYPES  # noqa: E402
from tests.cli.test_llm_cli import haq, the_error  # noqa: E402
from tests.tasks.llm.tiny_llama import tiny_llama, tiny_text, write_gguf  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

WINDOWS = {"window": 32, "calibration_windows": 1, "val_windows": 2, "test_windows": 2}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The source GGUF, the text, a Hugging Face checkpoint, and a policy searched (in effect) on the GGUF."""
    from haq_plugin.tasks.specs import load_model

    root = tmp_path_factory.mktemp("gguf-cli")
    model, tokenizer = tiny_llama(seed=1)
    write_gguf(root / "tiny.gguf", model, tokenizer)
    model.save_pretrained(root / "ckpt")
    tokenizer.save_pretrained(root / "ckpt")
    (root / "corpus.txt").write_text(tiny_text(), encoding="utf-8")
    task = {"model": f"gguf:{root / 'tiny.gguf'}", "data": f"text:{root / 'corpus.txt'}", "data_options": WINDOWS}
    source = load_model(task["model"], None, task["data"], WINDOWS)
    layers = extract_layers(source.model, source.example_input)
    bits = {layer.name: (2 + i % 7, 8) for i, layer in enumerate(layers)}
    Policy.from_bits(layers, bits, backend={"name": "groupwise", "config": {"group_size": 32}},
                     search={"quantize": "weights", "task": task}).save(root / "policy.json")
    return root


def test_export_writes_a_gguf_and_its_recipe(files, tmp_path, capsys):
    out = tmp_path / "tiny-mixed.gguf"
    code, stdout, stderr = haq(capsys, "export", "--policy", str(files / "policy.json"), "--backend", "groupwise",
                               "--format", "gguf", "--out", str(out))
    assert code == 0, stderr
    assert f"wrote {out} (GGUF, exact types, 15 layers)" in stdout and f"{out}.tensor-types.txt" in stdout
    types = {tensor.name: tensor.tensor_type.name for tensor in gguf.GGUFReader(str(out)).tensors}
    policy = Policy.load(files / "policy.json")
    recipe = (tmp_path / "tiny-mixed.gguf.tensor-types.txt").read_text().splitlines()
    assert len(recipe) == len(policy.bits) == 15
    for line, (layer, (width, _)) in zip(recipe, policy.bits.items()):
        tensor, k_type = line.split("=")
        assert (types[tensor], k_type) == (WRITTEN_TYPES[width], RECIPE_TYPES[width]), layer
    assert recipe[0] == "blk.0.attn_q.weight=q2_k" and recipe[-1] == "token_embd.weight=q2_k"


REFUSED = {
    "another backend": (["--backend", "torch.ao"], "--format gguf: backend 'torch.ao' does not write GGUF files"),
    "a Hugging Face checkpoint": (["--backend", "groupwise", "--model", "hf:{root}/ckpt"],
                                  "--format gguf needs a model loaded from a GGUF file (--model gguf:FILE or llm:NAME)"),
    "a group size without a GGUF block": (["--backend", "groupwise", "--backend-option", "group_size=16"],
                                          "group_size=16 puts two groups in one GGUF block of 32 weights"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refusals_are_one_line_and_exit_2(case, files, tmp_path, capsys):
    extra, message = REFUSED[case]
    code, stdout, stderr = haq(capsys, "export", "--policy", str(files / "policy.json"), "--format", "gguf",
                               "-o", str(tmp_path / "out.gguf"), *[arg.format(root=files) for arg in extra])
    assert code == 2, stderr
    assert message in the_error(stderr)
    assert not (tmp_path / "out.gguf").exists()


def test_k_types_with_verify_report_fallbacks_and_both_perplexities(files, tmp_path, capsys):
    pytest.importorskip("llama_cpp", reason="the llamacpp extra (llama-cpp-python) is not installed")
    out = tmp_path / "tiny-k.gguf"
    code, stdout, stderr = haq(capsys, "export", "--policy", str(files / "policy.json"), "--backend", "groupwise",
                               "--format", "gguf", "--gguf-types", "k", "--verify", "--out", str(out))
    assert code == 0, stderr
    assert f"wrote {out} (GGUF, k types, 15 layers)" in stdout
    # hidden 64: no row holds a K super-block of 256 weights, so llama.cpp falls back for every K type, and says so
    k_typed = sum(1 for width, _ in Policy.load(files / "policy.json").bits.values() if width <= 6)
    assert f"note: llama.cpp wrote another type where a row is not a multiple of 256 weights, {k_typed} tensors: " \
        in stdout
    line = next(line for line in stdout.splitlines() if line.startswith("perplexity on the search's"))
    assert line.startswith("perplexity on the search's 2 val windows of 32 tokens: searched ")
    searched, measured = (float(part.split()[-1]) for part in line.split(": ", 1)[1].split(" (")[0].split(", "))
    assert measured == pytest.approx(searched, rel=0.1)  # a random model: perplexity near its vocabulary size


@pytest.mark.parametrize("extra, message", [
    (["--gguf-types", "k"], "--gguf-types and --verify apply to --format gguf only."),
    (["--verify"], "--gguf-types and --verify apply to --format gguf only."),
])
def test_gguf_options_without_format_gguf_are_refused(files, tmp_path, capsys, extra, message):
    code, stdout, stderr = haq(capsys, "export", "--policy", str(files / "policy.json"), "--backend", "groupwise",
                               "-o", str(tmp_path / "out.json"), *extra)
    assert code == 2, stderr
    assert message in the_error(stderr)


def test_k_types_without_the_llamacpp_extra_are_a_one_line_refusal(files, tmp_path):
    from tests.hardware_models.llamacpp.test_unavailable import INSTALL, haq_without_llama_cpp

    result = haq_without_llama_cpp("export", "--policy", str(files / "policy.json"), "--backend", "groupwise",
                                   "--format", "gguf", "--gguf-types", "k", "-o", str(tmp_path / "out.gguf"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --gguf-types k: it needs the llamacpp extra"), lines
    assert lines[0].endswith(INSTALL)
    assert not (tmp_path / "out.gguf").exists()
