"""Hook specifications: the contract between haq-plugin and its plugins.

A plugin is any module (or object) with functions decorated by
``haq_plugin.hookimpl`` and named like the specs below.  haq-plugin finds
plugins through the ``haq_plugin`` entry-point group; the built-in simulators and
backends register through that same group.  A package declares, in its
``pyproject.toml``::

    [project.entry-points.haq_plugin]
    my_accelerator = "my_package.haq_hw"

Every hook is optional: implement only the ones you need.  See
``docs/plugins.md`` for a complete walk-through.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

import pluggy

if TYPE_CHECKING:
    from haq_plugin.api.backend import QuantBackend
    from haq_plugin.api.hardware import HardwareModel

PROJECT_NAME = "haq_plugin"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def haq_hardware_models() -> Iterable[type["HardwareModel"]]:
    """Return the hardware model classes this plugin provides.

    Each item is a subclass of :class:`haq_plugin.HardwareModel` with a unique
    ``name`` (what users pass to ``--hw``), a ``description``, a ``citation`` and
    its declared ``options``.  Return classes, not instances: haq-plugin creates
    instances with the user's options, validated against the declared ones.

    Called once when the plugin manager is built.  If two plugins return the same
    name, haq-plugin refuses to pick one and names both distributions.
    """


@hookspec
def haq_quant_backends() -> Iterable[type["QuantBackend"]]:
    """Return the quantization backend classes this plugin provides.

    Each item is a subclass of :class:`haq_plugin.QuantBackend` with a unique
    ``name`` (what users pass to ``--backend``).  The backend turns a per-layer
    bit policy into a fake-quantized model of its framework, evaluates it, and
    exports the policy in that framework's own format.
    """


@hookspec
def haq_search_started(info: dict[str, Any]) -> None:
    """Observe the start of a search.

    ``info`` holds the layer names, hardware name and config, backend name,
    constraint, budget (absolute and as a fraction) and the search settings.  Use
    it to open an experiment tracker run, for example.  Must not modify ``info``.
    """


@hookspec
def haq_episode_finished(record: dict[str, Any]) -> None:
    """Observe one finished search episode.

    ``record`` is the row written to ``episodes.csv``: episode number, per-layer
    bits, cost, accuracy, reward, exploration noise and whether it is the best so
    far.  Called after the episode's checkpoint is written, so a slow observer
    does not risk lost work, but it does slow the search.
    """


@hookspec
def haq_search_finished(result: Any) -> None:
    """Observe the end of a search with its :class:`haq_plugin.SearchResult`."""
