"""What a search returns: one record per episode, the uniform baseline and the result."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Mapping

import torch

from haq_plugin.api.bits import BitPair
from haq_plugin.engine.bits_per_weight import table_bits_per_weight
from haq_plugin.engine.costs import UNITS, CostTable
from haq_plugin.engine.metric import Metric, metric_named
from haq_plugin.engine.reward import Budget
from haq_plugin.engine.space import fixed_bits_for
from haq_plugin.api.layers import LayerSpec
from haq_plugin.api.policy import Policy
from haq_plugin.engine.settings import SearchSettings



@dataclass
class EpisodeRecord:
    """One evaluated policy; also the row of ``episodes.csv`` and the observers' ``record``.

    ``bits`` are after budget enforcement; ``sigma`` is the exploration noise
    (None for warmup, random and uniform episodes); ``is_best`` marks an episode
    that improved on every earlier one.
    """

    episode: int
    strategy: str
    bits: list[BitPair]
    cost: float
    cost_fraction: float
    accuracy: float
    reward: float
    sigma: float | None
    is_best: bool
    seconds: float
    eval_seconds: float

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["bits"] = [list(pair) for pair in self.bits]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EpisodeRecord":
        values = dict(data)
        values["bits"] = [(int(w), int(a)) for w, a in values["bits"]]
        return cls(**values)


@dataclass
class UniformBaseline:
    """The highest uniform w=a bit width within the budget, evaluated like any policy."""

    bits: int
    accuracy: float
    cost: float
    cost_fraction: float
    policy: Policy

    def to_dict(self) -> dict[str, Any]:
        """The numbers and the per-layer bits (the checkpoint's form; the policy is rebuilt from them)."""
        return {"bits": self.bits, "accuracy": self.accuracy, "cost": self.cost,
                "cost_fraction": self.cost_fraction, "policy": [list(p) for p in self.policy.as_list()]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], layers: list[LayerSpec]) -> "UniformBaseline":
        pairs = [(int(w), int(a)) for w, a in data["policy"]]
        return cls(bits=int(data["bits"]), accuracy=float(data["accuracy"]), cost=float(data["cost"]),
                   cost_fraction=float(data["cost_fraction"]),
                   policy=Policy.from_bits(layers, pairs, source="uniform baseline"))


@dataclass(frozen=True)
class PluginChoice:
    """The hardware model or backend a search used: its registry name and resolved options."""

    name: str
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "config": dict(self.config)}


@dataclass
class SearchResult:
    """What a search found and how it compares.

    ``policy`` is the most accurate policy evaluated (earliest on ties), with
    provenance; ``history`` has one record per episode; ``uniform`` is the best
    uniform policy within the same budget (None on hardware where no uniform
    policy fits but a mixed one does); ``settings``, ``hardware`` and
    ``backend`` say how it was searched (``allowed_bits``: the widths both
    supported within min_bits..max_bits); ``timings`` (seconds) splits the search
    loop into evaluation and everything else.
    """

    policy: Policy
    history: list[EpisodeRecord]
    float_accuracy: float
    uniform: UniformBaseline | None
    best_episode: int
    budget: Budget
    layers: list[LayerSpec]
    cost_table: CostTable
    settings: SearchSettings = field(default_factory=SearchSettings)
    hardware: PluginChoice = PluginChoice("", {})
    backend: PluginChoice = PluginChoice("", {})
    allowed_bits: tuple[int, ...] = ()
    summary: str = ""
    interrupted: bool = False
    output_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def best(self) -> EpisodeRecord:
        """The episode of the returned policy."""
        return self.history[self.best_episode]

    @property
    def accuracy(self) -> float:
        return self.best.accuracy

    @property
    def cost_fraction(self) -> float:
        return self.best.cost_fraction

    @property
    def metric(self) -> Metric:
        """What ``accuracy`` holds: an accuracy in percent, or a perplexity (``settings.metric``)."""
        return metric_named(self.settings.metric)

    @property
    def bits_per_weight(self) -> float | None:
        """Stored bits per weight of the searched (not kept or pinned) layers, under the size constraint."""
        if self.budget.constraint != "size":
            return None
        s = self.settings
        fixed = fixed_bits_for(self.layers, s.keep_first_layer_8bit, s.keep_last_layer_8bit, s.pins)
        names = [layer.name for layer in self.layers if layer.name not in fixed] or [l.name for l in self.layers]
        return table_bits_per_weight(self.cost_table, self.best.bits, names)

    @property
    def unit(self) -> str:
        """Unit of the budgeted cost (s, J, B or BOPs)."""
        return UNITS[self.budget.constraint]

    def summary_text(self) -> str:
        """The few-line summary (also ``self.summary``): what was searched, found, and how it compares."""
        return self.summary


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a search; ``result`` is the partial result (flagged ``interrupted``) or None."""

    def __init__(self, result: SearchResult | None, checkpoint: Path | None) -> None:
        done = len(result.history) if result else 0
        where = f"; resume from {checkpoint}" if checkpoint else ""
        super().__init__(f"search interrupted after {done} finished episode(s){where}")
        self.result = result
        self.checkpoint = checkpoint


def provenance(settings: SearchSettings, run: Mapping[str, Any], budget: Budget, best: EpisodeRecord,
               float_accuracy: float, uniform: UniformBaseline | None, episodes_run: int,
               sources: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The policy's record of how it was found (``policy.json``'s ``provenance``), as plain JSON values.

    ``sources`` adds, for ``"hardware"`` and ``"backend"``, the distribution and
    version of the plugin that provided it (:func:`haq_plugin.api.plugins.plugin_provenance`).
    """
    sources = sources or {}
    searched = settings.to_dict()
    searched.pop("float_accuracy")
    searched.update(allowed_bits=run["allowed_bits"], episodes_run=episodes_run)
    if settings.strategy != "ddpg":
        searched.pop("ddpg")
    return jsonable({
        "haq_plugin_version": package_version(), "torch_version": torch.__version__,
        "hardware": {**run["hardware"], **_source(sources, "hardware")},
        "backend": {**run["backend"], **_source(sources, "backend")}, "constraint": settings.constraint,
        "budget": {"fraction": budget.fraction, "absolute": budget.absolute,
                   "reference_8bit": budget.reference, "unit": UNITS[settings.constraint]},
        "achieved": {"cost": best.cost, "cost_fraction": best.cost_fraction, "accuracy": best.accuracy,
                     "float_accuracy": float_accuracy, "episode": best.episode},
        "uniform_baseline": None if uniform is None else
        {"bits": uniform.bits, "accuracy": uniform.accuracy, "cost": uniform.cost,
         "cost_fraction": uniform.cost_fraction},
        "search": searched,
    })


def _source(sources: Mapping[str, Mapping[str, Any]], kind: str) -> dict[str, Any]:
    found = sources.get(kind) or {}
    return {"distribution": found.get("distribution"), "version": found.get("version")}


def package_version() -> str:
    try:
        return version("haq-plugin")
    except PackageNotFoundError:
        return "0.0.0+unknown"


def jsonable(value: Any) -> Any:
    """The value as it comes back from JSON (tuples become lists), for comparisons and provenance."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))
