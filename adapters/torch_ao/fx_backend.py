"""The torch.ao ``BackendConfig`` of the ``torch.ao`` backend: clamping activations get their own observer.

torch's native backend config lets ReLU, ReLU6, Hardtanh and ``clamp`` *share*
their input's observer (``OUTPUT_SHARE_OBSERVER_WITH_INPUT``), as pooling does.
That is exact for pooling, but not for a clamp: after an unfused ``Conv-BN ->
ReLU6`` the one observer spans the pre-activation range, negatives included,
so the a-bit grid of the next layer's input wastes about a bit on values the
layer never reads.  Here these ops use a *different* observer
(``OUTPUT_USE_DIFFERENT_OBSERVER_AS_INPUT``): their output, which is the
tensor the next layer really reads, is observed on its own, and its QConfig is
the op's own module-name (or call) entry, so the plan of
:mod:`haq_plugin.adapters.torch_ao.plan` gives it the next layer's bits.
Conv-BN-ReLU fusion is unchanged: a fused ReLU is observed after the ReLU.

A second addition is weight-only quantization: every pattern with a ``qint8``
weight (Conv, Linear, fused or not) also accepts float activations with a
``qint8`` weight (:data:`WEIGHT_ONLY_DTYPE_CONFIG`), so a QConfig whose activation is a float ``PlaceholderObserver`` fake-quantizes
the weights and leaves activations in floating point.

Apply an exported mapping with the same config::

    prepare_qat_fx(model.train(), mapping, (x,), backend_config=backend_config())
    convert_fx(qat_model.eval(), backend_config=backend_config())
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from torch.ao.quantization.backend_config import (
    BackendConfig, BackendPatternConfig, DTypeConfig, ObservationType, get_native_backend_config)

CLAMPING_OPS: tuple[Any, ...] = (
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.functional.relu, nn.functional.relu6, nn.functional.hardtanh,
    nn.functional.hardtanh_, torch.relu, torch.clamp, "clamp", "relu", "relu_",
)
WEIGHT_ONLY_DTYPE_CONFIG = DTypeConfig(input_dtype=torch.float, output_dtype=torch.float,
                                       weight_dtype=torch.qint8, bias_dtype=torch.float)


def _own_observer(config: BackendPatternConfig) -> BackendPatternConfig:
    return (BackendPatternConfig(config.pattern)
            .set_observation_type(ObservationType.OUTPUT_USE_DIFFERENT_OBSERVER_AS_INPUT)
            .set_dtype_configs(config.dtype_configs))


def _with_weight_only(config: BackendPatternConfig) -> BackendPatternConfig:
    config.add_dtype_config(WEIGHT_ONLY_DTYPE_CONFIG)
    return config


@functools.lru_cache(maxsize=1)
def _build() -> BackendConfig:
    native = get_native_backend_config()
    result = BackendConfig("haq-plugin")
    for config in native.configs:
        if config.pattern in CLAMPING_OPS:
            config = _own_observer(config)
        elif any(dtype.weight_dtype == torch.qint8 for dtype in config.dtype_configs):
            config = _with_weight_only(config)
        result.set_backend_pattern_config(config)
    return result


def backend_config() -> BackendConfig:
    """torch's native config, with clamping ops observed on their own and weight-only weighted ops."""
    return _build()

