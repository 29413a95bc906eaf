"""``haq-plugin search``: the command-line face of :func:`haq_plugin.engine.search`.

Its options carry the names of :class:`~haq_plugin.engine.settings.SearchSettings`'
fields (see :mod:`haq_plugin.cli.options`); ``--resume`` takes the settings,
hardware and backend stored in the checkpoint instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import click
from click.core import ParameterSource

from haq_plugin.storage.checkpoint import stored_settings
from haq_plugin.cli.options import (apply_task_defaults, backend_options, data_option, ddpg_options, hw_options, model_options,
                                    no_cache_option, placement_options, plugin_options, setting_options,
                                    settings_from_params)
from haq_plugin.engine.device import resolve_device
from haq_plugin.engine.evaluate import evaluate_policy, float_accuracy
from haq_plugin.api.errors import HaqError, InfeasibleBudget
from haq_plugin.tasks.specs import load_model, load_task_data
from haq_plugin.api.plugins import CORE_SETTINGS, load_backend, load_hardware
from haq_plugin.engine.results import SearchResult
from haq_plugin.engine.search import run_search
from haq_plugin.engine.settings import DEFAULT_BUDGET, SearchSettings

DEFAULT_OUTPUT = "haq-output"
RESUME_MAY_CHANGE = ("episodes", "quiet", "no_cache", "resume_dir", "device", "threads", "ray_address")


@dataclass
class Plan:
    """What to run: settings, plugins and where the model and data come from."""

    settings: SearchSettings
    hardware: Any
    backend: Any
    output: Path
    budget_given: bool


@click.command("search")
@model_options
@data_option
@backend_options
@hw_options
@setting_options
@placement_options
@click.option("--output", "output", default=DEFAULT_OUTPUT, show_default=True, type=click.Path(file_okay=False),
              help="Directory for policy.json, the backend export, episodes.csv, summary.md, policy.png.")
@click.option("--force", is_flag=True, help="Write into a non-empty --output directory.")
@click.option("--resume", "resume_dir", default=None, type=click.Path(file_okay=False),
              help="Continue an interrupted search from its output directory (with its stored settings).")
@click.option("--quiet", is_flag=True, help="No progress bar or summary (for scripts).")
@no_cache_option
@ddpg_options
def search_cmd(**params: Any) -> None:
    """Search per-layer weight/activation bits that maximise accuracy within a hardware budget.

    \b
    With no model options it runs on the embedded demo (MobileNet-V2-style
    network, UCI digits), for example:
      haq-plugin search --backend brevitas --hw bitfusion
      haq-plugin search --backend torch.ao --hw bismo-edge --budget 0.4
    """
    quiet = params["quiet"]
    ctx = click.get_current_context()
    apply_task_defaults(params, ctx)
    plan = resumed_plan(ctx, params["resume_dir"]) if params["resume_dir"] else new_plan(params)
    check_placement(plan.settings, params["device"])
    task = plan.settings.task
    source = load_model(task["model"], task["input_shape"], task.get("data"), task.get("data_options"))
    data = load_task_data(task["data"], task["model"], task.get("data_options"))
    if data.description and not quiet:
        click.echo(data.description, err=True)
    if plan.settings.finetune_steps and data.train_data is None:
        raise HaqError("--finetune-steps needs training data: return 'train_data' from your --data callable.")

    def run(settings: SearchSettings) -> SearchResult:
        return run_search(source.model, source.example_input, settings, hardware=plan.hardware,
                          backend=plan.backend, eval_fn=data.eval_fn, calibration_data=data.calibration_data,
                          train_data=data.train_data, output_dir=plan.output, force=params["force"],
                          resume=bool(params["resume_dir"]), progress=not quiet, use_cache=not params["no_cache"],
                          device=params["device"], ray_address=params["ray_address"], threads=params["threads"])
    try:
        if plan.budget_given:
            result = run(plan.settings)
        else:
            result = run_with_default_budget(run, plan.settings, plan.hardware.name, quiet)
    except KeyboardInterrupt as exc:  # click would turn it into a bare "Aborted."
        saved = getattr(exc, "checkpoint", None)
        hint = f" Progress is saved; continue with: haq-plugin search --resume {plan.output}" if saved else ""
        click.echo(f"\nInterrupted.{hint}", err=True)
        raise SystemExit(130) from None
    if not quiet:
        print_outcome(result, plan.output, plan.backend, task["model"], data.test_eval_fn, source.model,
                      data.train_data)


def new_plan(params: Mapping[str, Any]) -> Plan:
    """A new search from the options (settings checked first, before any model or data is loaded)."""
    task = {"model": params["model_spec"], "input_shape": params["input_shape"], "data": params["data_spec"]}
    if params.get("data_options"):
        task["data_options"] = plugin_options(params["data_options"], "--data-option")
    settings = settings_from_params(params, task)
    hardware = load_hardware(params["hw_name"], **plugin_options(params["hw_options"], "--hw-option"))
    backend = load_backend(params["backend_name"], **plugin_options(params["backend_options"], "--backend-option"))
    return Plan(settings, hardware, backend, Path(params["output"]), params["budget"] is not None)


def resumed_plan(ctx: click.Context, resume_dir: str) -> Plan:
    """The interrupted search's settings and plugins; only --episodes (to raise it), --quiet, --no-cache."""
    given = [name for name in ctx.params if name not in RESUME_MAY_CHANGE
             and ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]
    if given:
        opts = {param.name: param.opts[0] for param in ctx.command.params}
        flags = ", ".join(opts[name] for name in given)
        raise HaqError(f"--resume continues with the settings stored in {resume_dir} and writes there; only "
                       f"--episodes, --quiet, --no-cache, --device, --threads and --ray-address may be given (got {flags}).")
    settings, run = stored_settings(resume_dir)
    if ctx.get_parameter_source("episodes") == ParameterSource.COMMANDLINE:
        settings = settings.replace(episodes=ctx.params["episodes"])
    task = {"model": "demo", "input_shape": None, "data": None, **settings.task}
    settings = settings.replace(task=task) if task != settings.task else settings
    hardware = load_hardware(run["hardware"]["name"], **stored_options(run["hardware"]["config"]))
    backend = load_backend(run["backend"]["name"], **stored_options(run["backend"]["config"]))
    return Plan(settings, hardware, backend, Path(resume_dir), budget_given=True)


