"""The plugin manager and the name registries built from it.

Plugins are discovered through the ``haq_plugin`` entry-point group (built-in
ones included).  Discovery is forgiving: a plugin that fails to import, raises in
a hook or returns something malformed is recorded as a :class:`PluginProblem`
(named by entry point and distribution) and skipped, so the others keep working.
Lookups are strict: an unknown name lists the available ones, and a name claimed
by two plugins is an error naming both.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import sys
from dataclasses import dataclass, field
from typing import Any, Generic, Mapping, TypeVar

import pluggy

from haq_plugin.api import hookspecs
from haq_plugin.api.backend import QuantBackend
from haq_plugin.api.errors import HaqError, PluginError
from haq_plugin.api.hardware import HardwareModel

T = TypeVar("T")
ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME


@dataclass(frozen=True)
class PluginProblem:
    """A plugin that could not be used, and why."""

    plugin: str
    distribution: str
    message: str

    def __str__(self) -> str:
        return f"plugin '{self.plugin}' (from {self.distribution}): {self.message}"


@dataclass(frozen=True)
class Registration(Generic[T]):
    """One registered class with the plugin and distribution it came from."""

    cls: type[T]
    plugin: str
    distribution: str


@dataclass
class Registry(Generic[T]):
    """Name -> class for one kind of contribution (hardware models or backends)."""

    kind: str
    flag: str
    entries: dict[str, list[Registration[T]]] = field(default_factory=dict)

    def add(self, registration: Registration[T]) -> None:
        self.entries.setdefault(registration.cls.name, []).append(registration)  # type: ignore[attr-defined]

    def names(self) -> list[str]:
        return sorted(self.entries)

    def get(self, name: str) -> Registration[T]:
        found = self.entries.get(name)
        if not found:
            available = ", ".join(self.names()) or "(none installed)"
            raise HaqError(f"Unknown {self.kind} '{name}' ({self.flag}). Available: {available}.")
        if len(found) > 1:
            owners = " and ".join(f"plugin '{r.plugin}' from {r.distribution}" for r in found)
            raise PluginError(
                f"{self.kind.capitalize()} name '{name}' is registered by {owners}; uninstall one of them."
            )
        return found[0]


class PluginManager:
    """Loads plugins once and exposes the hardware-model and backend registries."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.problems: list[PluginProblem] = []
        self._distributions: dict[str, str] = {}
        self._load_entry_points()
        self.hardware: Registry[HardwareModel] = Registry("hardware model", "--hw")
        self.backends: Registry[QuantBackend] = Registry("backend", "--backend")
        self._collect_all()

    def register(self, plugin: Any, name: str, distribution: str = "(registered in code)") -> None:
        """Register a plugin object directly (useful in tests and notebooks), then re-collect."""
        self.pm.register(plugin, name=name)
        self._distributions[name] = distribution
        self.hardware.entries.clear()
        self.backends.entries.clear()
        self._collect_all()

    def _collect_all(self) -> None:
        self._collect(self.pm.hook.haq_hardware_models, HardwareModel, self.hardware)
        self._collect(self.pm.hook.haq_quant_backends, QuantBackend, self.backends)

    def _report(self, problem: PluginProblem) -> None:
        """Record a problem once (re-collecting after :meth:`register` meets the same broken plugins again)."""
        if problem not in self.problems:
            self.problems.append(problem)

    def _load_entry_points(self) -> None:
        entry_points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        # built-in plugins first, so that an entry-point name clash never displaces them
        entry_points.sort(key=lambda ep: _distribution_label(ep).split(" ")[0] != "haq-plugin")
        for ep in entry_points:
            dist = _distribution_label(ep)
            if self.pm.has_plugin(ep.name):
                other = self._distributions.get(ep.name, "another distribution")
                self.problems.append(PluginProblem(ep.name, dist, f"entry point name '{ep.name}' is already "
                                                   f"used by {other}; this one was not loaded"))
                continue
            stderr = io.StringIO()
            try:
                with contextlib.redirect_stderr(stderr):  # argparse's usage text would look like ours
                    plugin = ep.load()
                self.pm.register(plugin, name=ep.name)
                self.pm.check_pending()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # a broken plugin must not break the others, even by sys.exit()
                if self.pm.has_plugin(ep.name):
                    self.pm.unregister(name=ep.name)
                said = _last_line(stderr.getvalue())
                self._report(PluginProblem(ep.name, dist, f"failed to load ({_describe_failure(exc)})"
                                           + (f"; it printed: {said}" if said else "")))
                continue
            sys.stderr.write(stderr.getvalue())  # a working plugin's own warnings stay visible
            self._distributions[ep.name] = dist

    def _collect(self, hook: Any, base: type, registry: Registry) -> None:
        for impl in hook.get_hookimpls():
            plugin_name = self.pm.get_name(impl.plugin) or repr(impl.plugin)
            dist = self._distributions.get(plugin_name, "(unknown distribution)")
            try:
                returned = impl.function()
                items = list(returned or ())
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                self._report(PluginProblem(plugin_name, dist, f"hook {hook.name} raised {_describe_failure(exc)}"))
                continue
            for item in items:
                problem = _registration_problem(item, base)
                if problem:
                    self._report(PluginProblem(plugin_name, dist, f"hook {hook.name}: {problem}"))
                    continue
                registry.add(Registration(item, plugin_name, dist))

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call an observer hook; an observer that raises is reported, never fatal."""
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            try:
                impl.function(**kwargs)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                name = self.pm.get_name(impl.plugin) or repr(impl.plugin)
                self._report(PluginProblem(name, self._distributions.get(name, "?"),
                                           f"hook {hook_name} raised {_describe_failure(exc)}"))


def _describe_failure(exc: BaseException) -> str:
    """``Type: message``; ``SystemExit`` (sys.exit() or argparse at import time) says so plainly."""
    if isinstance(exc, SystemExit):
        return f"SystemExit: it called sys.exit({exc.code!r}), e.g. by parsing the command line at import time"
    return f"{type(exc).__name__}: {exc}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _distribution_label(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "(unknown distribution)"
    return f"{dist.metadata['Name']} {dist.version}"


def _registration_problem(item: Any, base: type) -> str | None:
    if not isinstance(item, type) or not issubclass(item, base):
        return f"returned {item!r}, which is not a subclass of {base.__name__}"
    name = getattr(item, "name", "")
    if not isinstance(name, str) or not name:
        return f"{item.__name__} has no 'name' attribute"
    return None


_MANAGER: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, built on first use."""
    global _MANAGER
    if _MANAGER is None:
        _MANAGER = PluginManager()
    return _MANAGER


