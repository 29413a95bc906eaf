"""Searched GGUFs against llama.cpp's own quantizations of the same weights: size, perplexity, speed.

On SmolLM2-135M-Instruct (``llm:smollm2-135m``, the dequantized Q4_1 weights as the
float reference), for the sensitivity-greedy policies at ``--budgets`` bits per
weight (``--backend groupwise``, groups of 64, GPTQ on 32 calibration windows, as
a language-model search runs by default), two files each:

* ``exact``: ``export --format gguf`` (Q4_1 / Q5_1 / Q8_0, the searched weights bit for bit);
* ``k``: ``export --format gguf --gguf-types k`` (llama.cpp's K types of the same bits);

beside files llama.cpp's own quantizer makes from a float32 GGUF of the reference
weights: uniform (``--pure``) Q2_K, Q3_K, Q4_K and Q4_0 (``token_embd`` kept at Q8_0,
as the search keeps ``lm_head``), and its Q3_K_M and Q4_K_M mixes; and the source
file itself (Q4_1, the reference model exactly).  For each file: its size, the
bits per weight its block linears take (scales included), llama.cpp's perplexity
on the held-out test windows of ``text:pydoc`` (and, for the searched files, the
search's own fake-quantized perplexity, to show how well the fake quantization
matches the kernels), and decode milliseconds per token and prompt tokens per
second, all files timed together in one session (the ``llamacpp-cpu`` protocol:
files loaded together, decode steps interleaved and paired with the first file).

    python -m benchmarks.llm_gguf --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from haq_plugin import search
from haq_plugin.adapters.groupwise import GroupwiseBackend
from haq_plugin.adapters.groupwise.gguf_export import field_value, open_source, searched_tensors, write_encoded
from haq_plugin.adapters.groupwise.gguf_k_types import fallbacks, llama_quantize
from haq_plugin.adapters.groupwise.gguf_names import in_gguf_order
from haq_plugin.hardware_models.llamacpp.perplexity import gguf_perplexity
from haq_plugin.hardware_models.llamacpp.timing import Protocol, time_files
from haq_plugin.tasks.llm.sources import gguf_file_of
from haq_plugin.tasks.llm.spec import language_model_task

RESULTS = Path(__file__).with_name("llm_gguf.json")
MODEL = "llm:smollm2-135m"
# name: (llama.cpp file type, pure): what `llama-quantize [--pure] f32.gguf out.gguf TYPE` writes
LLAMA_CPP_FILES = {"Q2_K (pure)": ("MOSTLY_Q2_K", True), "Q3_K (pure)": ("MOSTLY_Q3_K_M", True),
                   "Q4_K (pure)": ("MOSTLY_Q4_K_M", True), "Q4_0 (pure)": ("MOSTLY_Q4_0", True),
                   "Q3_K_M": ("MOSTLY_Q3_K_M", False), "Q4_K_M": ("MOSTLY_Q4_K_M", False)}


def block_bits_per_weight(path: Path) -> float:
    """Stored bits per weight of the decoder-block linears (``blk.*`` 2-D tensors), scales included."""
    from gguf import GGUFReader

    tensors = [t for t in GGUFReader(str(path)).tensors if t.name.startswith("blk.") and len(t.shape) >= 2]
    return 8 * sum(int(t.n_bytes) for t in tensors) / sum(int(t.n_elements) for t in tensors)


def write_float_gguf(path: Path, source: Path, model: Any, names: list[str]) -> Path:
    """The source GGUF with every searched layer's float (reference) weight stored as F32."""
    from gguf import GGMLQuantizationType

    reader = open_source(source)
    weights = {name: model.get_submodule(name).weight.detach() for name in names}
    heads = int(field_value(reader, "llama.attention.head_count"))
    kv_heads = int(field_value(reader, "llama.attention.head_count_kv", heads))
    encoded = {tensor: (in_gguf_order(weights[layer], tensor, heads, kv_heads).to(torch.float32).numpy(),
                        GGMLQuantizationType.F32) for tensor, layer in searched_tensors(reader, weights).items()}
    return write_encoded(path, reader, encoded)


def llama_cpp_files(directory: Path, float_file: Path, threads: int) -> dict[str, Path]:
    """llama.cpp's own quantizations of the float file (:data:`LLAMA_CPP_FILES`)."""
    files = {}
    for name, (file_type, pure) in LLAMA_CPP_FILES.items():
        path = directory / f"llama-{name.split()[0]}{'-pure' if pure else ''}.gguf"
        llama_quantize(float_file, path, {"token_embd.weight": "Q8_0"} if pure else {}, file_type, threads, pure)
        files[f"llama.cpp {name}"] = path
    return files


