"""Declared, typed options for plugins (hardware models and backends).

A plugin lists its options as :class:`Option` records.  Values arrive either from
Python (already typed) or from the command line as strings (``--hw-option
KEY=VALUE``); :func:`resolve_options` converts, validates and fills defaults, and
names the plugin in every error so that the user knows whose option was wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from haq_plugin.api.errors import HaqError

_BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True,
               "0": False, "false": False, "no": False, "off": False}


@dataclass(frozen=True)
class Option:
    """One configurable value of a plugin.

    ``type`` is ``int``, ``float``, ``bool`` or ``str``.  ``choices`` restricts the
    converted value to a list (of any type), ``minimum`` bounds numbers from below,
    and ``check`` optionally validates a converted value and returns an error text
    (or None when valid; :func:`positive` is one).  ``source`` cites where the
    default comes from, shown by ``haq-plugin hw list``.

    A ``None`` default means "derived by the plugin" (for example from other
    options): such an option also accepts ``None`` (and, from the command line, the
    word ``none``) to ask for the derived value again, which is what a saved
    configuration holds.  Float options must be finite unless ``finite=False``.
    """

    name: str
    type: type
    default: Any
    help: str = ""
    choices: Sequence[Any] | None = None
    minimum: float | None = None
    source: str = ""
    check: Callable[[Any], str | None] | None = None
    finite: bool = True

    def convert(self, value: Any, owner: str) -> Any:
        """Convert ``value`` (possibly a CLI string) to this option's type, or raise."""
        if self.default is None and _means_none(value, self.type):
            return None
        try:
            converted = self._coerce(value)
        except (TypeError, ValueError):
            raise HaqError(
                f"{owner}: option '{self.name}' expects {self.type.__name__}, got {value!r}."
            ) from None
        if self.type is float and self.finite and not math.isfinite(converted):
            raise HaqError(f"{owner}: option '{self.name}' must be a finite number; got {converted!r}.")
        if self.choices is not None and converted not in self.choices:
            allowed = ", ".join("'' (empty)" if c == "" else str(c) for c in self.choices)
            raise HaqError(f"{owner}: option '{self.name}' must be one of {allowed}; got {converted!r}.")
        if self.minimum is not None and converted < self.minimum:
            raise HaqError(f"{owner}: option '{self.name}' must be >= {self.minimum}; got {converted!r}.")
        if self.check is not None:
            problem = self.check(converted)
            if problem:
                raise HaqError(f"{owner}: option '{self.name}': {problem}")
        return converted

    def _coerce(self, value: Any) -> Any:
        if self.type is bool:
            if isinstance(value, bool):
                return value
            word = str(value).strip().lower()
            if word not in _BOOL_WORDS:
                raise ValueError(value)
            return _BOOL_WORDS[word]
        if self.type is int:
            if isinstance(value, bool):
                raise TypeError(value)
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError(value)
                return int(value)
            return int(str(value).strip(), 0) if isinstance(value, str) else int(value)
        if self.type is float:
            if isinstance(value, bool):
                raise TypeError(value)
            return float(value)
        return self.type(value)


def positive(value: float) -> str | None:
    """A ``check`` for options that must be greater than zero."""
    return None if value > 0 else f"must be greater than 0, got {value}"


def _means_none(value: Any, kind: type) -> bool:
    """``None``, or the word ``none`` given for a non-string option."""
    return value is None or (kind is not str and isinstance(value, str) and value.strip().lower() == "none")


def resolve_options(owner: str, declared: Iterable[Option], given: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``given`` over the declared defaults, converting and validating each value."""
    by_name = {opt.name: opt for opt in declared}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        allowed = ", ".join(sorted(by_name)) or "(none)"
        raise HaqError(f"{owner}: unknown option(s) {', '.join(unknown)}. Allowed options: {allowed}.")
    resolved = {name: opt.default for name, opt in by_name.items()}
    for name, value in given.items():
        resolved[name] = by_name[name].convert(value, owner)
    return resolved


def parse_key_values(pairs: Iterable[str], flag: str) -> dict[str, str]:
    """Parse ``KEY=VALUE`` strings from the command line (values stay strings)."""
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise HaqError(f"{flag} expects KEY=VALUE, got {pair!r}.")
        parsed[key.strip()] = value.strip()
    return parsed
