"""``haq-plugin search`` and ``export`` on a language model, as a user types them.

The model is a trained tiny Llama saved as a Hugging Face checkpoint (``--model hf:DIR``)
and the text a file (``--data text:FILE``).  Most cases call the command line's entry
point in this process (the same code path, without a second interpreter's start-up);
one runs it in a fresh interpreter as a user would.
"""

from __future__ import annotations

import copy
import json

import pytest

pytest.importorskip("transformers", reason="the llm extra is not installed")

from haq_plugin.cli import main  # noqa: E402
from haq_plugin.api.policy import Policy  # noqa: E402
from tests.helpers import run_cli  # noqa: E402
from tests.tasks.llm.tiny_llama import tiny_text, trained_tiny_llama  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

WINDOWS = ("--data-option", "window=32", "--data-option", "calibration_windows=1", "--data-option",
           "val_windows=2", "--data-option", "test_windows=2")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The checkpoint directory, the text, and the user's mistakes, on disk."""
    root = tmp_path_factory.mktemp("llm-cli")
    model, tokenizer = trained_tiny_llama()
    model.save_pretrained(root / "ckpt")
    tokenizer.save_pretrained(root / "ckpt")
    (root / "corpus.txt").write_text(tiny_text(), encoding="utf-8")
    (root / "empty.txt").write_text(" \n\n", encoding="utf-8")
    (root / "short.txt").write_text("for x in range(3): pass\n" * 3, encoding="utf-8")
    (root / "model.gguf").write_text("not a model\n")
    (root / "notes").mkdir()
    (root / "notes" / "README.txt").write_text("no checkpoint here\n")
    (root / "config-only").mkdir()
    model.config.save_pretrained(root / "config-only")
    return root


