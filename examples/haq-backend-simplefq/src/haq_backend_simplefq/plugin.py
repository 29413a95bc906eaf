"""The plugin module named by this distribution's ``haq_plugin`` entry point."""

from __future__ import annotations

from haq_plugin import hookimpl

from haq_backend_simplefq.backend import SimpleFQBackend


@hookimpl
def haq_quant_backends() -> list[type[SimpleFQBackend]]:
    """Contribute the ``simple-fq`` backend (a class: haq-plugin instantiates it with options)."""
    return [SimpleFQBackend]
