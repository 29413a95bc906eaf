"""What a backend quantizes: weights and activations (HAQ's default), or weights only.

Weight-only quantization keeps every activation in floating point while the
weights follow the policy; it is what a model-size budget pays for, since
activation bits cost nothing there.  Both built-in backends read the mode at
``prepare`` and honour it in their export: a weight-only QConfig per layer
for torch.ao, no input quantizer for Brevitas.  The policy's activation bits
are then kept in the bit map but not applied.
"""

from __future__ import annotations

from typing import Any

from haq_plugin.api.errors import HaqError

WEIGHTS_AND_ACTIVATIONS = "weights+activations"
WEIGHTS_ONLY = "weights"
QUANTIZE_MODES = (WEIGHTS_AND_ACTIVATIONS, WEIGHTS_ONLY)


def check_quantize(mode: object, where: str) -> str:
    """``mode`` if it is one of :data:`QUANTIZE_MODES`, else a :class:`HaqError` saying which are."""
    if mode not in QUANTIZE_MODES:
        raise HaqError(f"{where}: quantize={mode!r} is not a quantization mode; use "
                       f"'{WEIGHTS_AND_ACTIVATIONS}' (weights and layer inputs follow the policy) or "
                       f"'{WEIGHTS_ONLY}' (activations stay float, only the weight bits apply).")
    return str(mode)


class QuantizeMode:
    """Mixin of a backend: the ``quantize`` attribute, set before :meth:`prepare`."""

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


def use_quantize_mode(backend: Any, mode: str) -> None:
    """Tell ``backend`` what to quantize; a backend without weight-only support refuses ``weights``."""
    if hasattr(backend, "quantize"):
        backend.quantize = mode
    elif mode != WEIGHTS_AND_ACTIVATIONS:
        raise HaqError(f"backend '{backend.name}' has no weight-only mode (quantize={mode!r}); use "
                       "quantize='weights+activations' (--quantize weights+activations) or a built-in backend.")