def searched_files(directory: Path, task: Any, budgets: list[float], threads: int,
                   max_bits: int) -> tuple[dict[str, Path], dict[str, dict]]:
    """Greedy policies at ``budgets``, each exported exact and in K types; their search figures."""
    source = gguf_file_of(MODEL)
    backend = GroupwiseBackend(group_size=64, rounding="gptq")
    backend.reuse_prepared = True
    val_fn, test_fn = task.val_eval_fn(), task.test_eval_fn()
    reference_val = val_fn(task.model)
    files, figures = {}, {}
    for budget in budgets:
        start = time.perf_counter()
        result = search(task.model, task.example_input, budget=f"{budget}bpw", strategy="greedy", episodes=1,
                        hardware="llm-decode", backend=backend, constraint="size", metric="perplexity",
                        decisions="block", keep_first_layer_8bit=False, quantize="weights", eval_fn=val_fn,
                        calibration_data=list(task.windows.calibration.split(1)), progress=False,
                        float_accuracy=reference_val, max_bits=max_bits)
        backend.set_policy(result.policy.bits)
        backend.calibrate()
        searched = {"val_ppl": result.accuracy, "test_ppl": float(test_fn(backend.model)),
                    "bpw": result.bits_per_weight, "search_s": time.perf_counter() - start}
        for types in ("exact", "k"):
            name = f"greedy {budget} bpw, {types}"
            files[name] = backend.export_gguf(result.policy, directory / f"greedy-{budget}-{types}.gguf", source,
                                              types=types, threads=threads)
            figures[name] = searched
        print(f"greedy {budget} bpw: searched test perplexity {searched['test_ppl']:.2f}", file=sys.stderr, flush=True)
    return files, figures


def measure(files: dict[str, Path], task: Any, threads: int, repeats: int) -> dict[str, dict]:
    """Size, block bits per weight, llama.cpp perplexity (val, test) and paired timings of every file."""
    rows = {}
    for name, path in files.items():
        rows[name] = {"file_mb": path.stat().st_size / 2 ** 20, "block_bpw": block_bits_per_weight(path),
                      "llama_val_ppl": gguf_perplexity(path, task.windows.val, threads),
                      "llama_test_ppl": gguf_perplexity(path, task.windows.test, threads),
                      "fallbacks": len(fallbacks(path)) if name.endswith(", k") else None}
        print(f"{name}: {rows[name]['file_mb']:.1f} MiB, test {rows[name]['llama_test_ppl']:.2f}", file=sys.stderr,
              flush=True)
    protocol = Protocol(threads=threads, context=256, prompt_tokens=64, decode_tokens=32, repeats=repeats)
    for name, timing in zip(files, time_files(list(files.values()), protocol)):
        rows[name]["decode_ms"] = timing.decode_s * 1e3
        rows[name]["prompt_tok_s"] = 1 / timing.prompt_s
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", default="3.0,3.5,4.0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timing rounds (medians over them)")
    parser.add_argument("--max-bits", type=int, default=5)
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    task = language_model_task(MODEL, None, {"calibration_windows": 32})
    names = task.layer_names + ["lm_head"]
    reference_test = float(task.test_eval_fn()(task.model))
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        files = {"source (Q4_1, the reference)": gguf_file_of(MODEL)}
        float_file = write_float_gguf(directory / "f32.gguf", gguf_file_of(MODEL), task.model, names)
        files.update(llama_cpp_files(directory, float_file, args.threads))
        float_file.unlink()
        searched, figures = searched_files(directory, task, [float(b) for b in args.budgets.split(",")],
                                           args.threads, args.max_bits)
        files.update(searched)
        rows = measure(files, task, args.threads, args.repeats)
    for name, figure in figures.items():
        rows[name].update({f"search_{key}": value for key, value in figure.items()})
    report = {"model": MODEL, "python": sys.version.split()[0], "threads": args.threads, "repeats": args.repeats,
              "reference_test_ppl": reference_test, "rows": rows}
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"reference (float) test perplexity {report['reference_test_ppl']:.2f}; {args.threads} threads, "
          f"median of {args.repeats} rounds")
    print(f"{'file':<34} {'MiB':>6} {'blk bpw':>7} {'llama.cpp test ppl':>18} {'search test ppl':>15} "
          f"{'decode ms':>9} {'prompt tok/s':>12}")
    for name, row in rows.items():
        searched_ppl = f"{row['search_test_ppl']:.2f}" if "search_test_ppl" in row else "-"
        print(f"{name:<34} {row['file_mb']:6.1f} {row['block_bpw']:7.3f} {row['llama_test_ppl']:18.2f} "
              f"{searched_ppl:>15} {row['decode_ms']:9.2f} {row['prompt_tok_s']:12.0f}")


if __name__ == "__main__":
    main()
