"""The ``torchao`` backend: HAQ policies on PyTorch's maintained PT2E quantization stack.

The model is captured once with ``torch.export.export`` (batch dimension
dynamic) and prepared once with torchao's ``prepare_qat_pt2e`` and a
:class:`~haq_plugin.adapters.torchao.quantizer.LayerBitsQuantizer` at 8
bits: every conv/linear node gets a per-channel symmetric weight fake
quantizer and a per-tensor affine fake quantizer on its input, which is
exactly HAQ's "activation bits of the layer's input".  One exception: PT2E
gives a tensor that several layers read (both branches of a residual block)
one input fake quantizer, and ``set_policy`` writes the layers in order, so
that quantizer takes the bits of the last of them;
:meth:`TorchaoPt2eBackend.effective_act_bits` reports what each input really
gets.  Layers are matched by module name through the exported graph's
``nn_module_stack``.

Search loop costs: ``set_policy`` rewrites ``quant_min``/``quant_max`` of
the existing fake quantizers in place and forgets their statistics;
``calibrate`` observes the calibration batches and freezes the ranges;
``finetune`` trains a few steps (Adam, cross-entropy by default) and the next
``set_policy`` restores the prepared weights.  Option ``quantize=weights``
leaves every input in floating point (weight-only policies; activation bits
of the bit map are then ignored).

Export file (``torchao_quantizer.json``, ``schema_version`` 1)::

    {
      "format": "haq-plugin torchao PT2E quantizer",
      "schema_version": 1,
      "quantize": "weights+activations" | "weights",
      "weight_range": "mse" | "minmax",                   # absent in older files: minmax
      "layers": [{"name": "features.0.0", "shape": "conv:...",
                  "weight_bits": 4, "activation_bits": 3,        # null when quantize is "weights"
                  "weight": {"dtype": "int8", "quant_min": -8, "quant_max": 7,
                             "qscheme": "per_channel_symmetric", "ch_axis": 0},
                  "activation": {"dtype": "uint8", "quant_min": 0, "quant_max": 7,
                                 "qscheme": "per_tensor_affine", "ch_axis": null} | null}, ...]
    }

``weight``/``activation`` spell out the torchao ``QuantizationSpec`` each
layer gets; the loader reads the bits and rebuilds the specs from them, with
the weight observer of ``weight_range`` (option ``weight_range``: each
channel's min-max, or MSE-clipped at 4 bits or fewer).

Apply an exported policy in your own training script (quantization-aware)::

    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e, convert_pt2e
    from haq_plugin.adapters.torchao import load_quantizer

    quantizer = load_quantizer("haq-output/torchao_quantizer.json", model=model, example_input=example_input)
    qat = prepare_qat_pt2e(torch.export.export(model, (example_input,)).module(), quantizer)
    ...train qat as usual...
    int_model = convert_pt2e(qat)

(``prepare_pt2e`` with ``load_quantizer(path, for_training=False)`` and a
few calibration batches works for post-training quantization; export with
``dynamic_shapes`` when batches vary in size.)  Weight-only policies also
apply with ``quantize_(model, load_quantize_config(path), filter_fn=None)``.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
import types
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import torch
from torch import fx, nn

from haq_plugin.api.backend import BitMap, QuantBackend, batch_inputs
from haq_plugin.api.inputs import call_model, input_kind
from haq_plugin.api.errors import HaqError, one_line
from haq_plugin.api.hookspecs import hookimpl
from haq_plugin.api.layers import LayerSpec, extract_layers
from haq_plugin.api.options import Option
from haq_plugin.api.policy import Policy, check_layer_shapes

from haq_plugin.adapters.torchao.quantizer_file import (
    SUPPORTED_BITS, QuantizerFile, export_document, read_quantizer_file, write_document)
from haq_plugin.api.quantize_mode import QUANTIZE_MODES, WEIGHTS_AND_ACTIVATIONS, QuantizeMode
from haq_plugin.adapters.common.integer_ranges import act_range, set_fake_quant_range, weight_range
from haq_plugin.adapters.torchao.quiet import quiet_export
from haq_plugin.adapters.common.weight_ranges import DEFAULT_WEIGHT_RANGE, WEIGHT_RANGE_HELP, WEIGHT_RANGES

if TYPE_CHECKING:
    from torchao.quantization import FqnToConfig

    from haq_plugin.adapters.torchao.quantizer import LayerBitsQuantizer, LayerFakeQuants

__all__ = ["TorchaoPt2eBackend", "TorchaoBackend", "load_quantizer", "load_quantize_config", "export_for_quantization"]

log = logging.getLogger(__name__)

BITS_HELP = ("The torchao backend quantizes with 2 to 8 bits: weights are held in torch.int8 and inputs in "
             "torch.uint8, and 1 bit has no symmetric signed weight range.")


def pt2e() -> types.ModuleType:
    """torchao's PT2E API and this backend's quantizer, imported on first use.

    Importing torchao takes seconds; deferring it keeps every command that does
    not quantize with torchao (``hw list``, a search on another backend) fast.
    """
    from haq_plugin.adapters.torchao import quantizer as _torchao_quantizer

    return _torchao_quantizer


def load_quantizer(path: str | Path, for_training: bool = True, *, model: nn.Module | None = None,
                   example_input: Any = None) -> LayerBitsQuantizer:
    """The torchao ``Quantizer`` of an exported ``torchao_quantizer.json``.

    Use it with ``prepare_qat_pt2e`` (fake quantizers, the default) or, with
    ``for_training=False``, with ``prepare_pt2e`` (observers).  Pass ``model``
    and ``example_input`` to have the file's layer shapes checked now: a
    policy of another version of the model (same names, other shapes) is
    otherwise applied without a word.  Preparing a model whose conv/linear
    module names differ from the file's raises :class:`HaqError` naming the
    missing and unknown layers.
    """
    contents = read_quantizer_file(path)
    check_model_layers(contents, model, example_input)
    return pt2e().LayerBitsQuantizer(contents.bits, for_training=for_training, weight_range=contents.weight_range)


def load_quantize_config(path: str | Path, *, model: nn.Module | None = None,
                         example_input: Any = None) -> FqnToConfig:
    """An ``FqnToConfig`` with ``IntxWeightOnlyConfig(torch.int{w}, PerAxis(0))`` per layer of the file.

    Apply it with ``quantize_(model, config, filter_fn=None)``.  This recipe
    quantizes weights only, so any activation bits of the file are not used.
    torchao 0.18's ``IntxWeightOnlyConfig`` takes 2-d weights and 1x1
    convolutions (one scale per output channel); it cannot quantize a conv
    with a larger kernel per output channel, so those layers map to ``None``
    (left in floating point, listed in a warning): use :func:`load_quantizer`
    to quantize every layer.  With ``model`` and ``example_input`` the file's
    layers and shapes are checked against the model first, as in
    :func:`load_quantizer`.
    """
    contents = read_quantizer_file(path)
    check_model_layers(contents, model, example_input)
    ao = pt2e()
    configs: dict[str, Any] = {}
    for name, (weight_bits, _) in contents.bits.items():
        takes = intx_weight_only_takes(contents.shapes[name])
        configs[name] = ao.IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{weight_bits}"),
                                                granularity=ao.PerAxis(0)) if takes else None
    if contents.weight_range != "minmax":
        log.warning("torchao: IntxWeightOnlyConfig takes each channel's min-max range, while this policy was measured "
                    "with weight_range=%s; load_quantizer(path) reproduces the measured ranges.", contents.weight_range)
    skipped = [name for name, config in configs.items() if config is None]
    if skipped:
        log.warning("torchao: IntxWeightOnlyConfig cannot quantize convolutions with kernels larger than 1x1 per "
                    "output channel; %d layer(s) stay in floating point: %s. load_quantizer(path) quantizes them.",
                    len(skipped), ", ".join(skipped))
    return ao.FqnToConfig(fqn_to_config=configs)


def check_model_layers(contents: QuantizerFile, model: nn.Module | None, example_input: Any) -> None:
    """Refuse a file whose layers or shapes are not ``model``'s; nothing to check without a model."""
    if model is None:
        return
    if example_input is None:
        raise HaqError("torchao loader: model given without example_input; pass both (an input batch the model "
                       "takes) so that the file's layer shapes can be checked.")
    check_layer_shapes(contents.shapes, extract_layers(model, example_input))


