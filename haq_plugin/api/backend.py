"""The quantization backend interface: what a framework adapter implements.

A backend turns a per-layer bit policy into a fake-quantized model of its host
framework (torch.ao, Brevitas, torchao, ...), measures it, and exports the
policy in the host framework's own terms.  The search drives it in this order::

    backend = SomeBackend(**options)
    backend.prepare(model, example_input, calibration_data, layers)   # once per search (per sweep, see below)
    for each episode:
        backend.set_policy(bits)        # cheap: change bit widths in place
        backend.calibrate()             # activation ranges for the new bits
        backend.finetune(train_data, steps)   # optional, steps may be 0
        accuracy = backend.evaluate(eval_fn)
    backend.export(policy, path)

``bits`` maps layer name -> (weight_bits, activation_bits), where the activation
bits are those of the layer's *input* (as in HAQ).

The mechanics every backend needs live here, so that an adapter writes only the
parts that depend on its framework: the layers it quantizes
(:meth:`QuantBackend.use_layers`), bit checks against ``supported_bits``
(:meth:`QuantBackend.check_bits`), the guard against use before ``prepare``
(:meth:`QuantBackend.require_prepared`), and quantization-aware finetuning
with a weight snapshot restored by the next policy
(:meth:`QuantBackend.train_steps`, :meth:`QuantBackend.restore_weights`).
The per-episode methods are template methods: the public ``set_policy``,
``calibrate``, ``finetune`` and ``evaluate`` do the guards once (prepared? bits
checked, weights restored, calibrated before finetuning or evaluating) and call
the framework's hooks ``_apply_policy``, ``_calibrate`` and ``_finetune``.
A backend written before the hooks, one that overrides ``set_policy`` and
``calibrate`` itself, keeps working (see :meth:`QuantBackend.__init_subclass__`).
A sweep runs many searches on one model with one backend instance: it sets
``reuse_prepared`` and the searches after the first skip ``prepare``
(:func:`prepare_for_search`).  A backend therefore must not keep state from one
policy to the next that ``set_policy`` and ``calibrate`` do not reset.
"""

from __future__ import annotations

import abc
import functools
import itertools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from haq_plugin.api.bits import BitPair, check_bit_map
from haq_plugin.api.capabilities import BackendCapabilities
from haq_plugin.api.errors import HaqError
from haq_plugin.api.inputs import call_model
from haq_plugin.api.layers import LayerSpec, extract_layers
from haq_plugin.api.options import Option, resolve_options
from haq_plugin.api.policy import Policy
from haq_plugin.api.quantize_mode import QUANTIZE_MODES

BitMap = Mapping[str, tuple[int, int]]
EvalFn = Callable[[nn.Module], float]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def batch_inputs(batch: Any) -> Any:
    """The model input of a data batch: a tensor, or the first item of a (x, y) pair."""
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


def layer_difference(bits: Mapping[str, Any], names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Layers of ``names`` that ``bits`` lacks, and names in ``bits`` that are no layer."""
    known = set(names)
    return [name for name in names if name not in bits], [name for name in bits if name not in known]


class QuantBackend(BackendCapabilities, abc.ABC):
    """Base class of every quantization backend.

    Capabilities (``quantize_modes``, ``supports_finetune``, ``supports_workers``,
    ``supports_device``, :meth:`weight_storage_bits`, :meth:`effective_act_bits`, :meth:`effective_bits`) are
    declared with defaults in :class:`~haq_plugin.api.capabilities.BackendCapabilities`.

    Class attributes: ``name`` (``--backend NAME``), ``description``,
    ``options`` (tuple of :class:`~haq_plugin.api.options.Option`, values in
    ``self.config``), ``export_filename`` (what ``export`` writes by default),
    ``supported_bits`` and ``bits_help`` (why those widths: appended to every
    refusal of a width).  ``loss_fn`` is the finetuning loss (cross-entropy by
    default; assign another ``loss(outputs, targets)`` to an instance).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    export_filename: ClassVar[str] = "qconfig.json"
    supported_bits: ClassVar[tuple[int, ...]] = tuple(range(2, 9))
    bits_help: ClassVar[str] = ""
    #: Opt-in, per instance: a search on the very objects of ``prepared_on`` skips ``prepare``
    #: (a sweep sets it while it runs one search per budget; see :func:`prepare_for_search`).
    reuse_prepared: bool = False
    prepared_on: "PreparedOn | None" = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap each subclass's ``prepare`` so that a finished prepare always marks the backend prepared.

        A backend written before the guard existed (one that never calls
        :meth:`mark_prepared`) then works unchanged.  Likewise a backend that
        overrides the public ``set_policy`` or ``calibrate`` instead of writing the
        hooks: its methods are wrapped to keep the calibrated flag that
        :meth:`evaluate` and :meth:`finetune` read, and the hook it does not need
        stops being abstract.
        """
        super().__init_subclass__(**kwargs)
        _derive_capabilities(cls)
        for public, hook, calibrated in (("set_policy", "_apply_policy", False), ("calibrate", "_calibrate", True)):
            own = cls.__dict__.get(public)
            if own is not None and not getattr(own, "keeps_flag", False):
                setattr(cls, public, _keeping_flag(own, calibrated))
                if hook not in cls.__dict__:
                    setattr(cls, hook, _not_called)
        prepare = cls.__dict__.get("prepare")
        if prepare is None or getattr(prepare, "marks_prepared", False) or getattr(prepare, "__isabstractmethod__", False):
            return

        @functools.wraps(prepare)
        def prepare_and_mark(self: "QuantBackend", *args: Any, **kw: Any) -> Any:
            self._prepared = False
            done = prepare(self, *args, **kw)
            if not self._prepared:
                self.mark_prepared()
            return done

        prepare_and_mark.marks_prepared = True  # type: ignore[attr-defined]
        cls.prepare = prepare_and_mark  # type: ignore[method-assign]

    def __init__(self, **options: Any) -> None:
        self.config: dict[str, Any] = resolve_options(f"backend '{self.name}'", self.options, options)
        self.layers: list[LayerSpec] = []
        self.loss_fn: LossFn = nn.CrossEntropyLoss()
        self._bits: dict[str, BitPair] = {}
        self._prepared = False
        self._calibrated = False
        self._snapshot: dict[str, torch.Tensor] | None = None
        self._weights_changed = False

    # -- the framework-specific part ---------------------------------------------------
    @abc.abstractmethod
    def prepare(self, model: nn.Module, example_input: torch.Tensor, calibration_data: Iterable[Any],
                layers: Sequence[LayerSpec] | None = None) -> None:
        """Build the fake-quantized model once; later policies only change bit widths.

        ``layers`` are the core's :class:`LayerSpec` of ``model``; ``None`` means
        "find them" (:meth:`use_layers` does either).  Call :meth:`mark_prepared`
        at the end.
        """

    @abc.abstractmethod
    def _apply_policy(self, bits: dict[str, BitPair]) -> None:
        """Set every layer's (weight, activation) bits in place; ``bits`` are checked, the weights restored."""

    @abc.abstractmethod
    def _calibrate(self) -> None:
        """Re-estimate activation ranges on the calibration data for the current bits."""

    def _finetune(self, train_data: Iterable[Any], steps: int, lr: float) -> None:
        """Train the calibrated quantized model for ``steps`` > 0 batches (default: not supported)."""
        raise HaqError(f"backend '{self.name}' does not support finetuning; run without finetune steps "
                       "(--finetune-steps 0) or choose a backend that finetunes (torchao, torch.ao, brevitas).")

    # -- the per-episode methods the search calls (template methods) -------------------
    def set_policy(self, bits: BitMap) -> None:
        """Check ``bits``, undo the last finetune, then set them (:meth:`_apply_policy`); uncalibrated after."""
        self.require_prepared()
        checked = self.check_bits(bits)
        self.restore_weights(self.model)
        self._apply_policy(checked)
        self._bits, self._calibrated = checked, False

    set_policy.keeps_flag = True  # type: ignore[attr-defined]

    def calibrate(self) -> None:
        """Re-estimate activation ranges for the current bits (:meth:`_calibrate`)."""
        self.require_prepared()
        self._calibrate()
        self._calibrated = True

    calibrate.keeps_flag = True  # type: ignore[attr-defined]

    def finetune(self, train_data: Iterable[Any], steps: int, lr: float = 1e-3) -> None:
        """Train the quantized model for ``steps`` batches (:meth:`_finetune`), calibrated first; 0 does nothing."""
        if steps <= 0:
            return
        if type(self)._finetune is QuantBackend._finetune:
            self._finetune(train_data, steps, lr)  # the refusal, before any work
        self.require_prepared()
        if not self._calibrated:
            self.calibrate()
        self._finetune(train_data, steps, lr)

    @property
    @abc.abstractmethod
    def model(self) -> nn.Module:
        """The prepared, fake-quantized model with the current policy."""

    def evaluate(self, eval_fn: EvalFn) -> float:
        """Accuracy (percent) of the current quantized model, as ``eval_fn`` measures it; calibrated first."""
        self.require_prepared()
        if not self._calibrated:
            self.calibrate()
        model = self.model
        model.eval()
        with torch.no_grad():
            return float(eval_fn(model))

    @abc.abstractmethod
    def export(self, policy: Policy, path: str | Path) -> Path:
        """Write what the host framework needs to apply ``policy`` (JSON, documented)."""

    # -- shared mechanics --------------------------------------------------------------
    def use_layers(self, model: nn.Module, example_input: Any,
                   layers: Sequence[LayerSpec] | None = None) -> list[LayerSpec]:
        """Record (and return) the layers this backend quantizes: ``layers``, or those of ``model``."""
        self.layers = list(layers) if layers is not None else extract_layers(model, example_input)
        return self.layers

    @property
    def layer_names(self) -> list[str]:
        """Names of the quantized layers, in execution order."""
        return [layer.name for layer in self.layers]

    @property
    def bits(self) -> dict[str, BitPair]:
        """The bit widths currently set, layer name -> (weight, input); set them in :meth:`set_policy`."""
        return dict(self._bits)

    @bits.setter
    def bits(self, bits: BitMap) -> None:
        self._bits = dict(bits)

    def mark_prepared(self) -> None:
        """Called at the end of :meth:`prepare`: the per-episode methods may now run."""
        self._prepared, self._snapshot, self._weights_changed, self._calibrated = True, None, False, False

    def require_prepared(self) -> None:
        """Raise :class:`HaqError` if :meth:`prepare` has not run (the guard of the per-episode methods)."""
        if not getattr(self, "_prepared", False):
            raise HaqError(f"backend '{self.name}': call prepare(model, example_input, calibration_data) first.")

    def check_bits(self, bits: BitMap, names: Sequence[str] | None = None) -> dict[str, BitPair]:
        """``bits`` in layer order, every layer present and every width in ``supported_bits``."""
        names = self.layer_names if names is None else list(names)
        try:
            return check_bit_map(bits, names, self.supported_bits, who=f"by backend '{self.name}'")
        except HaqError as exc:
            raise HaqError(self.bits_refusal(str(exc), bits, names)) from None

    def bits_refusal(self, message: str, bits: Any, names: Sequence[str]) -> str:
        """The message for bits that :meth:`check_bits` refused: the check's own, then ``bits_help``.

        A layer mismatch gets no ``bits_help``: why the backend takes those widths
        is beside the point when the bits name other layers than the model's.
        """
        if isinstance(bits, Mapping) and any(layer_difference(bits, names)):
            return message
        return f"{message} {self.bits_help}".strip()

    def policy_bits(self, policy: Policy | BitMap) -> dict[str, BitPair]:
        """The bits of a :class:`Policy` (or of a plain bit map), checked against the layers."""
        if isinstance(policy, Policy):
            if self.layers:
                policy.check_layers(self.layers)
            return self.check_bits(policy.bits, self.layer_names or list(policy.bits))
        if isinstance(policy, Mapping):
            return self.check_bits(policy, self.layer_names or list(policy))
        raise HaqError(f"backend '{self.name}': export needs a haq_plugin.api.policy.Policy, got "
                       f"{type(policy).__name__}.")

    def export_path(self, path: str | Path) -> Path:
        """``path``, or ``path / export_filename`` when ``path`` is a directory."""
        path = Path(path)
        return path / self.export_filename if path.is_dir() else path

    def train_steps(self, model: nn.Module, train_data: Iterable[Any], steps: int, lr: float) -> None:
        """Quantization-aware training: Adam on :attr:`loss_fn`, ``steps`` batches cycling over ``train_data``.

        Takes the weight snapshot first (restored by :meth:`restore_weights`, so
        episodes stay independent) and leaves the model in eval mode.
        """
        if steps < 0 or lr <= 0:
            raise HaqError(f"backend '{self.name}': finetune needs steps >= 0 and lr > 0, got steps={steps}, "
                           f"lr={lr}.")
        if steps == 0:
            return
        batches = list(train_data)
        if not batches or not all(isinstance(b, (tuple, list)) and len(b) >= 2 for b in batches):
            raise HaqError(f"backend '{self.name}': finetune needs a non-empty list of (inputs, targets) batches.")
        if self._snapshot is None:
            self._snapshot = {name: t.detach().clone() for name, t in _named_tensors(model)}
        self._weights_changed = True
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        model.train()
        try:
            for batch in itertools.islice(itertools.cycle(batches), steps):
                optimizer.zero_grad()
                self.loss_fn(call_model(model, batch[0]), batch[1]).backward()
                optimizer.step()
        finally:
            model.eval()

    def restore_weights(self, model: nn.Module) -> None:
        """Undo the last finetune (parameters and buffers), if there was one since the snapshot."""
        if not self._weights_changed or self._snapshot is None:
            return
        with torch.no_grad():
            for name, tensor in _named_tensors(model):
                saved = self._snapshot[name]
                if tensor.shape != saved.shape:
                    tensor.resize_(saved.shape)
                tensor.copy_(saved)
        self._weights_changed = False


def _named_tensors(model: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    """Parameters and buffers: everything a finetune can change (weights, BN statistics, scales)."""
    return itertools.chain(model.named_parameters(), model.named_buffers())

@dataclass(eq=False)
class PreparedOn:
    """The objects a backend instance was prepared on, compared by identity; ``reuses`` counts skipped prepares."""

    model: nn.Module
    example_input: Any
    calibration_data: Any
    reuses: int = 0

    def matches(self, model: nn.Module, example_input: Any, calibration_data: Any) -> bool:
        return (self.model is model and self.example_input is example_input
                and self.calibration_data is calibration_data)


def prepare_for_search(backend: QuantBackend, model: nn.Module, example_input: Any,
                       calibration_data: Iterable[Any], layers: Sequence[LayerSpec] | None = None) -> bool:
    """Prepare ``backend`` for a search on ``model``, unless it may and can be reused; True if it prepared.

    Reuse needs ``backend.reuse_prepared`` and a previous prepare on the same
    model, example input and calibration data objects: a sweep runs many searches
    on one model, and the prepared copy stays valid because every evaluation sets
    its policy and recalibrates.  Preparing leaves the global random generators as
    it found them (building quantized layers may draw initial weights), so a search
    is the same whether its backend was prepared or reused.
    """
    known = backend.prepared_on
    if backend.reuse_prepared and known is not None and known.matches(model, example_input, calibration_data):
        known.reuses += 1
        return False
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        backend.prepare(model, example_input, calibration_data, layers=layers)
    random.setstate(python_state)
    np.random.set_state(numpy_state)
    backend.prepared_on = PreparedOn(model, example_input, calibration_data)
    return True


def _declared_below(cls: type, attribute: str) -> bool:
    """Whether a class between ``cls`` and the base classes here defines ``attribute`` itself."""
    return any(attribute in klass.__dict__ for klass in cls.__mro__
               if klass not in (QuantBackend, BackendCapabilities, object))


def _derive_capabilities(cls: type) -> None:
    """Capabilities a subclass did not declare, from what it implements.

    ``supports_finetune`` is whether it writes ``_finetune`` (or its own ``finetune``); a
    backend written against the older contract (a ``quantize`` attribute, no
    ``quantize_modes``) is taken to implement both modes, as that contract said.
    """
    if not _declared_below(cls, "supports_finetune"):
        cls.supports_finetune = _declared_below(cls, "_finetune") or _declared_below(cls, "finetune")
    if not _declared_below(cls, "quantize_modes") and _declared_below(cls, "quantize"):
        cls.quantize_modes = QUANTIZE_MODES


def _keeping_flag(method: Callable[..., None], calibrated: bool) -> Callable[..., None]:
    """A subclass's own ``set_policy``/``calibrate``, also keeping the base class's calibrated flag."""

    @functools.wraps(method)
    def keeping(self: QuantBackend, *args: Any, **kwargs: Any) -> None:
        method(self, *args, **kwargs)
        self._calibrated = calibrated

    keeping.keeps_flag = True  # type: ignore[attr-defined]
    return keeping


def _not_called(self: QuantBackend, *args: Any) -> None:
    """The hook of a backend that overrides the public method instead; never called."""
    raise NotImplementedError
