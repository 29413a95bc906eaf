"""``haq-plugin search``: the command-line face of :func:`haq_plugin.search.search`.

Options map one to one onto the Python API; the DDPG hyperparameters are
generated from the fields of :class:`~haq_plugin.agent.DDPGConfig`, so every
hyperparameter is an option with the reference default.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any, Callable

import click

from haq_plugin.agent import DDPGConfig
from haq_plugin.costs import CONSTRAINTS
from haq_plugin.errors import HaqError, InfeasibleBudget
from haq_plugin.options import parse_key_values

DEFAULT_EPISODES = 300
DEFAULT_BUDGET = 0.5
DEFAULT_OUTPUT = "haq-output"


def parse_pins(values: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """``--pin NAME=W/A`` values -> {name: (w, a)}."""
    from haq_plugin.cli import parse_bits

    pins = {}
    for name, bits in parse_key_values(values, "--pin").items():
        pins[name] = parse_bits(bits, f"--pin {name}")
    return pins


def ddpg_options(func):
    """One option per DDPGConfig field, e.g. --lr-actor, --warmup-episodes."""
    for field in reversed(dataclasses.fields(DDPGConfig)):
        flag = "--" + field.name.replace("_", "-")
        func = click.option(flag, f"ddpg_{field.name}", type=field.type if isinstance(field.type, type) else
                            {"int": int, "float": float}[field.type], default=field.default, show_default=True,
                            help=f"DDPG hyperparameter '{field.name}' (reference default).")(func)
    return func


@click.command("search")
@click.option("--model", "model_spec", default="demo", show_default=True, metavar="SPEC",
              help="'demo', or 'package.module:callable' returning a module or (module, example_input).")
@click.option("--input-shape", default=None, metavar="N,C,H,W", help="Example input shape for --model.")
@click.option("--data", "data_spec", default=None, metavar="package.module:callable",
              help="Your calibration/validation data (required with your own --model).")
@click.option("--backend", "backend_name", default="brevitas", show_default=True, metavar="NAME",
              help="Quantization backend (see 'haq-plugin backends list').")
@click.option("--backend-option", "backend_options", multiple=True, metavar="KEY=VALUE")
@click.option("--hw", "hw_name", default="bitfusion", show_default=True, metavar="NAME",
              help="Hardware model (see 'haq-plugin hw list').")
@click.option("--hw-option", "hw_options", multiple=True, metavar="KEY=VALUE")
@click.option("--constraint", type=click.Choice(CONSTRAINTS), default="latency", show_default=True)
@click.option("--budget", type=float, default=None,
              help=f"Budget as a fraction of the uniform 8-bit policy's cost, in (0, 1]. Default {DEFAULT_BUDGET}, "
                   "or, where the hardware cannot reach that for this model, halfway between the cheapest "
                   "reachable fraction and 1 (the search says so).")
@click.option("--strategy", type=click.Choice(["ddpg", "random", "uniform"]), default="ddpg", show_default=True)
@click.option("--episodes", type=int, default=DEFAULT_EPISODES, show_default=True,
              help="Evaluated episodes (HAQ's reference uses 600 on ImageNet).")
@click.option("--min-bits", type=int, default=2, show_default=True)
@click.option("--max-bits", type=int, default=8, show_default=True)
@click.option("--keep-first-layer-8bit/--no-keep-first-layer-8bit", default=True, show_default=True)
@click.option("--keep-last-layer-8bit/--no-keep-last-layer-8bit", default=True, show_default=True)
@click.option("--pin", "pins", multiple=True, metavar="NAME=W/A", help="Fix a layer's bits (repeatable).")
@click.option("--finetune-steps", type=int, default=0, show_default=True,
              help="Training steps on the quantized model before each evaluation (needs train data).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--output", "output", default=DEFAULT_OUTPUT, show_default=True, type=click.Path(file_okay=False),
              help="Directory for policy.json, the backend export, episodes.csv, summary.md, policy.png.")
@click.option("--force", is_flag=True, help="Write into a non-empty --output directory.")
@click.option("--resume", "resume_dir", default=None, type=click.Path(file_okay=False),
              help="Continue an interrupted search from its output directory.")
@click.option("--quiet", is_flag=True, help="No progress bar or summary (for scripts).")
@click.option("--no-cache", is_flag=True, help="Re-simulate the cost table instead of using the cache.")
@ddpg_options
def search_cmd(**params: Any) -> None:
    """Search per-layer weight/activation bits that maximise accuracy within a hardware budget.

    \b
    With no model options it runs on the embedded demo (MobileNet-V2-style
    network, UCI digits), for example:
      haq-plugin search --backend brevitas --hw bitfusion
      haq-plugin search --backend torch.ao --hw bismo-edge --budget 0.4
    """
    from haq_plugin.models import load_model, load_task_data
    from haq_plugin.plugins import load_backend, load_hardware
    from haq_plugin.search import search

    resume_dir, quiet = params["resume_dir"], params["quiet"]
    p = resumed_parameters(click.get_current_context(), resume_dir) if resume_dir else params
    ddpg = DDPGConfig(**{k.removeprefix("ddpg_"): v for k, v in p.items() if k.startswith("ddpg_")})
    pinned = p["pins"] if isinstance(p["pins"], dict) else parse_pins(p["pins"])
    hardware = load_hardware(p["hw_name"], **_plugin_options(p["hw_options"], "--hw-option"))
    backend = load_backend(p["backend_name"], **_plugin_options(p["backend_options"], "--backend-option"))
    output = resume_dir or p["output"]
    source = load_model(p["model_spec"], p["input_shape"])
    data = load_task_data(p["data_spec"], p["model_spec"])
    if data.description and not quiet:
        click.echo(data.description, err=True)
    if p["finetune_steps"] and data.train_data is None:
        raise HaqError("--finetune-steps needs training data: return 'train_data' from your --data callable.")
    task = {"model": p["model_spec"], "input_shape": p["input_shape"], "data": p["data_spec"]}
    run = functools.partial(
        search, source.model, source.example_input, hardware=hardware, backend=backend,
        constraint=p["constraint"], eval_fn=data.eval_fn, calibration_data=data.calibration_data,
        train_data=data.train_data, finetune_steps=p["finetune_steps"], episodes=p["episodes"],
        strategy=p["strategy"], min_bits=p["min_bits"], max_bits=p["max_bits"],
        keep_first_layer_8bit=p["keep_first_layer_8bit"], keep_last_layer_8bit=p["keep_last_layer_8bit"],
        pins=pinned, seed=p["seed"], output_dir=Path(output), force=p["force"], resume=bool(resume_dir),
        progress=not quiet, ddpg=ddpg, use_cache=not p["no_cache"], task=task,
    )
    try:
        if p["budget"] is not None:
            result = run(budget=p["budget"])
        else:
            result = run_with_default_budget(run, hardware.name, p["constraint"], quiet)
    except KeyboardInterrupt as exc:  # click would turn it into a bare "Aborted."
        saved = getattr(exc, "checkpoint", None)
        hint = f" Progress is saved; continue with: haq-plugin search --resume {output}" if saved else ""
        click.echo(f"\nInterrupted.{hint}", err=True)
        raise SystemExit(130) from None
    if not quiet:
        print_outcome(result, Path(output), backend, p["model_spec"], data.test_eval_fn, source.model)


RESUME_MAY_CHANGE = {"episodes", "quiet", "no_cache", "resume_dir", "output", "force"}


def resumed_parameters(ctx: click.Context, resume_dir: str) -> dict[str, Any]:
    """The command's parameters as the interrupted search had them; only --episodes may be raised."""
    from click.core import ParameterSource

    from haq_plugin.search import checkpoint_settings

    given = [name for name in ctx.params if name not in RESUME_MAY_CHANGE
             and ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]
    if given:
        opts = {param.name: param.opts[0] for param in ctx.command.params}
        flags = ", ".join(opts[name] for name in given)
        raise HaqError(f"--resume continues with the settings stored in {resume_dir}; only --episodes, --quiet and "
                       f"--no-cache may be given (got {flags}).")
    saved = checkpoint_settings(resume_dir)
    task = saved.get("task") or {}
    params = dict(ctx.params)
    params.update(
        model_spec=task.get("model", "demo"), input_shape=task.get("input_shape"), data_spec=task.get("data"),
        hw_name=saved["hardware"]["name"], hw_options=saved["hardware"]["config"],
        backend_name=saved["backend"]["name"], backend_options=saved["backend"]["config"],
        constraint=saved["constraint"], budget=saved["budget"], strategy=saved["strategy"], seed=saved["seed"],
        min_bits=saved["min_bits"], max_bits=saved["max_bits"], finetune_steps=saved["finetune_steps"],
        keep_first_layer_8bit=saved["keep_first_layer_8bit"], keep_last_layer_8bit=saved["keep_last_layer_8bit"],
        pins={name: tuple(bits) for name, bits in saved["pins"].items()},
        **{f"ddpg_{k}": v for k, v in saved["ddpg"].items()},
    )
    if ctx.get_parameter_source("episodes") != ParameterSource.COMMANDLINE:
        params["episodes"] = saved["episodes"]
    return params


def _plugin_options(values: Any, flag: str) -> dict[str, Any]:
    """--hw-option/--backend-option strings, or a stored config dict when resuming."""
    return dict(values) if isinstance(values, dict) else parse_key_values(values, flag)


def run_with_default_budget(run: Callable[..., Any], hw_name: str, constraint: str, quiet: bool) -> Any:
    """Search at the default budget, or, where it is out of reach, halfway to the 8-bit cost."""
    try:
        return run(budget=DEFAULT_BUDGET)
    except InfeasibleBudget as exc:
        budget = math.ceil((exc.smallest + 1.0) / 2.0 * 100) / 100
        if not quiet:
            click.echo(f"note: on '{hw_name}' this model's cheapest policy costs {exc.smallest:.3f} of the 8-bit "
                       f"{constraint}, so the default budget {DEFAULT_BUDGET} is out of reach; using --budget "
                       f"{budget} (halfway to 1). Give --budget to choose.", err=True)
        return run(budget=budget)


def print_outcome(result: Any, output: Path, backend: Any, model_spec: str,
                  test_eval_fn: Callable[..., float] | None, float_model: Any) -> None:
    """What a user wants to read when the search ends: accuracy, cost, where the files went, what next."""
    click.echo("")
    click.echo(result.summary_text())
    if test_eval_fn is not None:
        backend.set_policy(result.policy.bits)
        backend.calibrate()
        click.echo(f"Held-out test accuracy of the best policy: {backend.evaluate(test_eval_fn):.2f}% "
                   f"(float {test_eval_fn(float_model.eval()):.2f}%).")
    click.echo("")
    click.echo(f"Outputs in {output}/: policy.json, {backend.export_filename}, episodes.csv, summary.md, policy.png")
    model = "" if model_spec == "demo" else f" --model {model_spec}"
    policy = output / "policy.json"
    click.echo("Next:")
    click.echo(f"  haq-plugin cost{model} --hw {result.policy.provenance['hardware']['name']} --policy {policy}")
    click.echo(f"  haq-plugin export{model} --policy {policy} --backend torch.ao -o qconfig_mapping.json")
    click.echo("  then apply it in your training code (README: 'Apply a searched policy').")
