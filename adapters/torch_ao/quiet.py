"""Silence the deprecation notices torch.ao prints on every call, at our call sites only.

PyTorch marks ``torch.ao.quantization`` as deprecated: ``prepare_qat_fx``,
``convert_fx`` and the eager helpers warn on each call, and the quantized
tensor constructors warn too.  A search calls these once per backend, but a
user running many searches (or our tests) would see the same paragraph again
and again, burying the messages that matter.  :func:`quiet_torch_ao` wraps our
own calls and hides exactly these known notices; other warnings pass through,
and the user's process-wide filters are left as they were.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

# (message regex, category): the notices torch.ao emits for calls this adapter makes.
KNOWN_TORCH_AO_DEPRECATIONS: tuple[tuple[str, type[Warning]], ...] = (
    (r"torch\.ao\.quantization is deprecated", DeprecationWarning),
    (r"torch\.ao\.quantization is deprecated", FutureWarning),
    (r"Please use quant_min and quant_max to specify the range for observers", UserWarning),
    (r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor creation",
     UserWarning),
)


@contextlib.contextmanager
def quiet_torch_ao() -> Iterator[None]:
    """Hide torch.ao's known deprecation notices inside the ``with`` block only."""
    with warnings.catch_warnings():
        for message, category in KNOWN_TORCH_AO_DEPRECATIONS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield
