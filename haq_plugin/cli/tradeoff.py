"""``haq-plugin sweep`` and ``haq-plugin sensitivity``: the command-line faces of the analyses.

Both take the options of ``haq-plugin search`` (the very option objects of
:data:`haq_plugin.cli.search_cmd.search_cmd`, so help texts and defaults never
drift apart): ``sweep`` all of them but ``--budget`` (it has ``--budgets``),
``sensitivity`` those that describe the model, data, hardware and backend.
A language-model ``--model`` changes the defaults of both as it does for
``search`` (:func:`~haq_plugin.cli.options.apply_task_defaults`), and the sweep's
budgets become bits per weight (:data:`LANGUAGE_MODEL_BUDGETS`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import click

from haq_plugin.engine.agent import DDPGConfig
from haq_plugin.cli.options import apply_task_defaults, parse_pins
from haq_plugin.cli.search_cmd import search_cmd
from haq_plugin.api.errors import HaqError
from haq_plugin.api.options import parse_key_values

DEFAULT_BUDGETS = "0.3,0.4,0.5,0.6,0.8"
#: A language model's default sweep: from 3 bits per weight (2-bit weights with group-32 scales) to 4.5.
LANGUAGE_MODEL_BUDGETS = "3.0bpw,3.5bpw,4.0bpw,4.5bpw"
SENSITIVITY_OPTIONS = ("model_spec", "input_shape", "data_spec", "data_options", "backend_name", "backend_options",
                       "hw_name", "hw_options", "constraint", "quantize", "metric", "decisions", "seed", "device",
                       "threads", "force", "quiet", "no_cache")
SWEEP_RESUME_MAY_CHANGE = {"resume_dir", "quiet", "no_cache", "budgets", "device", "threads", "ray_address"}


def _search_params(keep: Iterable[str] | None = None, drop: tuple[str, ...] = ()) -> list[click.Parameter]:
    """Copies of ``search``'s options: those named in ``keep`` (all when None), minus ``drop``."""
    return [copy.copy(p) for p in search_cmd.params
            if (keep is None or p.name in keep) and p.name not in drop]


def _output_option(default: str, what: str) -> click.Option:
    option = copy.copy(next(p for p in search_cmd.params if p.name == "output"))
    option.default, option.help = default, f"Directory for {what}."
    return option


