"""The quantization backend interface: what a framework adapter implements.

A backend turns a per-layer bit policy into a fake-quantized model of its host
framework (torch.ao, Brevitas, ...), measures it, and exports the policy in the
host framework's own terms.  The search drives it in this order::

    backend = SomeBackend(**options)
    backend.prepare(model, example_input, calibration_data)   # once per search (per sweep, see below)
    for each episode:
        backend.set_policy(bits)        # cheap: change bit widths in place
        backend.calibrate()             # activation ranges for the new bits
        backend.finetune(train_data, steps)   # optional, steps may be 0
        accuracy = backend.evaluate(eval_fn)
    backend.export(policy, path)

``bits`` maps layer name -> (weight_bits, activation_bits), where the activation
bits are those of the layer's *input* (as in HAQ).

A sweep runs many searches on one model with one backend instance: it sets
``reuse_prepared`` and the searches after the first skip ``prepare``
(:func:`prepare_for_search`).  A backend therefore must not keep state from one
policy to the next that ``set_policy`` and ``calibrate`` do not reset.
"""

from __future__ import annotations

import abc
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from haq_plugin.options import Option, resolve_options

BitMap = Mapping[str, tuple[int, int]]
EvalFn = Callable[[nn.Module], float]


def batch_inputs(batch: Any) -> Any:
    """The model input of a data batch: a tensor, or the first item of a (x, y) pair."""
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


class QuantBackend(abc.ABC):
    """Base class of every quantization backend.

    Class attributes: ``name`` (``--backend NAME``), ``description``,
    ``options`` (tuple of :class:`~haq_plugin.options.Option`, values in
    ``self.config``), ``export_filename`` (what ``export`` writes by default) and
    ``supported_bits``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    export_filename: ClassVar[str] = "qconfig.json"
    supported_bits: ClassVar[tuple[int, ...]] = tuple(range(2, 9))
    #: Opt-in, per instance: a search on the very objects of ``prepared_on`` skips ``prepare``
    #: (a sweep sets it while it runs one search per budget; see :func:`prepare_for_search`).
    reuse_prepared: bool = False
    prepared_on: "PreparedOn | None" = None

    def __init__(self, **options: Any) -> None:
        self.config: dict[str, Any] = resolve_options(f"backend '{self.name}'", self.options, options)

    @abc.abstractmethod
    def prepare(self, model: nn.Module, example_input: torch.Tensor,
                calibration_data: Iterable[Any]) -> None:
        """Build the fake-quantized model once; later policies only change bit widths."""

    @abc.abstractmethod
    def set_policy(self, bits: BitMap) -> None:
        """Set every layer's (weight, activation) bits in place."""

    @abc.abstractmethod
    def calibrate(self) -> None:
        """Re-estimate activation ranges on the calibration data for the current bits."""

    def finetune(self, train_data: Iterable[Any], steps: int, lr: float = 1e-3) -> None:
        """Optionally train the quantized model for ``steps`` batches (default: not supported)."""
        if steps:
            raise NotImplementedError(f"backend '{self.name}' does not support finetuning")

    @property
    @abc.abstractmethod
    def model(self) -> nn.Module:
        """The prepared, fake-quantized model with the current policy."""

    def evaluate(self, eval_fn: EvalFn) -> float:
        """Accuracy (percent) of the current quantized model, as ``eval_fn`` measures it."""
        model = self.model
        model.eval()
        with torch.no_grad():
            return float(eval_fn(model))

    @abc.abstractmethod
    def export(self, policy: Any, path: str | Path) -> Path:
        """Write what the host framework needs to apply ``policy`` (JSON, documented)."""


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
                       calibration_data: Iterable[Any]) -> bool:
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
        backend.prepare(model, example_input, calibration_data)
    random.setstate(python_state)
    np.random.set_state(numpy_state)
    backend.prepared_on = PreparedOn(model, example_input, calibration_data)
    return True