def reset_plugin_manager() -> None:
    """Forget the loaded plugins (after installing a plugin package at run time)."""
    global _MANAGER
    _MANAGER = None
    importlib.invalidate_caches()


def load_hardware(name: str, **options: Any) -> HardwareModel:
    """Create the hardware model registered as ``name`` with ``options`` over its defaults."""
    registration = get_plugin_manager().hardware.get(name)
    return _instantiate(registration, options)


#: Settings of the search itself (``SearchSettings`` fields and the placement): never backend options, since
#: the core sets them on every backend and would silently override a backend option of the same name.
CORE_SETTINGS = ("constraint", "budget", "episodes", "strategy", "min_bits", "max_bits", "keep_first_layer_8bit",
                 "keep_last_layer_8bit", "pins", "finetune_steps", "seed", "ddpg", "float_accuracy", "task",
                 "quantize", "workers", "device", "ray_address", "metric", "decisions", "bits_per_weight")


def check_backend_options(name: str, options: Mapping[str, Any]) -> None:
    """Refuse a backend option named like a core setting, naming the core option to use instead."""
    for key, value in options.items():
        if key in CORE_SETTINGS:
            flag = "--" + key.replace("_", "-")
            raise HaqError(f"backend '{name}': {key}={value!r} is a search setting, not a backend option; use "
                           f"{flag} {value} on the command line ({key}={value!r} in search()) instead of "
                           f"--backend-option {key}=....")


def load_backend(name: str, **options: Any) -> QuantBackend:
    """Create the quantization backend registered as ``name``; an option named like a core setting is refused."""
    registration = get_plugin_manager().backends.get(name)
    check_backend_options(name, options)
    return _instantiate(registration, options)


def _instantiate(registration: Registration[T], options: dict[str, Any]) -> T:
    try:
        return registration.cls(**options)
    except HaqError:
        raise
    except Exception as exc:
        raise PluginError(
            f"plugin '{registration.plugin}' (from {registration.distribution}) failed to create "
            f"'{registration.cls.name}': {type(exc).__name__}: {exc}"  # type: ignore[attr-defined]
        ) from exc


def plugin_provenance(registry: Registry[Any], name: str, cls: type | None = None) -> dict[str, str | None]:
    """Which distribution and version provide ``name`` in ``registry``, for a policy's provenance.

    ``cls`` (the class of the instance actually used) guards against an object
    built outside the registry under a registered name: then, as for a name that
    is not registered at all, distribution and version are ``None``.
    """
    found = registry.entries.get(name) or []
    if len(found) != 1 or (cls is not None and found[0].cls is not cls):
        return {"name": name, "distribution": None, "version": None}
    label = found[0].distribution
    if label.startswith("("):  # "(registered in code)", "(unknown distribution)"
        return {"name": name, "distribution": None, "version": None}
    distribution, _, version = label.rpartition(" ")
    return {"name": name, "distribution": distribution or version, "version": version if distribution else None}


def plugin_sources(hardware: Any, backend: Any) -> dict[str, dict[str, str | None]]:
    """:func:`plugin_provenance` of the hardware model and the backend instances a search used."""
    manager = get_plugin_manager()
    return {"hardware": plugin_provenance(manager.hardware, hardware.name, type(hardware)),
            "backend": plugin_provenance(manager.backends, backend.name, type(backend))}
