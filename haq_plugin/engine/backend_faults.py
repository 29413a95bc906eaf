"""A backend's faults contained like a hardware plugin's: one line naming plugin, distribution and method.

The core calls a backend's methods directly (``backend.prepare(...)``,
``backend.evaluate(...)``), not through pluggy's hook caller: a backend is a
class that a hook *returned*, and its methods are ordinary methods of an
instance, so pluggy's tracing covers the ``haq_quant_backends`` hook that
registered it but not the calls on the instance.  :func:`contained` gives those
calls what pluggy would not: a :class:`HaqError` from the backend passes through
as written (it is a message for the user), any other exception, or an accuracy
that is not a real number from 0 to 100, becomes one :class:`BackendFault` that
names the method, the plugin and the distribution to fix or uninstall.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Any, Iterator

from haq_plugin.api.errors import HaqError, PluginError, one_line
from haq_plugin.api.plugins import get_plugin_manager
from haq_plugin.engine.eval_fn import _scalar

#: The backend methods the core calls, in the order of a search.
METHODS = ("prepare", "set_policy", "calibrate", "finetune", "evaluate", "export")


class BackendFault(PluginError):
    """A backend method raised (not a :class:`HaqError`) or returned something that is not an accuracy."""


def backend_origin(backend: Any) -> str:
    """``plugin 'P' (from DIST VERSION)`` for a registered backend; how else it came to be, otherwise."""
    found = get_plugin_manager().backends.entries.get(getattr(backend, "name", ""), [])
    for registration in found:
        if registration.cls is type(backend):
            return f"plugin '{registration.plugin}' (from {registration.distribution})"
    return f"class {type(backend).__module__}.{type(backend).__qualname__} (not an installed plugin)"


def fault_message(backend: Any, method: str, problem: str) -> str:
    """The one line of a backend fault: what happened, in which method, of which plugin, and what to do."""
    origin = backend_origin(backend)
    fix = "fix or uninstall that distribution" if "(from " in origin else "fix that class"
    return (f"backend '{getattr(backend, 'name', '?')}' of {origin} failed in {method}(): {problem}; {fix}, "
            "or choose another --backend.")


@contextlib.contextmanager
def contained(backend: Any, method: str) -> Iterator[None]:
    """Run a call of ``backend.method``; a foreign exception becomes one :class:`BackendFault`."""
    try:
        yield
    except HaqError:
        raise
    except Exception as exc:  # a plugin's bug must not end in a traceback
        raise BackendFault(fault_message(backend, method, f"raised {one_line(exc)}")) from exc


def checked_accuracy(backend: Any, value: Any) -> float:
    """``value`` returned by ``backend.evaluate`` as a float; a str (even ``"90"``), None, NaN or inf is a fault.

    Only the type is the backend's business: the range (0 to 100 for an accuracy, at least 1 for a
    perplexity) is the metric's, checked on ``eval_fn``'s own answer inside ``evaluate``.
    """
    value = _scalar(value)
    if value is None or isinstance(value, (str, bytes, bool)) or not isinstance(value, numbers.Real):
        raise BackendFault(fault_message(backend, "evaluate", f"returned {value!r} ({type(value).__name__}), not "
                                         "an accuracy or a perplexity (a real number)"))
    if not math.isfinite(float(value)):
        shown = "NaN" if math.isnan(float(value)) else repr(float(value))
        raise BackendFault(fault_message(backend, "evaluate", f"returned {shown}, not an accuracy or a perplexity "
                                         "(a finite number)"))
    return float(value)
