"""Bit widths and per-layer bit maps: the one place where they are checked.

Every part of the project that accepts bit widths (policies, backends, hardware
models, cost tables, the CLI) checks them here, so a mistake gets the same
message wherever it is made:

* :data:`MIN_BITS` / :data:`MAX_BITS`: the widest range any component accepts;
* :func:`check_width`: one width, optionally against what a component supports;
* :func:`check_bit_map`: a ``{layer name: (weight_bits, activation_bits)}``
  mapping against the layers of a model and the supported widths;
* :func:`parse_bits`: the ``W/A`` text of command-line options.
"""

from __future__ import annotations

import numbers
from typing import Any, Iterable, Mapping, Sequence

from haq_plugin.api.errors import HaqError

MIN_BITS, MAX_BITS = 1, 16
BitPair = tuple[int, int]


def is_integer(value: Any) -> bool:
    """True for ints and NumPy integers, False for bools (``True`` is not a bit width)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_width(value: Any, what: str, supported: Iterable[int] | None = None, who: str = "") -> int:
    """``value`` as an int, if it is an integer bit width (and in ``supported`` when given).

    ``what`` names the value in the message (``"weight bits of layer 'fc'"``);
    ``who`` names the component whose ``supported`` widths apply.
    """
    if not is_integer(value) or not MIN_BITS <= int(value) <= MAX_BITS:
        raise HaqError(f"{what}: {value!r} is not a bit width; use an integer from {MIN_BITS} to {MAX_BITS}.")
    if supported is not None:
        allowed = tuple(sorted(set(int(b) for b in supported)))
        if int(value) not in allowed:
            by = f" {who}" if who else ""
            raise HaqError(f"{what}: {int(value)} bits are not supported{by}; supported bit widths: "
                           f"{', '.join(map(str, allowed))}.")
    return int(value)


def check_pair(pair: Any, what: str, supported: Iterable[int] | None = None, who: str = "") -> BitPair:
    """A ``(weight_bits, activation_bits)`` pair, checked with :func:`check_width`."""
    if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
        raise HaqError(f"{what}: expected a (weight_bits, activation_bits) pair, got {pair!r}.")
    allowed = None if supported is None else tuple(supported)
    return (check_width(pair[0], f"weight bits of {what}", allowed, who),
            check_width(pair[1], f"activation bits of {what}", allowed, who))


def layer_differences(missing: Sequence[str], unknown: Sequence[str], changed: Sequence[str] = ()) -> str:
    """The one wording of two layer lists that should agree, e.g. a policy's and a model's.

    ``missing``: layers of the model the policy (or bit map) lacks; ``unknown``:
    layers it names that the model lacks; ``changed``: layers in both with
    another shape, already described.  Every loader and check says it this way,
    so a user reads the same words whichever entry point refused the file.
    """
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} layer(s): {_some(missing)}")
    if unknown:
        parts.append(f"unknown {len(unknown)} layer(s): {_some(unknown)}")
    if changed:
        parts.append(f"another shape in {len(changed)} layer(s): {', '.join(changed)}")
    return "; ".join(parts)


def difference_message(prefix: str, missing: Sequence[str], extra: Sequence[str]) -> str:
    """``prefix`` followed by the layers a mapping lacks and the ones it has too many."""
    return f"{prefix} ({layer_differences(missing, extra)})."


def check_bit_map(bits: Mapping[str, Any], names: Sequence[str], supported: Iterable[int] | None = None,
                  who: str = "") -> dict[str, BitPair]:
    """``bits`` checked against the layer ``names`` (all of them, no others) and ``supported`` widths.

    Returns a new dict in the order of ``names``.
    """
    if not isinstance(bits, Mapping):
        raise HaqError(f"Bits{' for ' + who.removeprefix('by ') if who else ''} must map layer names to (weight, activation) "
                       f"pairs, got {type(bits).__name__}.")
    missing = [name for name in names if name not in bits]
    extra = [name for name in bits if name not in set(names)]
    if missing or extra:
        raise HaqError(difference_message(f"The bits{' for ' + who.removeprefix('by ') if who else ''} do not match the model's "
                                          "quantizable layers", missing, extra))
    allowed = None if supported is None else tuple(supported)
    return {name: check_pair(bits[name], f"layer '{name}'", allowed, who) for name in names}


def parse_bits(text: str, flag: str = "--bits") -> BitPair:
    """``"4/8"`` -> (4, 8); ``"4"`` -> (4, 4); anything else is a clear error naming ``flag``."""
    w, sep, a = str(text).strip().partition("/")
    try:
        pair = (int(w), int(a) if sep else int(w))
    except ValueError:
        raise HaqError(f"{flag} {text!r}: write weight/activation bits like 4/8 (or 4 for both).") from None
    if not all(MIN_BITS <= b <= MAX_BITS for b in pair):
        raise HaqError(f"{flag} {text!r}: bit widths must be from {MIN_BITS} to {MAX_BITS}.")
    return pair


def _some(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
