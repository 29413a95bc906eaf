"""A search's settings fitted to what its backend declares, before any expensive work.

The capabilities are declared on the backend class
(:mod:`haq_plugin.api.capabilities`); this is the one place where the core reads
them for a search.  A defaulted setting the backend cannot honour falls back with
one warning line; a chosen one is refused, naming the option to change.
"""

from __future__ import annotations

import logging

from haq_plugin.api.backend import QuantBackend
from haq_plugin.api.errors import HaqError
from haq_plugin.api.plugins import CORE_SETTINGS
from haq_plugin.api.quantize_mode import resolve_quantize
from haq_plugin.engine.settings import SearchSettings

LOG = logging.getLogger("haq_plugin")


def fit_settings(settings: SearchSettings, backend: QuantBackend) -> SearchSettings:
    """``settings`` with the quantization mode the backend declares; refuses finetuning or workers it lacks."""
    name = backend.name
    if settings.finetune_steps and not getattr(backend, "supports_finetune", True):
        raise HaqError(f"backend '{name}' does not support finetuning (supports_finetune is False); run with "
                       "--finetune-steps 0 or choose a backend that finetunes (torchao, torch.ao, brevitas).")
    if settings.workers > 1 and not getattr(backend, "supports_workers", True):
        raise HaqError(f"backend '{name}' cannot run on worker processes (supports_workers is False); run with "
                       "--workers 1.")
    for option in getattr(backend, "options", ()):
        value = backend.config.get(option.name, option.default)
        if option.name in CORE_SETTINGS and hasattr(settings, option.name) and value not in (
                option.default, getattr(settings, option.name)):
            raise HaqError(f"backend '{name}' was created with {option.name}={value!r}, a search setting the core "
                           f"sets itself; use --{option.name.replace('_', '-')} {value} ({option.name}={value!r} "
                           "in search()) and create the backend without it.")
    mode = resolve_quantize(backend, str(settings.quantize), settings.quantize_given)
    return settings if mode == settings.quantize else settings.replace(quantize=mode)


def fit_device(device: str, backend: QuantBackend) -> str:
    """``device``, or ``cpu`` for a backend that stays on the CPU (``auto``: one warning; a chosen GPU: refused)."""
    if getattr(backend, "supports_device", True) or str(device).strip().lower() == "cpu":
        return device
    if str(device).strip().lower() == "auto":
        LOG.warning("note: backend '%s' runs on the CPU only (supports_device is False); searching with "
                    "--device cpu.", backend.name)
        return "cpu"
    raise HaqError(f"backend '{backend.name}' runs on the CPU only (supports_device is False); use --device cpu "
                   "(or --device auto).")
