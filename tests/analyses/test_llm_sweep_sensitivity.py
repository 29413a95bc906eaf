"""Sweep and sensitivity on a language model: perplexity (lower is better), bits-per-weight budgets, units.

The tiny Llama of :mod:`tests.tasks.llm.tiny_llama` is trained for a few dozen
steps on its own text first: with random weights its perplexity is the vocabulary
size whatever the bits, and nothing about sensitivity could be asserted.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="the llm extra is not installed")

import torch  # noqa: E402

from haq_plugin.api.errors import HaqError  # noqa: E402
from haq_plugin.api.policy import Policy  # noqa: E402
from haq_plugin.analyses.sensitivity import sensitivity  # noqa: E402
from haq_plugin.analyses.sensitivity_report import sensitivity_markdown  # noqa: E402
from haq_plugin.analyses.sweep import check_budgets, parse_budgets, sweep  # noqa: E402
from haq_plugin.api.plugins import load_backend, load_hardware  # noqa: E402
from haq_plugin.api.layers import extract_layers  # noqa: E402
from haq_plugin.cli import main  # noqa: E402
from haq_plugin.engine.bits_per_weight import policy_bits_per_weight  # noqa: E402
from haq_plugin.engine.costs import build_cost_table  # noqa: E402
from tests.tasks.llm.tiny_llama import tiny_llama, tiny_text  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

WINDOWS = {"window": 32, "calibration_windows": 1, "val_windows": 2, "test_windows": 2}
SEARCH = dict(hardware="llm-decode", constraint="size", metric="perplexity", decisions="block",
              keep_first_layer_8bit=False, episodes=6, seed=0)


def trained_tiny_llama(steps: int = 40):
    """The tiny Llama after ``steps`` Adam steps on :func:`tiny_text` (seeded), in eval mode."""
    model, tokenizer = tiny_llama(seed=0)
    ids = torch.tensor(tokenizer(tiny_text())["input_ids"])
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - 65, (8,), generator=generator)
        batch = torch.stack([ids[s:s + 64] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model, tokenizer


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    """``(task, corpus file, hf checkpoint directory)`` of the trained tiny Llama."""
    from haq_plugin.tasks.llm import build_language_model_task, language_model_from

    model, tokenizer = trained_tiny_llama()
    root = tmp_path_factory.mktemp("llm")
    corpus = root / "corpus.txt"
    corpus.write_text(tiny_text(), encoding="utf-8")
    checkpoint = root / "ckpt"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    task = build_language_model_task(language_model_from(model, tokenizer, name="tiny"), f"text:{corpus}",
                                     **WINDOWS)
    return task, corpus, checkpoint


@pytest.fixture(scope="module")
def swept(llm, tmp_path_factory):
    task, _, _ = llm
    backend = load_backend("groupwise")
    result = sweep(task.model, task.example_input, budgets=["3.5bpw", "3.0bpw", "4.0bpw"], backend=backend,
                   eval_fn=task.val_eval_fn(), calibration_data=[task.example_input],
                   test_eval_fn=task.test_eval_fn(), output_dir=tmp_path_factory.mktemp("sweep") / "out",
                   progress=False, **SEARCH)
    return result, backend


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_bpw_sweep_rows_are_perplexities_at_bits_per_weight_within_budget(swept, llm):
    result, backend = swept
    task, _, _ = llm
    rows = read_csv(result.output_dir / "pareto.csv")
    assert list(rows[0]) == ["budget", "strategy", "cost_fraction", "bits_per_weight", "latency_s",
                             "val_perplexity", "test_perplexity", "policy_file", "status"]
    assert [r["budget"] for r in rows if r["strategy"] == "ddpg"] == ["3bpw", "3.5bpw", "4bpw"]
    layers = extract_layers(task.model, task.example_input)
    searched = [layer.name for layer in layers if layer.name != "lm_head"]  # lm_head stays at 8 bits
    table = build_cost_table(load_hardware("llm-decode"), layers)
    test_eval = task.test_eval_fn()
    for row in rows:
        policy = Policy.load(result.output_dir / row["policy_file"])
        if row["strategy"] == "ddpg":
            assert policy.provenance["search"]["metric"] == "perplexity"
            assert policy.provenance["search"]["decisions"] == "block"
        bpw = policy_bits_per_weight(layers, policy.bits, backend, searched)
        assert float(row["bits_per_weight"]) == pytest.approx(bpw, abs=1e-4)
        assert bpw <= float(row["budget"].removesuffix("bpw")) + 1e-9
        assert float(row["latency_s"]) == pytest.approx(
            table.policy_cost("latency", [policy.bits[layer.name] for layer in layers]), rel=1e-5)
        assert float(row["val_perplexity"]) == pytest.approx(policy.provenance["achieved"]["accuracy"], abs=1e-4)
        backend.set_policy(policy.bits)
        backend.calibrate()
        assert float(row["test_perplexity"]) == pytest.approx(backend.evaluate(test_eval), abs=1e-3)
    assert result.searches["3.5bpw"].bits_per_weight == pytest.approx(
        float(next(r for r in rows if r["budget"] == "3.5bpw" and r["strategy"] == "ddpg")["bits_per_weight"]),
        abs=1e-4)
    assert (result.output_dir / "budget-3.5bpw" / "policy.json").is_file()
    assert result.eight_bit_bits_per_weight == pytest.approx(8.5)  # 8 bits + a float16 scale and zero per 64


def test_pareto_front_prefers_lower_perplexity(swept):
    result, _ = swept
    front = result.front()
    assert front, "a sweep has a front"
    bpw = [p.bits_per_weight for p in front]
    ppl = [p.val_accuracy for p in front]
    assert bpw == sorted(bpw) and all(a > b for a, b in zip(ppl, ppl[1:]))  # more bits buy lower perplexity
    for p in result.points:  # nothing off the front is both smaller and lower
        assert not any(q.bits_per_weight < p.bits_per_weight - 1e-12 and q.val_accuracy < p.val_accuracy
                       for q in result.points if q not in front and p in front)
        if p not in front:
            assert any(q.bits_per_weight <= p.bits_per_weight and q.val_accuracy <= p.val_accuracy for q in front)
    assert min(result.points, key=lambda p: p.val_accuracy) in front


def test_summary_and_figure_label_perplexity_and_bits_per_weight(swept):
    result, _ = swept
    summary = (result.output_dir / "summary.md").read_text()
    assert "val perplexity" in summary and "test perplexity" in summary and "bits per weight" in summary
    assert "accuracy" not in summary and "lower is better" in summary and "| Pareto front |" in summary
    assert f"val perplexity {result.float_accuracy:.2f}" in summary
    assert "| 3.5bpw | ddpg |" in summary
    assert (result.output_dir / "pareto.png").stat().st_size > 10_000  # two panels


def test_mixed_or_misused_budgets_are_refused(llm, tmp_path):
    with pytest.raises(HaqError, match=r"mix a fraction of the 8-bit cost \(0.5\) and bits per weight \(3.5bpw\)"):
        check_budgets([0.5, "3.5bpw"])
    with pytest.raises(HaqError, match="mix"):
        parse_budgets("0.5,3.5bpw")
    assert parse_budgets("3.5bpw, 3.0bpw") == ("3bpw", "3.5bpw")
    with pytest.raises(HaqError, match="repeat 3bpw"):
        check_budgets(["3bpw", "3.0bpw"])
    task, _, _ = llm
    common = dict(budgets=["3.5bpw"], hardware="llm-decode", backend="groupwise", eval_fn=task.val_eval_fn(),
                  calibration_data=[task.example_input], progress=False, metric="perplexity")
    with pytest.raises(HaqError, match="size budgets; use constraint='size'"):
        sweep(task.model, task.example_input, output_dir=tmp_path / "a", constraint="latency", **common)
    with pytest.raises(HaqError, match="not bits_per_weight="):
        sweep(task.model, task.example_input, output_dir=tmp_path / "b", constraint="size", bits_per_weight=3.5,
              **common)


def test_sensitivity_per_block_measures_perplexity_rises_weights_only(llm, tmp_path):
    task, _, _ = llm
    result = sensitivity(task.model, task.example_input, hardware="llm-decode", backend="groupwise",
                         eval_fn=task.val_eval_fn(), calibration_data=[task.example_input], bits=(2, 4),
                         constraint="size", metric="perplexity", decisions="block", output_dir=tmp_path / "sens",
                         progress=False)
    names = [row.name for row in result.layers]
    assert names == ["model.layers.0.self_attn", "model.layers.0.mlp", "model.layers.1.self_attn",
                     "model.layers.1.mlp", "lm_head"]
    assert result.targets == ("weights",) and all(row.activations == {} for row in result.layers)
    assert result.evaluations == 5 * 2 + 1
    rises = [result.loss(row.weights[2]) for row in result.layers]
    assert sum(rise >= 0 for rise in rises) >= 4 and max(rises) > 0.5
    assert sum(row.cost_share for row in result.layers) == pytest.approx(1.0)
    rows = read_csv(tmp_path / "sens" / "sensitivity.csv")
    assert list(rows[0]) == ["index", "unit", "layers", "cost_share", "w2", "w4", "w8", "effective"]
    assert rows[0]["layers"].split(";") == [f"model.layers.0.self_attn.{p}_proj" for p in "qkvo"]
    assert float(rows[4]["w8"]) == pytest.approx(result.eight_bit_accuracy, abs=1e-4)
    markdown = sensitivity_markdown(result)
    assert markdown.startswith("# Per-block sensitivity") and "Perplexity (lower is better)" in markdown
    assert "Uniform 8-bit perplexity" in markdown and "| w2 | w4 | w8 |" in markdown and "a2" not in markdown


# -- the command line, as a user runs it ----------------------------------------------------
def haq(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``haq-plugin ARGS`` in a subprocess, as a user runs it; it must succeed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "haq_plugin.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def task_args(llm) -> list[str]:
    _, corpus, checkpoint = llm
    return ["--model", f"hf:{checkpoint}", "--data", f"text:{corpus}",
            *(arg for key, value in WINDOWS.items() for arg in ("--data-option", f"{key}={value}"))]


@pytest.mark.slow
def test_sweep_cli_on_a_checkpoint_then_resume(llm, tmp_path):
    out = tmp_path / "sweep"
    proc = haq("sweep", *task_args(llm), "--budgets", "3.0bpw,4.0bpw", "--strategy", "ddpg", "--episodes", "4",
               "--output", str(out),
               cwd=tmp_path)
    stored = json.loads((out / "sweep.json").read_text())
    assert stored["budgets"] == ["3bpw", "4bpw"]
    s = stored["settings"]
    assert (s["hardware"]["name"], s["backend"]["name"]) == ("llm-decode", "groupwise")  # language-model defaults
    assert (s["search"]["metric"], s["search"]["decisions"], s["search"]["constraint"]) == ("perplexity", "block",
                                                                                            "size")
    assert s["task"]["data_options"] == {key: str(value) for key, value in WINDOWS.items()}
    rows = read_csv(out / "pareto.csv")
    assert [r["budget"] for r in rows if r["strategy"] == "ddpg"] == ["3bpw", "4bpw"]
    assert all(float(r["bits_per_weight"]) <= float(r["budget"].removesuffix("bpw")) + 1e-9 for r in rows)
    assert "val ppl" in proc.stdout and "bpw" in proc.stdout and "budget-3bpw/policy.json" in proc.stdout
    stamp = (out / "budget-3bpw" / "policy.json").stat().st_mtime_ns
    haq("sweep", "--resume", str(out), "--budgets", "3.0bpw,3.5bpw,4.0bpw", "--quiet", cwd=tmp_path)
    statuses = {r["budget"]: r["status"] for r in read_csv(out / "pareto.csv") if r["strategy"] == "ddpg"}
    assert statuses == {"3bpw": "kept", "3.5bpw": "searched", "4bpw": "kept"}
    assert (out / "budget-3bpw" / "policy.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_sensitivity_cli_on_a_checkpoint(llm, tmp_path):
    out = tmp_path / "sens"
    proc = haq("sensitivity", *task_args(llm), "--bits", "2,4", "--decisions", "role", "--output", str(out),
               cwd=tmp_path)
    assert "8 roles x 2 bit widths (weights only) = 16 evaluations" in proc.stderr
    rows = read_csv(out / "sensitivity.csv")
    assert [r["unit"] for r in rows][:2] == ["model.layers.*.self_attn.q_proj", "model.layers.*.self_attn.k_proj"]
    assert "# Per-role sensitivity" in proc.stdout and "Uniform 8-bit perplexity" in proc.stdout
    assert (out / "sensitivity.png").is_file()


def test_sweep_cli_refuses_mixed_budgets_in_one_line(llm, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", *task_args(llm), "--budgets", "0.5,3.5bpw", "--output", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "mix a fraction of the 8-bit cost (0.5) and bits per weight (3.5bpw)" in err and "Traceback" not in err
