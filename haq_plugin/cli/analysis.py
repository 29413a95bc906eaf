"""``haq-plugin layers`` and ``haq-plugin cost``: a model's layers and what a policy costs on hardware."""

from __future__ import annotations

import json
from typing import Sequence

import click

from haq_plugin.api.bits import parse_bits
from haq_plugin.cli.options import format_option, hw_options, model_options, no_cache_option, plugin_options
from haq_plugin.engine.costs import CONSTRAINTS, UNITS, build_cost_table
from haq_plugin.api.errors import HaqError
from haq_plugin.storage.formatting import render_table, si
from haq_plugin.api.layers import extract_layers
from haq_plugin.tasks.specs import load_model
from haq_plugin.api.plugins import load_hardware
from haq_plugin.api.policy import Policy


@click.command("layers")
@model_options
@format_option
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


@click.command("cost")
@model_options
@hw_options
@click.option("--bits", default=None, metavar="W/A", help="Uniform weight/activation bits (default 8/8).")
@click.option("--policy", "policy_path", type=click.Path(dir_okay=False), default=None,
              help="A policy.json to cost instead of uniform bits.")
@format_option
@no_cache_option
def cost_cmd(model_spec: str, input_shape: str | None, hw_name: str, hw_options: tuple[str, ...],
             bits: str | None, policy_path: str | None, fmt: str, no_cache: bool) -> None:
    """Per-layer latency, energy, weight size and BOPs of a policy on a hardware model."""
    if bits and policy_path:
        raise HaqError("Give either --bits or --policy, not both.")
    uniform = parse_bits(bits) if bits is not None else (8, 8)  # an empty --bits= is a mistake, not 8/8
    hardware = load_hardware(hw_name, **plugin_options(hw_options, "--hw-option"))
    source = load_model(model_spec, input_shape)
    layers = extract_layers(source.model, source.example_input)
    if policy_path:
        policy = Policy.load(policy_path)
        policy.check_layers(layers)
        pairs = policy.as_list()
    else:
        pairs = [uniform] * len(layers)
    if policy_path:
        for layer, (w, a) in zip(layers, pairs):
            hardware.check_bits(w, a, layer=layer.name)
    else:
        hardware.check_bits(*uniform)
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
