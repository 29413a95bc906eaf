"""``haq-plugin hw list`` and ``haq-plugin backends list``: the installed plugins."""

from __future__ import annotations

import json
from typing import Any, Sequence

import click

from haq_plugin.cli.options import format_option
from haq_plugin.storage.formatting import render_table
from haq_plugin.api.options import Option
from haq_plugin.api.plugins import get_plugin_manager


@click.group("hw")
def hw_group() -> None:
    """Hardware models (simulators) installed as plugins."""


@hw_group.command("list")
@format_option
def hw_list(fmt: str) -> None:
    """List hardware models with their source distribution and options."""
    _print_registry(get_plugin_manager().hardware, fmt, extra=_hardware_extra)


@hw_group.command("show")
@click.argument("name")
@format_option
def hw_show(name: str, fmt: str) -> None:
    """Show one hardware model: description, supported bit widths, every option with its limits."""
    registry = get_plugin_manager().hardware
    registry.get(name)  # an unknown name is a clear error listing the installed ones
    _print_registry(registry, fmt, extra=_hardware_extra, only=name)


def _hardware_extra(cls: Any) -> dict[str, Any]:
    """Energy, bits and citation; first, for a model whose optional extra is missing, the line that installs it."""
    missing = cls.unavailable()
    return {**({"unavailable": missing} if missing else {}), "energy": cls.has_energy,
            "supported_bits": list(_supported_bits(cls)), "citation": cls.citation}


def _supported_bits(cls: Any) -> tuple[int, ...]:
    """The bit widths of a hardware model with its default options (``supported_bits`` may depend on them)."""
    try:
        return tuple(cls().supported_bits)
    except Exception:  # a model that cannot be built without options: show the class default
        bits = cls.__dict__.get("supported_bits")
        return tuple(bits) if isinstance(bits, (tuple, list)) else ()


@click.group("backends")
def backends_group() -> None:
    """Quantization backends installed as plugins."""


@backends_group.command("list")
@format_option
def backends_list(fmt: str) -> None:
    """List quantization backends with their source distribution and options."""
    _print_registry(get_plugin_manager().backends, fmt, extra=lambda cls: {
        "export": cls.export_filename, "supported_bits": list(cls.supported_bits)})


def _print_registry(registry, fmt: str, extra, only: str | None = None) -> None:
    flag = registry.flag + "-option"
    entries = [(name, reg) for name in registry.names() for reg in registry.entries[name]
               if only is None or name == only]
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
                click.echo(f"    {flag} {opt.name}={opt.default!r} ({opt.type.__name__}{_limits(opt)})  "
                           f"{opt.help}{source}")
            click.echo("")
    for problem in get_plugin_manager().problems:
        click.echo(f"warning: {problem}", err=True)


def _option_dict(opt: Option) -> dict[str, Any]:
    return {"name": opt.name, "type": opt.type.__name__, "default": opt.default, "help": opt.help,
            "choices": list(opt.choices) if opt.choices is not None else None, "minimum": opt.minimum,
            "source": opt.source}


def _limits(opt: Option) -> str:
    """``; one of a, b`` and ``; >= m`` for the table view."""
    text = ""
    if opt.choices is not None:
        text += "; one of " + ", ".join(map(str, opt.choices))
    if opt.minimum is not None:
        text += f"; >= {opt.minimum:g}"
    return text


def _options_text(options: Sequence[Option]) -> str:
    return "; ".join(f"{o.name}={o.default}" for o in options)
