"""The ``haq-plugin`` command group and its entry point.

Every user mistake surfaces as :class:`~haq_plugin.api.errors.HaqError`; :func:`main`
prints it as one paragraph and exits with status 2, never with a traceback.
The subcommands are added in :mod:`haq_plugin.cli` (its ``COMMANDS``).
"""

from __future__ import annotations

import sys
from typing import Sequence

import click

from haq_plugin import __version__
from haq_plugin.api.errors import HaqError


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


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the CLI, turning user errors into a message and exit status 2."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="haq-plugin", standalone_mode=False)
    except HaqError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:  # a file or directory the user named cannot be read or written
        where = f" {exc.filename}" if exc.filename else ""
        click.echo(f"Error: cannot access{where}: {exc.strerror or exc}. Check the path and its permissions.",
                   err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
