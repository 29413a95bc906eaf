"""What a backend quantizes: weights and activations (HAQ's default), or weights only.

Weight-only quantization keeps every activation in floating point while the
weights follow the policy; it is what a model-size budget pays for, since
activation bits cost nothing there.  A backend declares the modes it implements (``quantize_modes``, see
:mod:`haq_plugin.api.capabilities`); the core sets ``backend.quantize``
before ``prepare``.  The built-in backends read the mode at
``prepare`` and honour it in their export: a weight-only QConfig per layer
for torch.ao, no input quantizer for Brevitas.  The policy's activation bits
are then kept in the bit map but not applied.
"""

from __future__ import annotations

import logging
from typing import Any

from haq_plugin.api.errors import HaqError

WEIGHTS_AND_ACTIVATIONS = "weights+activations"
WEIGHTS_ONLY = "weights"
QUANTIZE_MODES = (WEIGHTS_AND_ACTIVATIONS, WEIGHTS_ONLY)
LOG = logging.getLogger("haq_plugin")


def check_quantize(mode: object, where: str) -> str:
    """``mode`` if it is one of :data:`QUANTIZE_MODES`, else a :class:`HaqError` saying which are."""
    if mode not in QUANTIZE_MODES:
        raise HaqError(f"{where}: quantize={mode!r} is not a quantization mode; use "
                       f"'{WEIGHTS_AND_ACTIVATIONS}' (weights and layer inputs follow the policy) or "
                       f"'{WEIGHTS_ONLY}' (activations stay float, only the weight bits apply).")
    return str(mode)


class QuantizeMode:
    """Mixin of a backend that implements both modes (``quantize_modes``) and keeps the ``quantize`` attribute."""

    quantize_modes: tuple[str, ...] = QUANTIZE_MODES
    _quantize: str = WEIGHTS_AND_ACTIVATIONS

    @property
    def quantize(self) -> str:
        """``weights+activations`` (the default) or ``weights``; read by ``prepare`` and ``export``."""
        return self._quantize

    @quantize.setter
    def quantize(self, mode: str) -> None:
        self._quantize = check_quantize(mode, f"backend '{getattr(self, 'name', '?')}'")

    @property
    def weights_only(self) -> bool:
        return self._quantize == WEIGHTS_ONLY



def declared_modes(backend: Any) -> tuple[str, ...]:
    """The modes ``backend`` declares (``quantize_modes``); an undeclared ``quantize`` attribute means both."""
    modes = getattr(backend, "quantize_modes", None)
    if modes is None:
        return QUANTIZE_MODES if hasattr(backend, "quantize") else (WEIGHTS_AND_ACTIVATIONS,)
    return tuple(modes)


def mode_refusal(backend: Any, mode: str) -> str:
    """The one-line refusal of a quantization mode ``backend`` does not declare, naming the option to use."""
    modes = declared_modes(backend)
    use = " or ".join(f"--quantize {m}" for m in modes)
    return (f"backend '{getattr(backend, 'name', '?')}' does not support quantize={mode!r} (its quantize_modes "
            f"are {', '.join(modes)}); use {use}, or another backend.")


def resolve_quantize(backend: Any, mode: str, explicit: bool) -> str:
    """The mode a search with ``backend`` runs in: ``mode`` if declared, else the backend's own (one warning).

    ``explicit`` is whether the user chose ``mode`` (``--quantize``): a chosen mode the
    backend lacks is refused; a defaulted one (``weights`` under ``--constraint size``,
    ``weights+activations`` otherwise) falls back to the backend's first declared mode.
    """
    modes = declared_modes(backend)
    if mode in modes:
        return mode
    if explicit:
        raise HaqError(mode_refusal(backend, mode))
    LOG.warning("note: backend '%s' has no quantize=%r mode; searching with --quantize %s instead (give "
                "--quantize to choose).", getattr(backend, "name", "?"), mode, modes[0])
    return modes[0]


def use_quantize_mode(backend: Any, mode: str) -> None:
    """Tell ``backend`` what to quantize, by setting ``backend.quantize``; an undeclared mode is refused."""
    mode = check_quantize(mode, f"backend '{getattr(backend, 'name', '?')}'")
    if mode not in declared_modes(backend):
        raise HaqError(mode_refusal(backend, mode))
    if hasattr(backend, "quantize"):
        backend.quantize = mode