def intx_weight_only_takes(shape_key: str) -> bool:
    """Whether torchao's per-output-channel ``IntxWeightOnlyConfig`` can quantize a layer of this shape."""
    return not shape_key.startswith("conv") or ":k(1,1):" in shape_key


def export_for_quantization(model: nn.Module, example_input: Any) -> fx.GraphModule:
    """``torch.export`` of a copy of ``model`` with a dynamic batch dimension, as a graph module.

    ``example_input`` is one batched tensor, a tuple of them (positional inputs)
    or a dict (keyword inputs); every tensor's first dimension is the batch.  A
    model that ``torch.export`` cannot capture is a :class:`HaqError` naming the
    construct it failed on.
    """
    args, kwargs = _batch_of_two(example_input)
    batch = torch.export.Dim("batch")
    dynamic = ({k: {0: batch} for k in kwargs} if kwargs else tuple({0: batch} for _ in args))
    try:
        with quiet_export():
            exported = torch.export.export(copy.deepcopy(model).eval(), args, kwargs=kwargs or None,
                                           dynamic_shapes=dynamic)
    except Exception as exc:  # torch.export raises many types: user errors, unsupported ops, guards
        raise HaqError(f"backend 'torchao': torch.export cannot capture {type(model).__name__}: "
                       f"{one_line(exc)}. PT2E quantization needs an exportable model (no data-dependent "
                       "control flow, no unsupported Python constructs in forward); use --backend torch.ao, "
                       "which falls back to eager mode for such models.") from None
    return exported.module()


