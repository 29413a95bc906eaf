"""The ``haq-plugin`` command line: a thin layer over the Python API.

Every user mistake surfaces as :class:`~haq_plugin.errors.HaqError`; :func:`main`
prints it as one paragraph and exits with status 2, never with a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

import click

from haq_plugin import __version__
from haq_plugin.costs import CONSTRAINTS, UNITS, build_cost_table
from haq_plugin.errors import HaqError
from haq_plugin.formatting import render_table, si
from haq_plugin.layers import extract_layers
from haq_plugin.models import load_model
from haq_plugin.options import Option, parse_key_values
from haq_plugin.plugins import get_plugin_manager, load_backend, load_hardware
from haq_plugin.policy import Policy

FORMATS = click.Choice(["table", "csv", "json"])


def parse_bits(text: str, flag: str = "--bits") -> tuple[int, int]:
    """``4/8`` -> (4, 8); ``4`` -> (4, 4)."""
    w, sep, a = text.partition("/")
    try:
        pair = (int(w), int(a) if sep else int(w))
    except ValueError:
        raise HaqError(f"{flag} {text!r}: write weight/activation bits like 4/8 (or 4 for both).") from None
    if not all(1 <= b <= 16 for b in pair):
        raise HaqError(f"{flag} {text!r}: bit widths must be from 1 to 16.")
    return pair


def model_options(func):
    """--model and --input-shape, shared by every command that analyses a model."""
    func = click.option("--input-shape", default=None, metavar="N,C,H,W",
                        help="Example input shape for a model callable that returns only a module.")(func)
    return click.option("--model", "model_spec", default="demo", show_default=True, metavar="SPEC",
                        help="'demo', 'zoo:NAME' (mobilenet_v1, mobilenet_v2, resnet18, resnet50) or "
                             "'package.module:callable'.")(func)


def hw_options(func):
    func = click.option("--hw-option", "hw_options", multiple=True, metavar="KEY=VALUE",
                        help="Override a hardware model option (see 'haq-plugin hw list').")(func)
    return click.option("--hw", "hw_name", default="bitfusion", show_default=True, metavar="NAME",
                        help="Hardware model (see 'haq-plugin hw list').")(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="haq-plugin")
def cli() -> None:
    """Hardware-aware mixed-precision quantization (HAQ) with pluggable hardware models and backends.

    \b
    Quick start:
      haq-plugin search --backend brevitas --hw bitfusion   # search on the embedded demo
      haq-plugin cost --model zoo:mobilenet_v2 --hw bitfusion --bits 4/4
      haq-plugin hw list
    """


# -- plugin listings --------------------------------------------------------------------
@cli.group("hw")
def hw_group() -> None:
    """Hardware models (simulators) installed as plugins."""


@hw_group.command("list")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def hw_list(fmt: str) -> None:
    """List hardware models with their source distribution and options."""
    _print_registry(get_plugin_manager().hardware, fmt, extra=lambda cls: {"energy": cls.has_energy,
                                                                          "citation": cls.citation})


@cli.group("backends")
def backends_group() -> None:
    """Quantization backends installed as plugins."""


@backends_group.command("list")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def backends_list(fmt: str) -> None:
    """List quantization backends with their source distribution and options."""
    _print_registry(get_plugin_manager().backends, fmt, extra=lambda cls: {"export": cls.export_filename})


def _print_registry(registry, fmt: str, extra) -> None:
    flag = registry.flag + "-option"
    entries = [(name, reg) for name in registry.names() for reg in registry.entries[name]]
    if fmt == "json":
        data = [{"name": name, "description": reg.cls.description, "plugin": reg.plugin,
                 "distribution": reg.distribution, **extra(reg.cls),
                 "options": [_option_dict(o) for o in reg.cls.options]} for name, reg in entries]
        click.echo(json.dumps(data, indent=2))
    elif fmt == "csv":
        rows = [(name, reg.cls.description, reg.distribution, _options_text(reg.cls.options)) for name, reg in entries]
        click.echo(render_table(["name", "description", "distribution", "options"], rows, "csv"), nl=False)
    else:
        for name, reg in entries:
            click.echo(f"{name}  ({reg.distribution}, plugin '{reg.plugin}')")
            click.echo(f"    {reg.cls.description}")
            for key, value in extra(reg.cls).items():
                click.echo(f"    {key}: {value}")
            for opt in reg.cls.options:
                source = f" [source: {opt.source}]" if opt.source else ""
                click.echo(f"    {flag} {opt.name}={opt.default!r} ({opt.type.__name__})  {opt.help}{source}")
            click.echo("")
    for problem in get_plugin_manager().problems:
        click.echo(f"warning: {problem}", err=True)


def _option_dict(opt: Option) -> dict[str, Any]:
    return {"name": opt.name, "type": opt.type.__name__, "default": opt.default, "help": opt.help,
            "source": opt.source}


def _options_text(options: Sequence[Option]) -> str:
    return "; ".join(f"{o.name}={o.default}" for o in options)


# -- layers and costs -------------------------------------------------------------------
@cli.command("layers")
@model_options
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def layers_cmd(model_spec: str, input_shape: str | None, fmt: str) -> None:
    """Show the quantizable layers of a model, in execution order."""
    source = load_model(model_spec, input_shape)
    layers = extract_layers(source.model, source.example_input)
    rows = [(i, l.name, l.kind, l.in_channels, l.out_channels, "x".join(map(str, l.kernel_size)),
             l.stride[0], l.groups, "x".join(map(str, l.in_size)), "x".join(map(str, l.out_size)),
             l.macs, l.params, l.is_depthwise) for i, l in enumerate(layers)]
    headers = ["#", "name", "kind", "in", "out", "kernel", "stride", "groups", "in_size", "out_size",
               "macs", "params", "depthwise"]
    if fmt == "table":
        click.echo(f"{source.label}: {len(layers)} quantizable layers, "
                   f"{si(sum(l.macs for l in layers))}MACs, {si(sum(l.params for l in layers))} weights")
    click.echo(render_table(headers, rows, fmt), nl=False)


@cli.command("cost")
@model_options
@hw_options
@click.option("--bits", default=None, metavar="W/A", help="Uniform weight/activation bits (default 8/8).")
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False), default=None,
              help="A policy.json to cost instead of uniform bits.")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.option("--no-cache", is_flag=True, help="Simulate again instead of using the cached cost table.")
def cost_cmd(model_spec: str, input_shape: str | None, hw_name: str, hw_options: tuple[str, ...],
             bits: str | None, policy_path: str | None, fmt: str, no_cache: bool) -> None:
    """Per-layer latency, energy, weight size and BOPs of a policy on a hardware model."""
    if bits and policy_path:
        raise HaqError("Give either --bits or --policy, not both.")
    uniform = parse_bits(bits or "8/8")
    hardware = load_hardware(hw_name, **parse_key_values(hw_options, "--hw-option"))
    source = load_model(model_spec, input_shape)
    layers = extract_layers(source.model, source.example_input)
    if policy_path:
        policy = Policy.load(policy_path)
        policy.check_layers(layers)
        pairs = policy.as_list()
    else:
        pairs = [uniform] * len(layers)
    for w, a in set(pairs):
        hardware.check_bits(w, a)
    table = build_cost_table(hardware, layers, bits=_table_bits(hardware, pairs), cache=not no_cache)
    per_layer = {m: table.layer_costs(m, pairs) for m in CONSTRAINTS if m != "energy" or table.energy is not None}
    headers = ["name", "w/a", "latency_s", "energy_j", "size_bytes", "bops"]
    rows = [(layer.name, f"{w}/{a}", float(per_layer["latency"][i]),
             float(per_layer["energy"][i]) if "energy" in per_layer else None,
             float(per_layer["size"][i]), float(per_layer["bops"][i]))
            for i, (layer, (w, a)) in enumerate(zip(layers, pairs))]
    totals = {m: float(v.sum()) for m, v in per_layer.items()}
    eight = {m: table.uniform_cost(m, 8) for m in per_layer} if 8 in table.bits else {}
    if fmt == "json":
        click.echo(json.dumps({"model": source.label, "hardware": hardware.name, "config": hardware.config,
                               "layers": [dict(zip(headers, r)) for r in rows], "total": totals,
                               "uniform_8bit": eight}, indent=2))
        return
    if fmt == "csv":
        rows.append(("TOTAL", "", totals["latency"], totals.get("energy"), totals["size"], totals["bops"]))
        click.echo(render_table(headers, rows, "csv"), nl=False)
        return
    pretty = [(n, wa, si(lat, "s"), si(en, "J"), si(sz, "B"), si(bo)) for n, wa, lat, en, sz, bo in rows]
    click.echo(f"{source.label} on {hardware.name} ({hardware.describe_config()})")
    click.echo(render_table(["layer", "w/a", "latency", "energy", "size", "BOPs"], pretty), nl=False)
    click.echo("")
    for metric, total in totals.items():
        ratio = f"  ({total / eight[metric]:.3f} of uniform 8/8)" if metric in eight and eight[metric] else ""
        click.echo(f"total {metric:8s} {si(total, UNITS[metric])}{ratio}")
    origin = "cached" if table.from_cache else "simulated"
    click.echo(f"cost table: {len(layers)} layers x {len(table.bits)}x{len(table.bits)} bit pairs, "
               f"{origin} in {table.build_seconds:.2f} s")


def _table_bits(hardware, pairs: Sequence[tuple[int, int]]) -> list[int]:
    """Bits the table must cover: the hardware's up to 8, plus any wider bits the policy uses."""
    wanted = {b for pair in pairs for b in pair} | {b for b in hardware.supported_bits if b <= 8}
    return sorted(wanted)


