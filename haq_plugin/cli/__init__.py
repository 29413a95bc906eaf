"""The ``haq-plugin`` command line: a thin layer over the Python API.

Each subcommand is a click command in its own module of this package; to add
one, write the module and list its command in :data:`COMMANDS`.  Nothing else
in the package imports the command line, so the API never depends on it.
"""

from __future__ import annotations

from haq_plugin.cli import analysis, export, listing, search_cmd, tradeoff
from haq_plugin.cli.app import cli, main

COMMANDS = (
    listing.hw_group,
    listing.backends_group,
    analysis.layers_cmd,
    analysis.cost_cmd,
    export.export_cmd,
    search_cmd.search_cmd,
    tradeoff.sweep_cmd,
    tradeoff.sensitivity_cmd,
)
for _command in COMMANDS:
    cli.add_command(_command)

__all__ = ["COMMANDS", "cli", "main"]