def _plugins_and_task(p: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """Hardware, backend, model source and task data from the command's parameters."""
    from haq_plugin.tasks.specs import load_model, load_task_data
    from haq_plugin.api.plugins import load_backend, load_hardware

    def plugin_options(values: Any, flag: str) -> dict[str, Any]:
        """Command-line KEY=VALUE strings, or a stored config (unset options, None, keep their defaults)."""
        if isinstance(values, dict):
            return {key: value for key, value in values.items() if value is not None}
        return parse_key_values(values, flag)

    hardware = load_hardware(p["hw_name"], **plugin_options(p["hw_options"], "--hw-option"))
    backend = load_backend(p["backend_name"], **plugin_options(p["backend_options"], "--backend-option"))
    options = data_options(p)
    source = load_model(p["model_spec"], p["input_shape"], p["data_spec"], options)
    data = load_task_data(p["data_spec"], p["model_spec"], options)
    if data.description and not p["quiet"]:
        click.echo(data.description, err=True)
    return hardware, backend, source, data


def data_options(p: dict[str, Any]) -> dict[str, Any] | None:
    """``--data-option`` KEY=VALUE strings (or the dict a resumed sweep stored) as a dict; None if none."""
    values = p.get("data_options")
    if not values:
        return None
    return dict(values) if isinstance(values, dict) else parse_key_values(values, "--data-option")


def task_description(p: dict[str, Any]) -> dict[str, Any]:
    """The task as a sweep stores it (and a resumed one reloads it): model, input shape, data, data options."""
    task = {"model": p["model_spec"], "input_shape": p["input_shape"], "data": p["data_spec"]}
    options = data_options(p)
    if options:
        task["data_options"] = options
    return task


def _language_model_defaults(params: dict[str, Any], ctx: click.Context) -> None:
    """The search's language-model defaults, and bits-per-weight budgets for a sweep not given --budgets."""
    from click.core import ParameterSource

    from haq_plugin.tasks.llm.spec import is_language_model

    apply_task_defaults(params, ctx)
    if (is_language_model(params.get("model_spec")) and "budgets" in params
            and ctx.get_parameter_source("budgets") in (ParameterSource.DEFAULT, None)):
        params["budgets"] = LANGUAGE_MODEL_BUDGETS


# -- sweep --------------------------------------------------------------------------------
def _sweep_resumed(ctx: click.Context, resume_dir: str) -> dict[str, Any]:
    """The parameters the sweep in ``resume_dir`` was started with (``--budgets`` may change)."""
    from click.core import ParameterSource

    from haq_plugin.storage.files import read_json
    from haq_plugin.analyses.sweep import SWEEP_FILE

    given = [name for name in ctx.params if name not in SWEEP_RESUME_MAY_CHANGE
             and ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]
    if given:
        flags = ", ".join(next(p.opts[0] for p in ctx.command.params if p.name == name) for name in given)
        raise HaqError(f"--resume continues with the settings stored in {resume_dir}; only --budgets, --quiet, "
                       f"--no-cache, --device, --threads and --ray-address may be given (got {flags}).")
    path = Path(resume_dir) / SWEEP_FILE
    if not path.is_file():
        raise HaqError(f"Cannot resume a sweep in {resume_dir}: it has no {SWEEP_FILE}. Point --resume to the "
                       "--output directory of an earlier sweep.")
    stored = read_json(path, "Sweep file")
    s, task = stored["settings"], stored["settings"].get("task") or {}
    search = s["search"]
    params = dict(ctx.params)
    params.update(
        {k: v for k, v in search.items() if k in params}, output=resume_dir, force=False,
        model_spec=task.get("model", "demo"), input_shape=task.get("input_shape"), data_spec=task.get("data"),
        data_options=task.get("data_options"),
        hw_name=s["hardware"]["name"], hw_options=s["hardware"]["config"], backend_name=s["backend"]["name"],
        backend_options=s["backend"]["config"], pins={name: tuple(bits) for name, bits in (search.get("pins") or {}).items()},
        **{f"ddpg_{k}": v for k, v in search["ddpg"].items()},
    )
    if ctx.get_parameter_source("budgets") != ParameterSource.COMMANDLINE:
        params["budgets"] = ",".join(b if isinstance(b, str) else f"{b:g}" for b in stored["budgets"])
    return params


def _sweep(**params: Any) -> None:
    """Search once per budget and write the accuracy-cost front (pareto.csv, pareto.png, summary.md).

    \b
    Takes every option of 'haq-plugin search' except --budget, for example:
      haq-plugin sweep --budgets 0.3,0.4,0.5,0.6,0.8 --backend brevitas --hw bitfusion
      haq-plugin sweep --model llm:smollm2-135m --budgets 3.0bpw,3.5bpw,4.0bpw
    Each budget's search goes to DIR/budget-B/; infeasible budgets are reported
    and skipped. 'haq-plugin sweep --resume DIR' keeps finished budgets and
    continues the interrupted one.
    """
    from haq_plugin.analyses.sweep import parse_budgets, sweep

    resume_dir = params["resume_dir"]
    ctx = click.get_current_context()
    if not resume_dir:
        _language_model_defaults(params, ctx)
    p = _sweep_resumed(ctx, resume_dir) if resume_dir else params
    budgets = parse_budgets(p["budgets"])
    hardware, backend, source, data = _plugins_and_task(p)
    if p["finetune_steps"] and data.train_data is None:
        raise HaqError("--finetune-steps needs training data: return 'train_data' from your --data callable.")
    output = Path(p["output"])
    try:
        result = sweep(
            source.model, source.example_input, budgets=budgets, hardware=hardware, backend=backend,
            eval_fn=data.eval_fn, calibration_data=data.calibration_data, test_eval_fn=data.test_eval_fn,
            output_dir=output, resume=bool(resume_dir), force=p["force"], progress=not p["quiet"],
            task=task_description(p), metric=p["metric"], decisions=p["decisions"], constraint=p["constraint"], strategy=p["strategy"], episodes=p["episodes"], seed=p["seed"],
            train_data=data.train_data, finetune_steps=p["finetune_steps"], min_bits=p["min_bits"],
            max_bits=p["max_bits"], keep_first_layer_8bit=p["keep_first_layer_8bit"],
            keep_last_layer_8bit=p["keep_last_layer_8bit"], quantize=p.get("quantize"),
            pins=p["pins"] if isinstance(p["pins"], dict) else parse_pins(p["pins"]),
            ddpg=DDPGConfig(**{k.removeprefix("ddpg_"): v for k, v in p.items() if k.startswith("ddpg_")}),
            use_cache=not p["no_cache"], workers=p["workers"], device=p["device"], ray_address=p["ray_address"],
            threads=p["threads"])
    except KeyboardInterrupt:
        click.echo(f"\nInterrupted. Finished budgets are kept; continue with: haq-plugin sweep --resume {output}",
                   err=True)
        raise SystemExit(130) from None
    if p["quiet"]:
        _print_skipped(result, err=True)  # quiet drops progress, never the news that a budget was not searched
    else:
        _print_sweep(result)


def _print_sweep(result: Any) -> None:
    from haq_plugin.analyses.sweep_budgets import BITS_PER_WEIGHT, budget_label
    from haq_plugin.storage.formatting import render_table

    metric, by_bpw = result.metric, result.budget_kind == BITS_PER_WEIGHT
    unit = "%" if metric.unit == "%" else "ppl" if metric.name == "perplexity" else metric.name
    axes = (lambda pt: (round(pt.bits_per_weight, 3), float(f"{pt.latency * 1e3:.4g}"))) if by_bpw else (lambda pt: ())
    rows = [(budget_label(pt.budget), pt.strategy, round(pt.cost_fraction, 4), *axes(pt), round(pt.val_accuracy, 2),
             "" if pt.test_accuracy is None else round(pt.test_accuracy, 2), pt.policy_file) for pt in result.points]
    headers = ["budget", "policy", "cost x 8-bit", *(["bpw", "latency ms"] if by_bpw else []), f"val {unit}",
               f"test {unit}", "file"]
    click.echo("")
    click.echo(render_table(headers, rows), nl=False)
    click.echo(f"uniform 8-bit: val {metric.format(result.eight_bit_accuracy)}; float: val "
               f"{metric.format(result.float_accuracy)}")
    _print_skipped(result)
    click.echo(f"Outputs in {result.output_dir}/: pareto.csv, pareto.png, summary.md, budget-*/")


def _print_skipped(result: Any, err: bool = False) -> None:
    """One line per infeasible budget: the sweep went on without it."""
    from haq_plugin.analyses.sweep_budgets import budget_label

    for budget, smallest in sorted(result.infeasible.items()):
        click.echo(f"budget {budget_label(budget)} skipped: infeasible, the smallest feasible budget is "
                   f"{smallest:.4f}", err=err)


sweep_cmd = click.Command(
    "sweep", callback=_sweep, help=_sweep.__doc__, short_help="Search once per budget: the accuracy-cost front.",
    params=[click.Option(["--budgets"], default=DEFAULT_BUDGETS, show_default=True, metavar="B1,B2,...",
                         help="Budgets as fractions of the uniform 8-bit cost, comma separated, each in (0, 1], or, "
                              "under --constraint size, bits per weight (3.0bpw,3.5bpw); not mixed. Default for "
                              f"language models: {LANGUAGE_MODEL_BUDGETS}."),
            *_search_params(drop=("budget", "output", "resume_dir")),
            _output_option("haq-sweep", "pareto.csv, pareto.png, summary.md and one folder per budget"),
            click.Option(["--resume", "resume_dir"], default=None, type=click.Path(file_okay=False),
                         help="Continue the sweep in this directory: finished budgets are kept.")],
)


# -- sensitivity ------------------------------------------------------------------------------
def _sensitivity(**p: Any) -> None:
    """Accuracy when one layer's weights, then its input activations, go to fewer bits (all else at 8).

    \b
    For example:
      haq-plugin sensitivity --backend brevitas --hw bitfusion --bits 2,3,4
      haq-plugin sensitivity --model llm:smollm2-135m --decisions role
    Costs layers x bits x 2 evaluations (stated before it starts; weights only,
    as for a language model: x 1). Writes sensitivity.csv, sensitivity.png and
    sensitivity.md, with each layer's share of the --constraint cost of the
    uniform 8-bit policy. --decisions block|role lowers each group of layers
    together, as the greedy strategy measures them. An entry the backend ran at
    other bits (an input observer shared between layers) is marked, not measured.
    """
    from haq_plugin.analyses.sensitivity import parse_bit_list, sensitivity

    apply_task_defaults(p, click.get_current_context())
    bits = parse_bit_list(p["bits"])
    hardware, backend, source, data = _plugins_and_task(p)
    result = sensitivity(source.model, source.example_input, hardware=hardware, backend=backend,
                         eval_fn=data.eval_fn, calibration_data=data.calibration_data, bits=bits,
                         constraint=p["constraint"], seed=p["seed"], output_dir=Path(p["output"]), force=p["force"],
                         progress=not p["quiet"], use_cache=not p["no_cache"], metric=p["metric"],
                         decisions=p["decisions"], quantize=p["quantize"], device=p["device"],
                         threads=p["threads"])
    if not p["quiet"]:
        from haq_plugin.analyses.sensitivity_report import sensitivity_markdown

        click.echo(sensitivity_markdown(result))
        click.echo(f"Outputs in {result.output_dir}/: sensitivity.csv, sensitivity.png, sensitivity.md")
        _note_other_bits(result)


def _note_other_bits(result: Any) -> None:
    """One stderr line when the backend ran some entries at other bits than asked: those are not measured."""
    others = result.unmeasured()
    if others:
        click.echo(f"note: backend '{result.backend}' ran {len(others)} entries at other bits than their column's "
                   "(shared input observers, for example); they are not measured at the asked width and are marked "
                   "(sensitivity.md: \u2020, sensitivity.csv: the 'effective' column, sensitivity.png: hatched).",
                   err=True)


sensitivity_cmd = click.Command(
    "sensitivity", callback=_sensitivity, help=_sensitivity.__doc__,
    short_help="Per-layer (or per-group) accuracy or perplexity at low bits, with cost shares.",
    params=[click.Option(["--bits"], default="2,3,4", show_default=True, metavar="B1,B2,...",
                         help="Bit widths to measure (below 8, supported by the hardware and the backend)."),
            *_search_params(keep=SENSITIVITY_OPTIONS),
            _output_option("haq-sensitivity", "sensitivity.csv, sensitivity.png and sensitivity.md")],
)
