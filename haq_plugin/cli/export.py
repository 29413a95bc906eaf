"""``haq-plugin export``: a searched policy in a backend's own file format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from haq_plugin.cli.options import data_option, model_options_defaulting_to, plugin_options
from haq_plugin.cli.search_cmd import stored_options
from haq_plugin.engine.backend_faults import contained
from haq_plugin.api.layers import extract_layers
from haq_plugin.api.options import parse_key_values
from haq_plugin.tasks.specs import load_model, load_task_data
from haq_plugin.api.plugins import load_backend
from haq_plugin.api.policy import Policy
from haq_plugin.api.quantize_mode import WEIGHTS_AND_ACTIVATIONS, use_quantize_mode
from haq_plugin.api.errors import HaqError
from haq_plugin.tasks.llm.spec import language_model_task

FORMATS = ("native", "gguf")
GGUF_TYPES = ("exact", "k")  # GroupwiseBackend.export_gguf's types
GGUF_FILENAME = "model.gguf"
RECIPE_SUFFIX = ".tensor-types.txt"  # written beside the GGUF (haq_plugin.adapters.groupwise.gguf_export)


@click.command("export")
@click.option("--policy", "policy_path", required=True, type=click.Path(dir_okay=False),
              help="policy.json written by 'haq-plugin search'.")
@click.option("--backend", "backend_name", required=True, metavar="NAME",
              help="torchao, torch.ao, brevitas or groupwise, or a plugin's backend (see 'haq-plugin backends list').")
@click.option("--backend-option", "backend_options", multiple=True, metavar="KEY=VALUE",
              help="Override a backend option stored in the policy (with a warning: the export then differs from "
                   "what the search measured).")
@click.option("-o", "--output", "--out", "output", default=None, type=click.Path(dir_okay=False),
              help="Output file (default: the backend's file name in the current directory, or model.gguf).")
@click.option("--format", "file_format", type=click.Choice(FORMATS), default="native", show_default=True,
              help="'native': the backend's own file; 'gguf' (groupwise backend, a language model from gguf: or "
                   "llm:): a GGUF for llama.cpp and its OUT.tensor-types.txt recipe for llama-quantize.")
@click.option("--gguf-types", "gguf_types", type=click.Choice(GGUF_TYPES), default="exact", show_default=True,
              help="With --format gguf: 'exact', types the gguf package writes that hold the searched weights bit for "
                   "bit (Q4_1 for 2-4 bits, Q5_1, Q8_0); 'k', llama.cpp's K types (Q2_K..Q6_K, smaller below 4 bits) "
                   "written by llama.cpp's quantizer (needs the llamacpp extra).")
@click.option("--verify", is_flag=True,
              help="With --format gguf: also measure the written GGUF's perplexity in llama.cpp on the search's val "
                   "windows, beside the search's own for the same policy (needs the llamacpp extra).")
@model_options_defaulting_to("the model stored in the policy (the demo when it stores none)")
@data_option
def export_cmd(policy_path: str, backend_name: str, backend_options: tuple[str, ...], output: str | None,
               model_spec: str, input_shape: str | None, data_spec: str | None,
               data_options: tuple[str, ...] = (), file_format: str = "native", gguf_types: str = "exact",
               verify: bool = False) -> None:
    """Write a policy in a backend's own format (a QConfigMapping file, a Brevitas policy file, a GGUF).

    The backend is prepared on the model the policy was searched on (by default the --model, --input-shape
    and --data stored in the policy; give --model to override), so the export reflects the real graph
    (residual adds, shared inputs); the policy's layer fingerprint must match. A weight-only policy
    (searched with --quantize weights) is exported weight-only. Exporting with the backend the policy was
    searched with re-creates it with the searched options (--backend-option overrides one, with a warning).
    """
    if file_format != "gguf" and (verify or gguf_types != "exact"):
        raise HaqError("--gguf-types and --verify apply to --format gguf only.")
    if file_format == "gguf" and (verify or gguf_types == "k"):
        _require_llamacpp_extra("--verify" if gguf_types == "exact" else "--gguf-types k")
    policy = Policy.load(policy_path)
    model_spec, input_shape, data_spec = _searched_task(policy, model_spec, input_shape, data_spec)
    backend = load_backend(backend_name, **_export_options(policy, backend_name, backend_options))
    gguf_source = _gguf_source(backend, model_spec) if file_format == "gguf" else None
    use_quantize_mode(backend, policy.provenance.get("search", {}).get("quantize") or WEIGHTS_AND_ACTIVATIONS)
    stored_task = policy.provenance.get("search", {}).get("task") or {}
    options = parse_key_values(data_options, "--data-option") if data_options else stored_task.get("data_options")
    source = load_model(model_spec, input_shape, data_spec, options)
    layers = extract_layers(source.model, source.example_input)
    policy.check_layers(layers)
    if data_spec is not None or model_spec == "demo":
        calibration = load_task_data(data_spec, model_spec, options).calibration_data
    else:
        calibration = [(source.example_input,)]  # a batch whose inputs are the example (one tensor, a tuple or a dict)
    with contained(backend, "prepare"):
        backend.prepare(source.model, source.example_input, calibration, layers=layers)
    with contained(backend, "export"):
        if gguf_source is None:
            path = backend.export(policy, Path(output or backend.export_filename))
        else:
            path = backend.export_gguf(policy, Path(output or GGUF_FILENAME), gguf_source, types=gguf_types)
    kind = f"GGUF, {gguf_types} types" if gguf_source is not None else f"{backend.name} format"
    click.echo(f"wrote {path} ({kind}, {len(policy.bits)} layers)")
    if gguf_source is None:
        return
    click.echo(f"wrote {path}{RECIPE_SUFFIX} (llama-quantize --tensor-type-file recipe)")
    if gguf_types == "k":
        _report_fallbacks(path)
    if verify:
        _verify(backend, policy, path, language_model_task(model_spec, data_spec, options))


def _require_llamacpp_extra(what: str) -> None:
    """Refuse before any work when llama-cpp-python is missing."""
    from haq_plugin.hardware_models.llamacpp.extra import missing_extra

    missing = missing_extra()
    if missing:
        raise HaqError(f"{what}: {missing}")


def _report_fallbacks(path: Path) -> None:
    from haq_plugin.adapters.groupwise.gguf_k_types import SUPER_BLOCK, describe_fallbacks, fallbacks

    found = fallbacks(path)
    if found:
        click.echo(f"note: llama.cpp wrote another type where a row is not a multiple of {SUPER_BLOCK} weights, "
                   f"{describe_fallbacks(found)}")


def _verify(backend: Any, policy: Policy, path: Path, task: Any) -> None:
    """The GGUF's llama.cpp perplexity and the search's (fake-quantized) perplexity, on the same val windows."""
    from haq_plugin.hardware_models.llamacpp.extra import usable_cpus
    from haq_plugin.hardware_models.llamacpp.perplexity import gguf_perplexity

    backend.set_policy(backend.policy_bits(policy))
    backend.calibrate()
    searched = float(task.val_eval_fn()(backend.model))
    measured = gguf_perplexity(path, task.windows.val, threads=usable_cpus())
    windows = task.windows.val
    click.echo(f"perplexity on the search's {windows.shape[0]} val windows of {windows.shape[1]} tokens: "
               f"searched {searched:.4f}, llama.cpp {measured:.4f} ({measured / searched - 1:+.2%})")


def _gguf_source(backend: Any, model_spec: str) -> Path:
    """The GGUF the model is loaded from, after checking that this backend writes GGUF files."""
    if not callable(getattr(backend, "export_gguf", None)):
        raise HaqError(f"--format gguf: backend '{backend.name}' does not write GGUF files; use --backend groupwise "
                       "(weight-only group-wise quantization, llama.cpp's grid).")
    from haq_plugin.tasks.llm.sources import gguf_file_of

    return gguf_file_of(model_spec)


def _searched_task(policy: Policy, model_spec: str, input_shape: str | None,
                   data_spec: str | None) -> tuple[str, str | None, str | None]:
    """The model, input shape and data to prepare on: the command line's if --model was given, else the policy's."""
    ctx = click.get_current_context()
    stored = policy.provenance.get("search", {}).get("task") or {}
    if ctx.get_parameter_source("model_spec") == ParameterSource.COMMANDLINE or not stored.get("model"):
        return model_spec, input_shape, data_spec
    given = ctx.get_parameter_source("data_spec") == ParameterSource.COMMANDLINE
    return stored["model"], stored.get("input_shape"), data_spec if given else stored.get("data")


def _searched_backend_options(policy: Policy, backend_name: str) -> dict[str, Any]:
    """The options the policy was searched with, when ``backend_name`` is the backend it was searched with."""
    searched = policy.provenance.get("backend") or {}
    if searched.get("name") != backend_name:
        return {}
    return stored_options(searched.get("config") or {})


def _export_options(policy: Policy, backend_name: str, given: tuple[str, ...]) -> dict[str, Any]:
    """The searched options with ``--backend-option`` over them; an override of a searched value is warned of."""
    searched = _searched_backend_options(policy, backend_name)
    overrides = plugin_options(given, "--backend-option")
    for key, value in overrides.items():
        if key in searched and str(searched[key]) != str(value):
            click.echo(f"warning: --backend-option {key}={value} overrides the searched {key}={searched[key]}; "
                       "the export differs from what the search measured.", err=True)
    return {**searched, **overrides}