# -- export ------------------------------------------------------------------------------
@cli.command("export")
@click.option("--policy", "policy_path", required=True, type=click.Path(dir_okay=False),
              help="policy.json written by 'haq-plugin search'.")
@click.option("--backend", "backend_name", required=True, metavar="NAME", help="torch.ao or brevitas (or a plugin).")
@click.option("-o", "--output", "output", default=None, type=click.Path(dir_okay=False),
              help="Output file (default: the backend's file name in the current directory).")
@model_options
@click.option("--data", "data_spec", default=None, metavar="package.module:callable",
              help="Calibration data for the model (default: the demo's, or the example input).")
def export_cmd(policy_path: str, backend_name: str, output: str | None, model_spec: str,
               input_shape: str | None, data_spec: str | None) -> None:
    """Write a policy in a backend's own format (a QConfigMapping file, a Brevitas policy file).

    The backend is prepared on the model the policy was searched on (--model, default the demo), so the
    export reflects the real graph (residual adds, shared inputs); the policy's layer fingerprint must match.
    """
    from haq_plugin.models import load_task_data

    policy = Policy.load(policy_path)
    backend = load_backend(backend_name)
    source = load_model(model_spec, input_shape)
    layers = extract_layers(source.model, source.example_input)
    policy.check_layers(layers)
    if data_spec is not None or model_spec == "demo":
        calibration = load_task_data(data_spec, model_spec).calibration_data
    else:
        calibration = [source.example_input]
    backend.prepare(source.model, source.example_input, calibration, layers=layers)
    path = backend.export(policy, Path(output or backend.export_filename))
    click.echo(f"wrote {path} ({backend.name} format, {len(policy.bits)} layers)")


def _register_search() -> None:
    from haq_plugin.cli_analysis import sensitivity_cmd, sweep_cmd
    from haq_plugin.cli_search import search_cmd

    cli.add_command(search_cmd)
    cli.add_command(sweep_cmd)
    cli.add_command(sensitivity_cmd)


_register_search()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the CLI, turning user errors into a message and exit status 2."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="haq-plugin", standalone_mode=False)
    except HaqError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
