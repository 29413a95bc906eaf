"""What a backend can do, declared on the class, and what the core does when it cannot.

A backend states its capabilities as class attributes and two methods, so that the
core never has to guess from which attributes happen to exist (every name here has a
default that is right for a plain fake-quantizing backend):

===========================  ==================================  ==============================================
capability                   default                             without it, the core ...
===========================  ==================================  ==============================================
``quantize_modes``           ``("weights+activations",)``        searches in a declared mode: under
                                                                 ``--constraint size`` (default ``weights``) a
                                                                 weights+activations-only backend searches
                                                                 weights+activations, with one warning line; a
                                                                 weights-only backend under latency searches
                                                                 weights; an explicit ``--quantize`` the backend
                                                                 lacks is refused
``supports_finetune``        True when ``_finetune`` is written  refuses ``--finetune-steps N > 0`` before the
                                                                 search starts
``supports_workers``         True                                refuses ``--workers N > 1``
``supports_device``          True                                refuses a ``--device`` other than cpu (``auto``
                                                                 runs on cpu, with one warning line)
``weight_storage_bits()``    ``layer.params * bits``             (the default is the size constraint's cost)
``effective_act_bits()``     ``None`` (inputs as the policy)     shows the policy's input bits in the report
``effective_bits()``         weights as asked, inputs from       takes every width ``sensitivity`` asks for as
                             ``effective_act_bits()``            measured
===========================  ==================================  ==============================================

The core tells a backend its mode once, before ``prepare``, by setting the
:attr:`BackendCapabilities.quantize` attribute; ``prepare`` and ``export`` read it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

from haq_plugin.api.errors import HaqError
from haq_plugin.api.layers import LayerSpec
from haq_plugin.api.quantize_mode import WEIGHTS_AND_ACTIVATIONS, WEIGHTS_ONLY, check_quantize, mode_refusal


class BackendCapabilities:
    """The declared capabilities of a backend (a base of :class:`~haq_plugin.api.backend.QuantBackend`)."""

    name: ClassVar[str] = ""
    #: The modes this backend implements, in order of preference; the core only ever sets one of these.
    quantize_modes: ClassVar[tuple[str, ...]] = (WEIGHTS_AND_ACTIVATIONS,)
    #: Quantization-aware finetuning (``--finetune-steps``); derived from ``_finetune`` unless declared.
    supports_finetune: ClassVar[bool] = False
    #: Whether instances may be rebuilt from ``(class, options)`` on Ray actors (``--workers N``).
    supports_workers: ClassVar[bool] = True
    #: Whether the prepared model may be moved to an accelerator (``--device cuda``).
    supports_device: ClassVar[bool] = True
    _quantize: str = WEIGHTS_AND_ACTIVATIONS

    @property
    def quantize(self) -> str:
        """What is quantized: ``weights+activations`` or ``weights``; set by the core before ``prepare``.

        A backend that supports one mode only may override this property with a
        setter that refuses the other (raise :class:`HaqError`); the core reads
        :attr:`quantize_modes` first and never sets a mode the backend did not declare.
        """
        mode = self._quantize
        return mode if mode in self.quantize_modes else self.quantize_modes[0]

    @quantize.setter
    def quantize(self, mode: str) -> None:
        mode = check_quantize(mode, f"backend '{self.name}'")
        if mode not in self.quantize_modes:
            raise HaqError(mode_refusal(self, mode))
        self._quantize = mode

    @property
    def weights_only(self) -> bool:
        """True when activations stay in floating point (``quantize == 'weights'``)."""
        return self.quantize == WEIGHTS_ONLY

    def weight_storage_bits(self, layer: LayerSpec, bits: int) -> float:
        """Bits that store ``layer``'s weights at ``bits`` per weight: the size constraint's cost (/8 for bytes).

        Override to count what the format adds (per-group scales, for example), so that
        a size budget pays for the real storage.
        """
        return float(layer.params * bits)

    def effective_act_bits(self, bits: Mapping[str, tuple[int, int]] | None = None) -> dict[str, int] | None:
        """Layer name -> the input bits the quantized model really uses, or None when they are the policy's.

        A framework whose observers are shared between layers (one observer feeding a
        residual add, for example) overrides this so that the report shows the widths
        that are applied.
        """
        return None

    def effective_bits(self, bits: Mapping[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
        """Layer name -> the (weight, input) bits the quantized model really applies under ``bits``.

        ``haq-plugin sensitivity`` lowers one layer at a time and compares this with
        what it asked for: an entry the backend ran at other bits (an input observer
        shared with a layer kept at 8, say) is marked as not measured instead of being
        shown as "no drop".  The default takes the weights as asked and the inputs from
        :meth:`effective_act_bits`; override it where weight widths, too, can differ.
        """
        inputs = self.effective_act_bits(bits) or {}
        return {name: (weight, inputs.get(name, act)) for name, (weight, act) in bits.items()}