def check_placement(settings: SearchSettings, device: str) -> None:
    """Refuse a device this machine lacks, or workers without Ray, before the model and data are loaded."""
    from haq_plugin.engine.workers import require_ray

    resolve_device(device)
    if settings.workers > 1:
        require_ray(settings.workers)


def stored_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """A stored plugin config as options: values left at None were never given (the plugin's own default).

    Names of core settings (:data:`~haq_plugin.api.plugins.CORE_SETTINGS`, a backend's ``quantize`` option
    for one) are left out: the search's own setting, stored with it, decides them.
    """
    return {key: value for key, value in config.items() if value is not None and key not in CORE_SETTINGS}


def run_with_default_budget(run: Callable[[SearchSettings], Any], settings: SearchSettings, hw_name: str,
                            quiet: bool) -> Any:
    """Search at the default budget, or, where it is out of reach, halfway to the 8-bit cost."""
    try:
        return run(settings)
    except InfeasibleBudget as exc:
        budget = math.ceil((exc.smallest + 1.0) / 2.0 * 100) / 100
        if not quiet:
            click.echo(f"note: on '{hw_name}' this model's cheapest policy costs {exc.smallest:.3f} of the 8-bit "
                       f"{settings.constraint}, so the default budget {DEFAULT_BUDGET} is out of reach; using "
                       f"--budget {budget} (halfway to 1). Give --budget to choose.", err=True)
        return run(settings.replace(budget=budget))


def print_outcome(result: SearchResult, output: Path, backend: Any, model_spec: str,
                  test_eval_fn: Callable[..., float] | None, float_model: Any, train_data: Any = None) -> None:
    """What a user wants to read when the search ends: accuracy, cost, where the files went, what next.

    The held-out accuracy is measured as the search measured each episode (finetuning included).
    """
    click.echo("")
    click.echo(result.summary_text())
    if test_eval_fn is not None:
        metric = result.metric
        tested = evaluate_policy(backend, result.policy.bits, test_eval_fn, result.settings.finetune_steps,
                                 train_data)
        click.echo(f"Held-out test {metric.name} of the best policy: {metric.format(tested)} "
                   f"(float {metric.format(float_accuracy(float_model, test_eval_fn))}).")
    click.echo("")
    written = ", ".join(path.name for path in result.files.values())
    click.echo(f"Outputs in {output}/: {written}")
    model = "" if model_spec == "demo" else f" --model {model_spec}"
    policy = output / "policy.json"
    click.echo("Next:")
    click.echo(f"  haq-plugin cost{model} --hw {result.hardware.name} --policy {policy}")
    click.echo(f"  haq-plugin export{model} --policy {policy} --backend {backend.name} -o {backend.export_filename}")
    click.echo("  then apply it in your training code (README: 'Apply a searched policy').")