def haq(capsys, *args: str) -> tuple[int, str, str]:
    """``haq-plugin ARGS`` through its entry point: (exit status, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def the_error(stderr: str) -> str:
    """The one ``Error:`` line of a failed command (and no traceback)."""
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


def perplexities(files, policy_file):
    """(val perplexity with the recipe applied by torchao, with apply_policy) of a groupwise_policy.json."""
    from torchao.quantization import quantize_

    from haq_plugin.adapters.groupwise import apply_policy, load_quantize_config
    from haq_plugin.tasks.llm import build_language_model_task, perplexity

    task = build_language_model_task(f"hf:{files / 'ckpt'}", f"text:{files / 'corpus.txt'}", window=32,
                                     calibration_windows=1, val_windows=2, test_windows=2, progress=False)
    recipe = copy.deepcopy(task.model)
    quantize_(recipe, load_quantize_config(policy_file, recipe), filter_fn=None)
    applied = apply_policy(copy.deepcopy(task.model), policy_file)
    return perplexity(recipe, task.windows.val), perplexity(applied, task.windows.val)


def test_search_then_export_gives_torchao_the_searched_perplexity(files, tmp_path, capsys):
    out = tmp_path / "search"
    code, stdout, stderr = haq(capsys, "search", "--model", f"hf:{files / 'ckpt'}", "--data",
                               f"text:{files / 'corpus.txt'}", *WINDOWS, "--budget", "3.5bpw", "--strategy", "ddpg",
                               "--episodes", "4",
                               "--backend-option", "zero_point=integer", "--output", str(out))
    assert code == 0, stderr
    assert "perplexity" in stdout and "3.500 bits per weight of the searched layers" in stdout
    assert "Held-out test perplexity of the best policy" in stdout
    policy = Policy.load(out / "policy.json")
    searched = policy.provenance["search"]
    assert (searched["metric"], searched["decisions"], searched["bits_per_weight"]) == ("perplexity", "block", 3.5)
    assert policy.provenance["backend"]["config"]["zero_point"] == "integer"
    assert policy.bits["lm_head"] == (8, 8)

    exported = tmp_path / "exported.json"
    code, stdout, stderr = haq(capsys, "export", "--policy", str(out / "policy.json"), "--backend", "groupwise",
                               "-o", str(exported))
    assert code == 0, stderr
    assert f"wrote {exported} (groupwise format, 15 layers)" in stdout
    document = json.loads(exported.read_text())
    assert document["grid"]["zero_point"] == "integer"  # the grid the policy was searched on
    assert document == json.loads((out / "groupwise_policy.json").read_text())
    assert {entry["name"]: entry["weight_bits"] for entry in document["layers"]} == \
        {name: pair[0] for name, pair in policy.bits.items()}
    block = [entry for entry in document["layers"] if entry["name"] != "lm_head"]
    stored = sum(out * inp * entry["weight_bits"] + out * (inp // 64) * 32 for entry in block
                 for out, inp in [entry["shape"]])
    assert stored / sum(out * inp for out, inp in (entry["shape"] for entry in block)) <= 3.5 + 1e-9
    by_torchao, by_apply_policy = perplexities(files, exported)
    achieved = policy.provenance["achieved"]["accuracy"]
    assert by_apply_policy == pytest.approx(achieved, rel=1e-9)
    assert by_torchao == pytest.approx(achieved, rel=1e-3)


def test_a_language_model_search_rounds_with_gptq_and_export_keeps_its_weights(files, tmp_path, capsys):
    """The default: GPTQ on 32 calibration windows, recorded so that export and apply_policy rebuild it."""
    from haq_plugin.adapters.groupwise import apply_policy
    from haq_plugin.tasks.llm import build_language_model_task, perplexity

    out = tmp_path / "search"
    windows = ("--data-option", "window=32", "--data-option", "val_windows=2", "--data-option", "test_windows=2")
    code, stdout, stderr = haq(capsys, "search", "--model", f"hf:{files / 'ckpt'}", "--data",
                               f"text:{files / 'corpus.txt'}", *windows, "--budget", "3.5bpw", "--output", str(out))
    assert code == 0, stderr
    policy = Policy.load(out / "policy.json")
    assert policy.provenance["backend"]["config"]["rounding"] == "gptq"
    assert policy.provenance["search"]["task"]["data_options"]["calibration_windows"] == "32"
    exported = tmp_path / "exported.json"
    code, stdout, stderr = haq(capsys, "export", "--policy", str(out / "policy.json"), "--backend", "groupwise",
                               "-o", str(exported))
    assert code == 0, stderr
    assert json.loads(exported.read_text()) == json.loads((out / "groupwise_policy.json").read_text())
    assert json.loads(exported.read_text())["rounding"] == "gptq"
    task = build_language_model_task(f"hf:{files / 'ckpt'}", f"text:{files / 'corpus.txt'}", window=32,
                                     calibration_windows=32, val_windows=2, test_windows=2, progress=False)
    applied = apply_policy(copy.deepcopy(task.model), exported, list(task.windows.calibration.split(1)))
    assert perplexity(applied, task.windows.val) == pytest.approx(policy.provenance["achieved"]["accuracy"], rel=1e-6)

    code, stdout, stderr = haq(capsys, "search", "--model", f"hf:{files / 'ckpt'}", "--data",
                               f"text:{files / 'corpus.txt'}", *WINDOWS, "--budget", "3.5bpw", "--backend-option",
                               "rounding=nearest", "--output", str(tmp_path / "nearest"))
    assert code == 0, stderr
    assert Policy.load(tmp_path / "nearest" / "policy.json").provenance["backend"]["config"]["rounding"] == "nearest"


@pytest.mark.slow
def test_search_and_export_in_a_fresh_interpreter(files, tmp_path):
    out = tmp_path / "search"
    proc = run_cli("search", "--model", f"hf:{files / 'ckpt'}", "--data", f"text:{files / 'corpus.txt'}", *WINDOWS,
                   "--strategy", "greedy", "--budget", "3.75bpw", "--output", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Strategy greedy (1 episode(s)" in proc.stdout and "perplexity" in proc.stdout
    proc = run_cli("export", "--policy", str(out / "policy.json"), "--backend", "groupwise", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "groupwise_policy.json").read_text() == (out / "groupwise_policy.json").read_text()


BAD_INPUT = {
    "hf dir without a checkpoint": (["--model", "hf:{root}/notes"], "is not a Hugging Face checkpoint: no config.json"),
    "hf dir without weights": (["--model", "hf:{root}/config-only"], "is not a Hugging Face checkpoint: no weights"),
    "gguf that is not one": (["--model", "gguf:{root}/model.gguf"], "is not a GGUF file"),
    "empty text": (["--data", "text:{root}/empty.txt"], "empty.txt is empty"),
    "text too short": (["--data", "text:{root}/short.txt", *WINDOWS],
                       "short.txt has 51 tokens; 5 windows of 32 tokens (1 calibration, 2 val, 2 test) need 160"),
    "window past the context": (["--data-option", "window=129"],
                                "window 129 is longer than the model's context length 128"),
    "group size dividing no layer": ([*WINDOWS, "--backend-option", "group_size=256"],
                                     "group_size=256 does not divide the row length of 15 of 15 layers"),
    "budget below the minimum": ([*WINDOWS, "--budget", "1.5bpw"],
                                 "budget 1.5bpw is below the smallest size the search can reach: 2.5 bits per weight"),
    "bpw budget for latency": ([*WINDOWS, "--budget", "3.5bpw", "--constraint", "latency"],
                               "a bits-per-weight budget (3.5bpw) is a size budget; use --constraint size"),
    "unknown data option": (["--data-option", "windows=32"], "--data-option windows: not a language-model data option"),
    "accuracy of a language model": ([*WINDOWS, "--metric", "accuracy"],
                                     "--metric accuracy: a language model is measured by its perplexity"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_and_exit_2(case, files, tmp_path, capsys):
    extra, message = BAD_INPUT[case]
    args = [arg.format(root=files) for arg in extra]
    if "--model" not in args:
        args = ["--model", f"hf:{files / 'ckpt'}", *args]
    if "--data" not in args:
        args = [*args, "--data", f"text:{files / 'corpus.txt'}"]
    code, stdout, stderr = haq(capsys, "search", *args, "--episodes", "2", "--output", str(tmp_path / "out"))
    assert code == 2, stderr
    assert message in the_error(stderr)
    assert not (tmp_path / "out" / "policy.json").exists()
