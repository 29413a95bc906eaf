"""The plugin module named by this distribution's ``haq_plugin`` entry point.

haq-plugin imports this module and calls its ``@hookimpl`` functions; keeping
them here, apart from the model, lets the model be imported and tested without
registering anything.
"""

from __future__ import annotations

from haq_plugin import hookimpl

from haq_hw_roofline.roofline import RooflineModel


@hookimpl
def haq_hardware_models() -> list[type[RooflineModel]]:
    """Contribute the ``roofline`` hardware model (a class: haq-plugin instantiates it with options)."""
    return [RooflineModel]