def _batch_of_two(example_input: Any) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
    """Positional and keyword example inputs, each a batch of 2 (export keeps size-1 dimensions static)."""
    def doubled(value: Any) -> torch.Tensor:
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            raise HaqError("backend 'torchao': every example input must be a batched tensor (batch first); "
                           f"got {input_kind(example_input)} with a {type(value).__name__} in it.")
        return torch.cat([value[:1]] * 2)
    if isinstance(example_input, Mapping):
        return (), {str(key): doubled(value) for key, value in example_input.items()}
    if isinstance(example_input, (tuple, list)):
        return tuple(doubled(value) for value in example_input), {}
    return (doubled(example_input),), {}


class TorchaoPt2eBackend(QuantizeMode, QuantBackend):
    """Fake quantization with torchao PT2E (``prepare_qat_pt2e``); see the module docstring."""

    name = "torchao"
    description = ("torchao PT2E (torch.export + prepare_qat_pt2e): per-channel symmetric weights and affine "
                   "unsigned layer inputs, ranges changed in place; exports a torchao Quantizer (recommended)")
    export_filename = "torchao_quantizer.json"
    supported_bits = SUPPORTED_BITS
    bits_help = BITS_HELP
    options = (
        Option("quantize", str, WEIGHTS_AND_ACTIVATIONS, choices=QUANTIZE_MODES,
               help="What is quantized: weights and layer inputs, or weights only (inputs stay float and the "
                    "activation bits of a policy are ignored)."),
        Option("weight_range", str, DEFAULT_WEIGHT_RANGE, WEIGHT_RANGE_HELP, choices=WEIGHT_RANGES),
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._model: fx.GraphModule | None = None
        self._fake_quants: dict[str, LayerFakeQuants] = {}
        self._calibration: list[Any] = []
        self._bits: dict[str, tuple[int, int]] = {}
        self.quantize = self.config["quantize"]

    def prepare(self, model: nn.Module, example_input: torch.Tensor, calibration_data: Iterable[Any],
                layers: Sequence[LayerSpec] | None = None) -> None:
        """Export and prepare ``model`` once (8 bits everywhere), then calibrate."""
        names = [layer.name for layer in self.use_layers(model, example_input, layers)]
        self._calibration = [batch_inputs(batch) for batch in calibration_data]
        if not self._calibration:
            raise HaqError("backend 'torchao': calibration_data is empty; give at least one input batch.")
        act_bits = None if self.weights_only else 8
        ao = pt2e()
        quantizer = ao.LayerBitsQuantizer({name: (8, act_bits) for name in names},
                                          weight_range=self.config["weight_range"])
        prepared = ao.prepare_qat_pt2e(export_for_quantization(model, example_input), quantizer)
        ao.allow_exported_model_train_eval(prepared)
        self._model, self._fake_quants = prepared, ao.layer_fake_quants(prepared)
        self.mark_prepared()
        self.set_policy({name: (8, 8) for name in names})
        self.calibrate()

    def _require_prepared(self) -> fx.GraphModule:
        self.require_prepared()
        assert self._model is not None
        return self._model

    def _apply_policy(self, bits: dict[str, tuple[int, int]]) -> None:
        """Write every layer's weight and input range into its fake quantizers."""
        for name, (weight_bits, act_bits) in bits.items():
            for fq in self._fake_quants[name].weights:
                set_fake_quant_range(fq, *weight_range(weight_bits))
            for fq in self._fake_quants[name].inputs:
                set_fake_quant_range(fq, *act_range(act_bits))

    def effective_act_bits(self, bits: BitMap | None = None) -> dict[str, int] | None:
        """Input bits each layer really gets: a shared input quantizer keeps the last writer's bits.

        Replays :meth:`_apply_policy`'s writes (layer order) on the input quantizers;
        a layer whose quantizer another layer overwrote reports the other's bits.
        """
        self._require_prepared()
        if self.weights_only:
            return None
        checked = self.check_bits(bits) if bits is not None else self._bits
        written = {id(fq): act for name, (_, act) in checked.items() for fq in self._fake_quants[name].inputs}
        return {name: next((written[id(fq)] for fq in self._fake_quants[name].inputs if written[id(fq)] != act), act)
                for name, (_, act) in checked.items()}

    def _all_fake_quants(self) -> list[Any]:
        return [fq for entry in self._fake_quants.values() for fq in entry.weights + entry.inputs]

    def _calibrate(self) -> None:
        """Observe the calibration batches with fresh statistics, then freeze every range."""
        model = self._require_prepared()
        model.eval()
        for fq in self._all_fake_quants():
            fq.activation_post_process.reset_min_max_vals()
            fq.enable_observer()
            fq.enable_fake_quant()
        with torch.no_grad():
            for batch in self._calibration:
                call_model(model, batch)
        for fq in self._all_fake_quants():
            fq.disable_observer()

    def _finetune(self, train_data: Iterable[Any], steps: int, lr: float) -> None:
        """QAT for ``steps`` batches: weight ranges follow the weights, input ranges stay frozen."""
        model = self._require_prepared()
        weights = [fq for entry in self._fake_quants.values() for fq in entry.weights]
        for fq in weights:
            fq.enable_observer()
        try:
            self.train_steps(model, train_data, steps, lr)
        finally:
            for fq in weights:
                fq.disable_observer()

    @property
    def model(self) -> fx.GraphModule:
        return self._require_prepared()

    def export(self, policy: Policy | BitMap, path: str | Path) -> Path:
        """Write ``torchao_quantizer.json`` (into ``path`` if it is a directory)."""
        self.require_prepared()
        bits = self.policy_bits(policy)
        shapes = {layer.name: layer.shape_key() for layer in self.layers}
        document = export_document(bits, shapes, self.quantize, self.config["weight_range"])
        return write_document(self.export_path(path), document)


#: The class's name before the adapters became one package each (kept for existing imports).
TorchaoBackend = TorchaoPt2eBackend


@hookimpl
def haq_quant_backends() -> list[type[QuantBackend]]:
    return [TorchaoPt2eBackend]
