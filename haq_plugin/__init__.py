"""haq-plugin: hardware-aware automated mixed-precision quantization.

Public API (stable names; see README.md and docs/plugins.md):

* plugin authors: :data:`hookimpl`, :class:`HardwareModel`, :class:`LayerCost`,
  :class:`QuantBackend` (capabilities: :class:`BackendCapabilities`, modes
  :data:`WEIGHTS_AND_ACTIVATIONS`, :data:`WEIGHTS_ONLY`, :class:`QuantizeMode`), :class:`Option`, :class:`LayerSpec`, :class:`HaqError`;
* users: :func:`load_hardware`, :func:`load_backend`, :func:`extract_layers`,
  :class:`Policy`, :func:`search`, :func:`sweep`, :func:`sensitivity`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from haq_plugin.api.backend import QuantBackend
from haq_plugin.api.capabilities import BackendCapabilities
from haq_plugin.api.quantize_mode import QUANTIZE_MODES, WEIGHTS_AND_ACTIVATIONS, WEIGHTS_ONLY, QuantizeMode
from haq_plugin.engine.backend_faults import BackendFault
from haq_plugin.api.errors import HaqError, PluginError
from haq_plugin.api.hardware import HardwareModel, LayerCost
from haq_plugin.api.hookspecs import hookimpl
from haq_plugin.api.layers import LayerSpec, extract_layers
from haq_plugin.api.options import Option
from haq_plugin.api.plugins import get_plugin_manager, load_backend, load_hardware
from haq_plugin.api.policy import Policy
from haq_plugin.engine.results import SearchInterrupted, SearchResult
from haq_plugin.engine.settings import SearchSettings
from haq_plugin.engine.search import search
from haq_plugin.engine.agent import DDPGConfig
from haq_plugin.analyses.sensitivity import SensitivityResult, sensitivity
from haq_plugin.analyses.sweep import SweepResult, sweep

try:
    __version__ = version("haq-plugin")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = [
    "BackendCapabilities", "BackendFault", "QUANTIZE_MODES", "QuantizeMode", "WEIGHTS_AND_ACTIVATIONS", "WEIGHTS_ONLY",
    "DDPGConfig", "HaqError", "HardwareModel", "LayerCost", "LayerSpec", "Option", "PluginError", "Policy",
    "QuantBackend", "SearchInterrupted", "SearchResult", "SearchSettings", "SensitivityResult", "SweepResult",
    "search", "sensitivity", "sweep",
    "__version__", "extract_layers", "get_plugin_manager", "hookimpl", "load_backend", "load_hardware",
]
