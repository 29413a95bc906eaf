"""``haq-plugin hw list`` and ``haq-plugin backends list``: the installed plugins."""

from __future__ import annotations

import json
from typing import Any, Sequence

import click

from haq_plugin.cli.options import format_option
from haq_plugin.formatting import render_table
from haq_plugin.options import Option
from haq_plugin.plugins import get_plugin_manager


@click.group("hw")
def hw_group() -> None:
    """Hardware models (simulators) installed as plugins."""


@hw_group.command("list")
@format_option
def hw_list(fmt: str) -> None:
    """List hardware models with their source distribution and options."""
    _print_registry(get_plugin_manager().hardware, fmt, extra=lambda cls: {"energy": cls.has_energy,
                                                                          "citation": cls.citation})


@click.group("backends")
def backends_group() -> None:
    """Quantization backends installed as plugins."""


@backends_group.command("list")
@format_option
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
