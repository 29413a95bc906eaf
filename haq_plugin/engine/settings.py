"""The settings of one search, as one frozen record.

:class:`SearchSettings` is the single description of *how* to search: the
:func:`haq_plugin.engine.search` keyword arguments construct it, the command line's
``search`` options carry the same names, the checkpoint stores
:meth:`SearchSettings.to_dict` and a resumed search rebuilds it with
:meth:`SearchSettings.from_dict`.  Every check of a value that needs no model and
no plugin lives in ``__post_init__``, so a mistake is caught before any
expensive work, with the same message from Python and from the command line.

To add a setting: add a documented field here (with a default, so older
checkpoints and callers keep working), a check in :meth:`_check` if it has
limits, a keyword argument of :func:`haq_plugin.engine.search`, and an option of the
same name in :mod:`haq_plugin.cli.options`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

from haq_plugin.engine.agent import DDPGConfig
from haq_plugin.api.bits import MAX_BITS, MIN_BITS, BitPair, is_integer
from haq_plugin.engine.costs import CONSTRAINTS
from haq_plugin.api.errors import HaqError
from haq_plugin.engine.bits_per_weight import parse_bits_per_weight
from haq_plugin.engine.decisions import unit_key
from haq_plugin.engine.metric import metric_named
from haq_plugin.api.quantize_mode import WEIGHTS_AND_ACTIVATIONS, WEIGHTS_ONLY, check_quantize

STRATEGIES = ("ddpg", "random", "uniform", "greedy")
DEFAULT_EPISODES = 300
DEFAULT_BUDGET = 0.5
MAX_SEED = 2**32 - 1  # NumPy's legacy global generator takes seeds up to 2**32 - 1



@dataclass(frozen=True)
class SearchSettings:
    """How to search; see :func:`haq_plugin.engine.search` for the meaning of each value in context."""

    constraint: str = "latency"
    """The hardware cost to budget: latency, energy, size or bops."""
    budget: float = DEFAULT_BUDGET
    """Budget as a fraction of the uniform 8-bit policy's cost, in (0, 1]."""
    episodes: int = DEFAULT_EPISODES
    """Evaluated episodes (HAQ's reference uses 600 on ImageNet); may be raised on resume."""
    strategy: str = "ddpg"
    """ddpg (HAQ's agent), random (random actions, same budget enforcement), uniform (best uniform policy) or
    greedy (each layer's loss measured alone at each width, then lowered by least loss per cost saved)."""
    min_bits: int = 2
    """Smallest bit width the search may choose."""
    max_bits: int = 8
    """Largest bit width the search may choose."""
    keep_first_layer_8bit: bool = True
    """Keep the first layer (and the network input) at 8 bits."""
    keep_last_layer_8bit: bool = True
    """Keep the last layer at 8 bits."""
    pins: Mapping[str, BitPair] = field(default_factory=dict)
    """Layers whose (weight, activation) bits are fixed, by name."""
    finetune_steps: int = 0
    """Training steps on the quantized model before each evaluation (needs training data)."""
    seed: int = 0
    """Seed of every random generator of the search."""
    workers: int = 1
    """Episodes evaluated at once, on that many Ray actors (needs the ray extra). 1: one by one in this process,
    HAQ's loop. With N, each round proposes N episodes from the current actor, evaluates them in parallel and
    then learns from all N; the same seed and N give the same policy."""
    ddpg: DDPGConfig = field(default_factory=DDPGConfig)
    """Hyperparameters of the DDPG agent."""
    float_accuracy: float | None = None
    """The float model's accuracy if already known (else it is evaluated once)."""
    quantize: str | None = None
    """What is quantized: 'weights+activations', or 'weights' (activations stay float and only weight bits are
    searched). Default: 'weights' under the size constraint, where activation bits cost nothing, as in HAQ's
    model-size experiments; 'weights+activations' under latency, energy and bops."""
    metric: str = "accuracy"
    """What eval_fn returns: accuracy (percent, higher is better) or perplexity (lower is better)."""
    decisions: str = "layer"
    """Which layers share one choice of bits: layer (each its own, HAQ), block (per parent module, e.g. a decoder
    block's attention and its MLP) or role (per tensor role across blocks, e.g. every v_proj)."""
    bits_per_weight: float | None = None
    """Size budget in stored bits per weight of the searched layers, scales included (replaces budget; size
    constraint only). The command line takes it as --budget 3.5bpw."""
    task: Mapping[str, Any] = field(default_factory=dict)
    """Free-form, JSON-serialisable description of the model and data (kept for resume and provenance)."""

    def __post_init__(self) -> None:
        given_bpw = parse_bits_per_weight(self.budget)
        if given_bpw is not None:  # "3.5bpw": a size budget in bits per weight
            object.__setattr__(self, "bits_per_weight", given_bpw)
            object.__setattr__(self, "budget", 1.0)
        self._check()
        for name in ("episodes", "min_bits", "max_bits", "finetune_steps", "seed", "workers"):  # NumPy integers -> int
            object.__setattr__(self, name, int(getattr(self, name)))
        if not isinstance(self.budget, (int, float)):  # e.g. a NumPy float, which JSON cannot store
            object.__setattr__(self, "budget", float(self.budget))
        if self.float_accuracy is not None:
            object.__setattr__(self, "float_accuracy", float(self.float_accuracy))
        object.__setattr__(self, "pins", {str(k): (int(v[0]), int(v[1])) for k, v in dict(self.pins).items()})
        object.__setattr__(self, "task", dict(self.task))
        # not a field (never stored): whether quantize was chosen or defaulted, so that a backend without
        # the default mode falls back with a note instead of refusing (see resolve_quantize)
        object.__setattr__(self, "_quantize_given", self.quantize is not None)
        if self.quantize is None:
            object.__setattr__(self, "quantize", default_quantize(self.constraint))

    def _check(self) -> None:
        """Reject impossible values before any expensive work, naming what is allowed."""
        if self.constraint not in CONSTRAINTS:
            raise HaqError(f"Unknown constraint '{self.constraint}'. Choose one of: {', '.join(CONSTRAINTS)}.")
        if self.strategy not in STRATEGIES:
            raise HaqError(f"Unknown search strategy '{self.strategy}'. Choose one of: {', '.join(STRATEGIES)}.")
        budget = self.budget
        if isinstance(budget, bool) or not isinstance(budget, numbers.Real) or not 0.0 < float(budget) <= 1.0:
            raise HaqError(f"budget must be a fraction of the 8-bit cost in (0, 1], got {budget!r} "
                           "(e.g. 0.5 for half the 8-bit cost), or bits per weight under the size constraint "
                           "(e.g. '3.5bpw').")
        for name in ("min_bits", "max_bits"):
            value = getattr(self, name)
            if not is_integer(value) or not MIN_BITS <= value <= MAX_BITS:
                raise HaqError(f"{name} must be an integer from {MIN_BITS} to {MAX_BITS}, got {value!r}.")
        if self.min_bits > self.max_bits:
            raise HaqError(f"min_bits ({self.min_bits}) is larger than max_bits ({self.max_bits}); "
                           "min_bits must be <= max_bits.")
        if not is_integer(self.episodes) or self.episodes < 1:
            raise HaqError(f"episodes must be a positive integer, got {self.episodes!r}.")
        if not is_integer(self.finetune_steps) or self.finetune_steps < 0:
            raise HaqError(f"finetune_steps must be an integer >= 0 (0 for no finetuning), "
                           f"got {self.finetune_steps!r}.")
        if not is_integer(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise HaqError(f"seed must be an integer from 0 to {MAX_SEED} (2**32 - 1), got {self.seed!r}.")
        if not is_integer(self.workers) or self.workers < 1:
            raise HaqError(f"workers must be an integer >= 1 (1 evaluates in this process; N > 1 on N Ray "
                           f"actors), got {self.workers!r}.")
        if self.quantize is not None:
            check_quantize(self.quantize, "quantize")
        if not isinstance(self.ddpg, DDPGConfig):
            raise HaqError(f"ddpg must be a DDPGConfig, got {type(self.ddpg).__name__}.")
        metric = metric_named(self.metric)
        unit_key("layer", self.decisions)  # refuses an unknown way of grouping layers
        self._check_bits_per_weight()
        given = self.float_accuracy
        if given is not None and (isinstance(given, bool) or not isinstance(given, numbers.Real)
                                  or metric.problem(float(given))):
            raise HaqError(f"float_accuracy must be the float model's {metric.name} (or None to evaluate it): "
                           f"{metric.answer}; got {given!r}.")
        if not isinstance(self.pins, Mapping):
            raise HaqError(f"pins must map layer names to (weight_bits, activation_bits), got {self.pins!r}.")
        for name, pair in self.pins.items():
            if (not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(is_integer(b) for b in pair)):
                raise HaqError(f"pins: layer '{name}' must map to a (weight_bits, activation_bits) pair of "
                               f"integers, got {pair!r}.")
        try:
            json.dumps(dict(self.task))
        except (TypeError, ValueError) as exc:
            raise HaqError(f"task must be a JSON-serialisable mapping: {exc}.") from None

    def _check_bits_per_weight(self) -> None:
        value = self.bits_per_weight
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) < 64:
            raise HaqError(f"bits_per_weight must be a positive number of bits (e.g. 3.5), got {value!r}.")
        if self.constraint != "size":
            raise HaqError(f"a bits-per-weight budget ({value:g}bpw) is a size budget; use --constraint size, or "
                           f"give the {self.constraint} budget as a fraction of the 8-bit cost (e.g. --budget 0.5).")

    # -- the stored form -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (tuples become lists), as stored in the checkpoint."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["ddpg"] = dataclasses.asdict(self.ddpg)
        return json.loads(json.dumps(data, sort_keys=True))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchSettings":
        """The settings from :meth:`to_dict`; unknown keys are an error, missing ones take their default."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise HaqError(f"Stored search settings have unknown key(s) {', '.join(unknown)}; they were written "
                           "by another version of haq-plugin. Start a new search.")
        values = dict(data)
        if "ddpg" in values:
            values["ddpg"] = DDPGConfig(**values["ddpg"])
        if "pins" in values:
            values["pins"] = {name: tuple(bits) for name, bits in values["pins"].items()}
        return cls(**values)

    def replace(self, **changes: Any) -> "SearchSettings":
        """A copy with ``changes`` applied (and checked); a defaulted ``quantize`` stays marked as defaulted."""
        copy = dataclasses.replace(self, **changes)
        if "quantize" not in changes:
            object.__setattr__(copy, "_quantize_given", self.quantize_given)
        return copy

    @property
    def quantize_given(self) -> bool:
        """Whether ``quantize`` was chosen (``--quantize``) rather than defaulted from the constraint."""
        return bool(getattr(self, "_quantize_given", True))

    def differences(self, other: "SearchSettings", ignore: tuple[str, ...] = ("episodes",)) -> list[str]:
        """``"name: self's value, other's value"`` for every setting that differs (for resume checks)."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{key}: checkpoint {mine[key]!r}, now {theirs[key]!r}"
                for key in mine if key not in ignore and mine[key] != theirs[key]]


def default_quantize(constraint: str) -> str:
    """Weight-only under ``size`` (activation bits cost nothing there), else weights and activations."""
    return WEIGHTS_ONLY if constraint == "size" else WEIGHTS_AND_ACTIVATIONS
