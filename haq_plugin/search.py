"""The HAQ search: find per-layer bits that maximise accuracy within a hardware budget.

:func:`search` ties the pieces together: it extracts the layers, builds the
hardware cost table, runs episodes of the :class:`~haq_plugin.environment.QuantizationEnv`
with a strategy that proposes bits, evaluates every policy through the
quantization backend, and returns the most accurate policy within the budget.

Strategies:

* ``ddpg`` (default): HAQ's agent (:mod:`haq_plugin.agent`);
* ``random``: uniform random actions through the same budget enforcement, for
  the same number of episodes (the baseline any learned search must beat);
* ``uniform``: only the highest uniform w=a bit width that fits the budget.

The best uniform policy within the budget is evaluated in every search and
reported beside the result, so the benefit of mixed precision is always visible.

Determinism: the search seeds Python's, NumPy's and PyTorch's global generators
with ``seed`` (backends may draw from them, e.g. while finetuning) and the agent
owns generators seeded from it, so the same inputs give the same policy bit for
bit.  With an ``output_dir`` the complete state is checkpointed after every
episode; ``resume=True`` continues from it and ends with the same policy as an
uninterrupted run.  The episode count may be raised on resume.

Interruption: Ctrl-C (``KeyboardInterrupt``) during a search raises
:class:`SearchInterrupted`, a ``KeyboardInterrupt`` that carries the partial
result (``exc.result``, ``None`` before the first episode ends).  Every finished
episode is in the checkpoint; ``episodes.csv`` is written for inspection, the
final files (``policy.json``, ``summary.md``, ...) only by a finished search.
"""

from __future__ import annotations

import json
import numbers
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from haq_plugin import outputs
from haq_plugin.agent import DDPGAgent, DDPGConfig
from haq_plugin.backend import QuantBackend, prepare_for_search
from haq_plugin.costs import CONSTRAINTS, UNITS, CostTable, build_cost_table
from haq_plugin.environment import KEPT_BITS, STATE_DIM, Budget, QuantizationEnv, fixed_bits_for
from haq_plugin.errors import HaqError
from haq_plugin.hardware import HardwareModel
from haq_plugin.layers import LayerSpec, extract_layers
from haq_plugin.plugins import get_plugin_manager, load_backend, load_hardware
from haq_plugin.policy import Policy

STRATEGIES = ("ddpg", "random", "uniform")
CHECKPOINT_FORMAT = 1
BitPair = tuple[int, int]


# -- results ----------------------------------------------------------------------------
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


@dataclass
class SearchResult:
    """What a search found and how it compares.

    ``policy`` is the most accurate policy evaluated (earliest on ties), with
    provenance; ``history`` has one record per episode; ``uniform`` is the best
    uniform policy within the same budget (None on hardware where no uniform
    policy fits but a mixed one does); ``timings`` (seconds) splits the
    search loop into evaluation and everything else.
    """

    policy: Policy
    history: list[EpisodeRecord]
    float_accuracy: float
    uniform: UniformBaseline | None
    best_episode: int
    budget: Budget
    layers: list[LayerSpec]
    cost_table: CostTable
    summary: str = ""
    interrupted: bool = False
    output_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.history[self.best_episode].accuracy

    def summary_text(self) -> str:
        """The few-line summary (also ``self.summary``): what was searched, found, and how it compares."""
        return self.summary

    @property
    def cost_fraction(self) -> float:
        return self.history[self.best_episode].cost_fraction


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C during a search; ``result`` is the partial result (flagged ``interrupted``) or None."""

    def __init__(self, result: SearchResult | None, checkpoint: Path | None) -> None:
        done = len(result.history) if result else 0
        where = f"; resume from {checkpoint}" if checkpoint else ""
        super().__init__(f"search interrupted after {done} finished episode(s){where}")
        self.result = result
        self.checkpoint = checkpoint


# -- the public entry point -------------------------------------------------------------
def search(model: nn.Module, example_input: Any, *, hardware: HardwareModel | str,
           backend: QuantBackend | str, constraint: str = "latency", budget: float = 0.5,
           eval_fn: Callable[[nn.Module], float], calibration_data: Iterable[Any],
           train_data: Iterable[Any] | None = None, finetune_steps: int = 0, episodes: int = 600,
           strategy: str = "ddpg", min_bits: int = 2, max_bits: int = 8, keep_first_layer_8bit: bool = True,
           keep_last_layer_8bit: bool = True, pins: Mapping[str, tuple[int, int]] | None = None, seed: int = 0,
           output_dir: str | Path | None = None, resume: bool = False, force: bool = False,
           progress: bool = True, ddpg: DDPGConfig = DDPGConfig(),
           float_accuracy: float | None = None, use_cache: bool = True,
           task: Mapping[str, Any] | None = None) -> SearchResult:
    """Search per-layer (weight, activation) bits for ``model`` under a hardware budget.

    ``budget`` is a fraction of the uniform 8-bit (w8/a8) cost of ``constraint``
    (latency, energy, size or bops) on ``hardware``.  ``eval_fn(model)`` returns
    accuracy in percent; the reward of a policy is 0.1 x (its accuracy - the
    float accuracy).  ``hardware`` and ``backend`` are instances or registered
    names.  ``force`` lets a new search write into a non-empty ``output_dir``;
    ``use_cache=False`` re-simulates the cost table instead of reading the disk
    cache.  See the module docstring for strategies, determinism, outputs and
    interruption.  ``task`` is a free-form, JSON-serialisable description of the
    model and data (the CLI stores its ``--model``/``--data`` there); it is kept in
    the checkpoint and the policy's provenance so that a run can be resumed or
    reproduced.
    """
    _check_options(constraint=constraint, budget=budget, strategy=strategy, min_bits=min_bits,
                   max_bits=max_bits, episodes=episodes, finetune_steps=finetune_steps, train_data=train_data,
                   resume=resume, output_dir=output_dir, seed=seed)
    run = _SearchRun(
        model=model, example_input=example_input,
        hardware=_resolve(hardware, HardwareModel, load_hardware, "hardware"),
        backend=_resolve(backend, QuantBackend, load_backend, "backend"),
        constraint=constraint, budget=float(budget), eval_fn=eval_fn,
        calibration_data=calibration_data, train_data=train_data, finetune_steps=int(finetune_steps),
        episodes=int(episodes), strategy=strategy, min_bits=int(min_bits), max_bits=int(max_bits),
        keep_first=bool(keep_first_layer_8bit), keep_last=bool(keep_last_layer_8bit), pins=dict(pins or {}),
        seed=int(seed), progress=progress, ddpg=ddpg, float_accuracy=float_accuracy, use_cache=use_cache,
        task=dict(task or {}),
    )
    return run.execute(output_dir=output_dir, resume=resume, force=force)


def checkpoint_settings(output_dir: str | Path) -> dict[str, Any]:
    """The settings an interrupted search in ``output_dir`` was started with (to resume it)."""
    path = Path(output_dir) / outputs.CHECKPOINT
    if not path.is_file():
        raise HaqError(f"Nothing to resume in {output_dir}: it has no {outputs.CHECKPOINT}.")
    checkpoint = outputs.load_checkpoint(path)
    return {**checkpoint["settings"], "episodes": checkpoint["episodes"]}


def _check_options(*, constraint: str, budget: float, strategy: str, min_bits: int, max_bits: int,
                   episodes: int, finetune_steps: int, train_data: Any, resume: bool, output_dir: Any,
                   seed: int) -> None:
    """Reject impossible option values before any expensive work, with the allowed values."""
    if constraint not in CONSTRAINTS:
        raise HaqError(f"Unknown constraint '{constraint}'. Choose one of: {', '.join(CONSTRAINTS)}.")
    if strategy not in STRATEGIES:
        raise HaqError(f"Unknown search strategy '{strategy}'. Choose one of: {', '.join(STRATEGIES)}.")
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real) or not 0.0 < float(budget) <= 1.0:
        raise HaqError(f"budget must be a fraction of the 8-bit cost in (0, 1], got {budget!r} "
                       "(e.g. 0.5 for half the 8-bit cost).")
    for name, value in (("min_bits", min_bits), ("max_bits", max_bits)):
        if not _is_int(value) or not 1 <= value <= 16:
            raise HaqError(f"{name} must be an integer from 1 to 16, got {value!r}.")
    if min_bits > max_bits:
        raise HaqError(f"min_bits ({min_bits}) is larger than max_bits ({max_bits}); min_bits must be <= max_bits.")
    if not _is_int(episodes) or episodes < 1:
        raise HaqError(f"episodes must be a positive integer, got {episodes!r}.")
    if not _is_int(finetune_steps) or finetune_steps < 0:
        raise HaqError(f"finetune_steps must be an integer >= 0, got {finetune_steps!r}.")
    if finetune_steps and train_data is None:
        raise HaqError(f"finetune_steps={finetune_steps} needs train_data (batches of (inputs, targets)).")
    if resume and output_dir is None:
        raise HaqError("resume=True needs the output_dir of the search to continue.")
    if not _is_int(seed) or seed < 0:
        raise HaqError(f"seed must be a non-negative integer, got {seed!r}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _resolve(value: Any, base: type, load: Callable[[str], Any], what: str) -> Any:
    """An instance as given, or the plugin registered under that name."""
    if isinstance(value, str):
        return load(value)
    if isinstance(value, base):
        return value
    raise HaqError(f"{what} must be a {base.__name__} or a registered name, got {type(value).__name__}.")


def _package_version() -> str:
    try:
        return version("haq-plugin")
    except PackageNotFoundError:
        return "0.0.0+unknown"


def _jsonable(value: Any) -> Any:
    """The value as it comes back from JSON (tuples become lists), for comparisons and provenance."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


# -- global random state ------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed the global generators a backend might use (Python, NumPy, PyTorch)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """The global generators' states as checkpoint-safe values (no NumPy arrays)."""
    np_state = np.random.get_state(legacy=False)
    np_state["state"] = {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"])}
    return {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state()}


def restore_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    np_state = dict(state["numpy"])
    np_state["state"] = {"key": np.asarray(np_state["state"]["key"], dtype=np.uint32),
                         "pos": np_state["state"]["pos"]}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


# -- the search loop ----------------------------------------------------------------------
class _SearchRun:
    """State of one search call; :meth:`execute` runs it from start or checkpoint to the end."""

    def __init__(self, *, model: nn.Module, example_input: Any, hardware: HardwareModel,
                 backend: QuantBackend, constraint: str, budget: float, eval_fn: Callable[[nn.Module], float],
                 calibration_data: Iterable[Any], train_data: Iterable[Any] | None, finetune_steps: int,
                 episodes: int, strategy: str, min_bits: int, max_bits: int, keep_first: bool,
                 keep_last: bool, pins: dict[str, tuple[int, int]], seed: int, progress: bool,
                 ddpg: DDPGConfig, float_accuracy: float | None, use_cache: bool,
                 task: dict[str, Any]) -> None:
        self.model, self.example_input = model, example_input
        self.hardware, self.backend = hardware, backend
        self.constraint, self.strategy, self.episodes, self.seed = constraint, strategy, episodes, seed
        self.eval_fn, self.calibration_data = eval_fn, calibration_data
        self.train_data, self.finetune_steps = train_data, finetune_steps
        self.progress, self.ddpg_config = progress, ddpg
        self.float_accuracy = float_accuracy
        self._check_constraint()
        self.layers = extract_layers(model, example_input)
        self.names = [layer.name for layer in self.layers]
        self.allowed = self._allowed_bits(min_bits, max_bits)
        self.fixed = fixed_bits_for(self.layers, keep_first, keep_last, pins)
        self._check_fixed_bits()
        table_bits = sorted(set(self.allowed) | {KEPT_BITS} | {b for p in self.fixed.values() for b in p})
        self.table = build_cost_table(hardware, self.layers, bits=table_bits, cache=use_cache)
        self.env = QuantizationEnv(self.layers, self.table, constraint, budget, self.allowed, self.fixed)
        self.settings = _jsonable({
            "strategy": strategy, "seed": seed, "constraint": constraint, "budget": budget,
            "min_bits": min_bits, "max_bits": max_bits, "allowed_bits": list(self.allowed),
            "keep_first_layer_8bit": keep_first, "keep_last_layer_8bit": keep_last,
            "pins": {k: list(v) for k, v in pins.items()}, "finetune_steps": finetune_steps,
            "float_accuracy_given": float_accuracy, "ddpg": asdict(ddpg),
            "hardware": {"name": hardware.name, "config": hardware.config},
            "backend": {"name": backend.name, "config": backend.config},
            "layers": [[layer.name, layer.shape_key()] for layer in self.layers],
            "task": task,
        })
        self.agent: DDPGAgent | None = None
        self.action_rng = np.random.default_rng(seed)
        self.history: list[EpisodeRecord] = []
        self.best: int | None = None
        self.uniform: dict[str, Any] | None = None
        self.timings = {"setup": 0.0, "loop": 0.0, "eval": 0.0, "agent": 0.0, "checkpoint": 0.0}
        self.output_dir: Path | None = None

    # -- validation needing the plugins -----------------------------------------------------
    def _check_constraint(self) -> None:
        if self.constraint == "energy" and not self.hardware.has_energy:
            raise HaqError(f"hardware model '{self.hardware.name}' has no energy model, so it cannot budget "
                           "energy; use constraint latency, size or bops, or a hardware model with energy.")
        if KEPT_BITS not in self.hardware.supported_bits:
            raise HaqError(f"hardware model '{self.hardware.name}' does not run 8-bit layers, but budgets are "
                           "fractions of the uniform 8-bit cost.")

    def _allowed_bits(self, min_bits: int, max_bits: int) -> tuple[int, ...]:
        hw, be = set(self.hardware.supported_bits), set(self.backend.supported_bits)
        allowed = tuple(b for b in range(min_bits, max_bits + 1) if b in hw and b in be)
        if not allowed:
            raise HaqError(
                f"No bit width in min_bits..max_bits = {min_bits}..{max_bits} is supported by both hardware "
                f"'{self.hardware.name}' ({', '.join(map(str, sorted(hw)))}) and backend '{self.backend.name}' "
                f"({', '.join(map(str, sorted(be)))}); widen the range."
            )
        return allowed

    def _check_fixed_bits(self) -> None:
        hw, be = set(self.hardware.supported_bits), set(self.backend.supported_bits)
        for name, pair in self.fixed.items():
            for bits in pair:
                if bits not in hw or bits not in be:
                    raise HaqError(
                        f"Layer '{name}' is fixed at {pair[0]}/{pair[1]} bits (a pin or a keep_*_8bit option), "
                        f"but {bits} bits are not supported by both hardware '{self.hardware.name}' "
                        f"({', '.join(map(str, sorted(hw)))}) and backend '{self.backend.name}' "
                        f"({', '.join(map(str, sorted(be)))})."
                    )

    # -- driver -------------------------------------------------------------------------
    def execute(self, output_dir: str | Path | None, resume: bool, force: bool) -> SearchResult:
        start = time.perf_counter()
        checkpoint = None
        if output_dir is not None:
            self.output_dir = outputs.prepare_output_dir(output_dir, resume, force)
            if resume:
                checkpoint = outputs.load_checkpoint(self.output_dir / outputs.CHECKPOINT)
                self._check_checkpoint(checkpoint)
        if self.strategy == "ddpg":
            self.agent = DDPGAgent(STATE_DIM, self.env.n_steps, self.ddpg_config, self.seed)
        seed_everything(self.seed)
        if checkpoint is None and self.float_accuracy is None:
            self.float_accuracy = self._evaluate_float()
        prepare_for_search(self.backend, self.model, self.example_input, self.calibration_data, self.layers)
        if checkpoint is None:
            self.uniform = self._evaluate_uniform()
        else:
            self._restore(checkpoint)
        self.timings["setup"] = time.perf_counter() - start
        get_plugin_manager().notify("haq_search_started", info=self._start_info(resumed=checkpoint is not None))
        if self.strategy == "uniform":
            self._run_uniform_strategy()
        else:
            self._run_episodes()
        return self._finish()

    def _start_info(self, resumed: bool) -> dict[str, Any]:
        return {
            "layers": list(self.names), "hardware": self.settings["hardware"],
            "backend": self.settings["backend"], "constraint": self.constraint,
            "budget": {"fraction": self.env.budget.fraction, "absolute": self.env.budget.absolute,
                       "unit": UNITS[self.constraint]},
            "settings": self.settings, "episodes": self.episodes, "start_episode": len(self.history),
            "resumed": resumed, "float_accuracy": self.float_accuracy,
            "output_dir": str(self.output_dir) if self.output_dir else None,
        }

    # -- evaluation ---------------------------------------------------------------------
    def _evaluate_float(self) -> float:
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return float(self.eval_fn(self.model))
        finally:
            self.model.train(was_training)

    def _evaluate(self, bits: Sequence[BitPair]) -> tuple[float, float]:
        """Accuracy of a policy through the backend, and the seconds it took."""
        start = time.perf_counter()
        self.backend.set_policy(dict(zip(self.names, bits)))
        self.backend.calibrate()
        if self.finetune_steps:
            self.backend.finetune(self.train_data, self.finetune_steps)
        accuracy = float(self.backend.evaluate(self.eval_fn))
        return accuracy, time.perf_counter() - start

    def _evaluate_uniform(self) -> dict[str, Any] | None:
        found = self.env.best_uniform()
        if found is None:
            if self.strategy == "uniform":
                raise HaqError(
                    f"No uniform policy fits the {self.constraint} budget of {self.env.budget.fraction:g} on "
                    f"hardware '{self.hardware.name}' (its cheapest policy mixes widths); use strategy 'ddpg' "
                    "or 'random', or raise the budget.")
            return None
        bits, policy = found
        accuracy, _ = self._evaluate(policy)
        cost = self.env.cost(policy)
        return {"bits": bits, "accuracy": accuracy, "cost": cost, "cost_fraction": cost / self.env.budget.reference,
                "policy": [list(p) for p in policy]}

    # -- strategies ---------------------------------------------------------------------
    def _run_uniform_strategy(self) -> None:
        """The 'uniform' strategy: its one policy is the baseline already evaluated."""
        if self.history:
            return
        assert self.uniform is not None  # checked in _evaluate_uniform
        bits = [tuple(p) for p in self.uniform["policy"]]
        self._record(0, bits, self.uniform["accuracy"], None, 0.0, 0.0)
        self._save_checkpoint()
        get_plugin_manager().notify("haq_episode_finished", record=self.history[-1].to_dict())

    def _propose(self) -> tuple[list[BitPair], np.ndarray, np.ndarray, float | None]:
        """One episode of actions: the enforced bits, the states and actions seen, and the noise."""
        states = np.zeros((self.env.n_steps, STATE_DIM))
        actions = np.zeros(self.env.n_steps)
        sigma = None
        if self.agent is not None and not self.agent.warming_up:
            sigma = self.agent.sigma
        state: np.ndarray | None = self.env.reset()
        t = 0
        while state is not None:
            states[t] = state
            if self.agent is not None:
                actions[t] = self.agent.act(state)
            else:
                actions[t] = self.action_rng.uniform(0.0, 1.0)
            state = self.env.step(actions[t])
            t += 1
        return self.env.enforce_budget(self.env.chosen_bits()), states, actions, sigma

    def _run_episodes(self) -> None:
        from tqdm import tqdm

        bar = tqdm(total=self.episodes, initial=len(self.history), desc=f"HAQ {self.strategy}", unit="ep",
                   file=sys.stderr, disable=not self.progress, dynamic_ncols=True)
        loop_start = time.perf_counter()
        try:
            for episode in range(len(self.history), self.episodes):
                started = time.perf_counter()
                bits, states, actions, sigma = self._propose()
                accuracy, eval_seconds = self._evaluate(bits)
                reward = 0.1 * (accuracy - self.float_accuracy)
                learn_start = time.perf_counter()
                if self.agent is not None:
                    self.agent.observe_episode(states, actions, reward)
                self.timings["agent"] += time.perf_counter() - learn_start
                record = self._record(episode, bits, accuracy, sigma, eval_seconds,
                                      time.perf_counter() - started)
                self._save_checkpoint()
                get_plugin_manager().notify("haq_episode_finished", record=record.to_dict())
                self._update_bar(bar, record)
        except KeyboardInterrupt:
            self.timings["loop"] += time.perf_counter() - loop_start
            bar.close()
            raise self._interrupted() from None
        self.timings["loop"] += time.perf_counter() - loop_start
        bar.close()

    def _record(self, episode: int, bits: Sequence[BitPair], accuracy: float, sigma: float | None,
                eval_seconds: float, seconds: float) -> EpisodeRecord:
        cost = self.env.cost(bits)
        is_best = self.best is None or accuracy > self.history[self.best].accuracy
        record = EpisodeRecord(
            episode=episode, strategy=self.strategy, bits=[tuple(p) for p in bits], cost=cost,  # type: ignore[misc]
            cost_fraction=cost / self.env.budget.reference, accuracy=accuracy,
            reward=0.1 * (accuracy - self.float_accuracy), sigma=sigma, is_best=is_best,
            seconds=seconds, eval_seconds=eval_seconds,
        )
        self.history.append(record)
        if is_best:
            self.best = len(self.history) - 1
        self.timings["eval"] += eval_seconds
        return record

    def _update_bar(self, bar: Any, record: EpisodeRecord) -> None:
        if bar.disable:
            bar.update(1)
            return
        best = self.history[self.best].accuracy  # type: ignore[index]
        bar.set_postfix_str(f"acc {record.accuracy:.2f} best {best:.2f} "
                            f"{self.constraint} {record.cost_fraction:.3f}/{self.env.budget.fraction:.3f}",
                            refresh=False)
        bar.update(1)

    # -- checkpoint -----------------------------------------------------------------------
    def _save_checkpoint(self) -> None:
        if self.output_dir is None:
            return
        start = time.perf_counter()
        payload = {
            "format": CHECKPOINT_FORMAT, "settings": self.settings, "episodes": self.episodes,
            "float_accuracy": self.float_accuracy, "uniform": self.uniform,
            "history": [r.to_dict() for r in self.history], "best": self.best,
            "agent": self.agent.state_dict() if self.agent is not None else None,
            "action_rng": self.action_rng.bit_generator.state, "rng": capture_rng_state(),
        }
        outputs.save_checkpoint(self.output_dir / outputs.CHECKPOINT, payload)
        self.timings["checkpoint"] += time.perf_counter() - start

    def _check_checkpoint(self, checkpoint: Mapping[str, Any]) -> None:
        if checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise HaqError(f"The checkpoint has format {checkpoint.get('format')!r}; this haq-plugin reads "
                           f"format {CHECKPOINT_FORMAT}. Start a new search.")
        saved = checkpoint["settings"]
        differences = [f"{key}: checkpoint {saved.get(key)!r}, now {value!r}"
                       for key, value in self.settings.items() if saved.get(key) != value]
        if differences:
            raise HaqError("Cannot resume: the search settings differ from the checkpoint's ("
                           + "; ".join(differences) + "). Resume with the same settings (only episodes may "
                           "grow) or start a new search.")
        done = len(checkpoint["history"])
        if self.episodes < done:
            raise HaqError(f"Cannot resume with episodes={self.episodes}: the checkpoint already has {done} "
                           "finished episodes.")

    def _restore(self, checkpoint: Mapping[str, Any]) -> None:
        self.float_accuracy = float(checkpoint["float_accuracy"])
        self.uniform = checkpoint["uniform"]
        self.history = [EpisodeRecord.from_dict(r) for r in checkpoint["history"]]
        self.best = checkpoint["best"]
        if self.agent is not None:
            self.agent.load_state_dict(checkpoint["agent"])
        self.action_rng.bit_generator.state = checkpoint["action_rng"]
        restore_rng_state(checkpoint["rng"])

    # -- results --------------------------------------------------------------------------
    def _result(self, interrupted: bool) -> SearchResult:
        assert self.best is not None and self.float_accuracy is not None
        best = self.history[self.best]
        policy = Policy.from_bits(self.layers, best.bits, **self._provenance(best))
        u, uniform = self.uniform, None
        if u is not None:
            uniform = UniformBaseline(
                bits=int(u["bits"]), accuracy=float(u["accuracy"]), cost=float(u["cost"]),
                cost_fraction=float(u["cost_fraction"]),
                policy=Policy.from_bits(self.layers, [tuple(p) for p in u["policy"]], source="uniform baseline"),
            )
        result = SearchResult(
            policy=policy, history=list(self.history), float_accuracy=self.float_accuracy, uniform=uniform,
            best_episode=self.best, budget=self.env.budget, layers=self.layers, cost_table=self.table,
            interrupted=interrupted, output_dir=self.output_dir, timings=dict(self.timings),
        )
        result.summary = summary_text(result)
        return result

    def _provenance(self, best: EpisodeRecord) -> dict[str, Any]:
        budget = self.env.budget
        search_settings = {k: v for k, v in self.settings.items()
                           if k not in ("hardware", "backend", "layers", "float_accuracy_given")}
        search_settings["episodes"] = self.episodes
        search_settings["episodes_run"] = len(self.history)
        if self.strategy != "ddpg":
            search_settings.pop("ddpg")
        return _jsonable({
            "haq_plugin_version": _package_version(), "torch_version": torch.__version__,
            "hardware": self.settings["hardware"], "backend": self.settings["backend"],
            "constraint": self.constraint,
            "budget": {"fraction": budget.fraction, "absolute": budget.absolute,
                       "reference_8bit": budget.reference, "unit": UNITS[self.constraint]},
            "achieved": {"cost": best.cost, "cost_fraction": best.cost_fraction, "accuracy": best.accuracy,
                         "float_accuracy": self.float_accuracy, "episode": best.episode},
            "uniform_baseline": None if self.uniform is None else
            {k: self.uniform[k] for k in ("bits", "accuracy", "cost", "cost_fraction")},
            "search": search_settings,
        })

    def _interrupted(self) -> SearchInterrupted:
        checkpoint = self.output_dir / outputs.CHECKPOINT if self.output_dir and self.history else None
        if not self.history:
            return SearchInterrupted(None, checkpoint)
        result = self._result(interrupted=True)
        if self.output_dir is not None:
            result.files["episodes"] = outputs.write_episodes_csv(self.output_dir, self.history)
        return SearchInterrupted(result, checkpoint)

    def _finish(self) -> SearchResult:
        result = self._result(interrupted=False)
        if self.output_dir is not None:
            result.files = outputs.write_search_outputs(result, self.backend)
        get_plugin_manager().notify("haq_search_finished", result=result)
        return result


def _hardware_line(result: SearchResult, bits: list[BitPair]) -> str:
    """Latency and energy of a policy against the uniform 8-bit policy, whatever the constraint was."""
    table = result.cost_table
    parts = []
    for metric, unit in (("latency", "s"), ("energy", "J")):
        if metric == "energy" and table.energy is None:
            parts.append("energy: no energy model")
            continue
        cost, eight = table.policy_cost(metric, bits), table.uniform_cost(metric, 8)
        parts.append(f"{metric} {cost:.4g} {unit} = {cost / eight:.3f} x 8-bit ({eight / cost:.2f}x lower)")
    return "Against uniform 8-bit: " + "; ".join(parts) + "."


def summary_text(result: SearchResult) -> str:
    """A few lines: what was searched, what was found, and how it compares."""
    prov = result.policy.provenance
    b, unit = result.budget, prov["budget"]["unit"]
    best = result.history[result.best_episode]
    u = result.uniform
    s = prov["search"]
    runs = f"{len(result.history)} of {s['episodes']} episodes" if result.interrupted else \
        f"{len(result.history)} episode(s)"
    return "\n".join([
        f"Strategy {s['strategy']} ({runs}, seed {s['seed']}) on hardware '{prov['hardware']['name']}' "
        f"with backend '{prov['backend']['name']}'{' [interrupted]' if result.interrupted else ''}.",
        f"Budget: {b.constraint} <= {b.fraction:g} x 8-bit = {b.absolute:.6g} {unit}.",
        f"Best policy (episode {best.episode}): accuracy {best.accuracy:.2f}% (float {result.float_accuracy:.2f}%, "
        f"{best.accuracy - result.float_accuracy:+.2f}), {b.constraint} {best.cost_fraction:.4f} x 8-bit "
        f"({best.cost:.6g} {unit}).",
        _hardware_line(result, best.bits),
        "No uniform policy fits the budget." if u is None else
        f"Best uniform policy within budget: w{u.bits}/a{u.bits}, accuracy {u.accuracy:.2f}%, "
        f"{b.constraint} {u.cost_fraction:.4f} x 8-bit; mixed precision {best.accuracy - u.accuracy:+.2f} points.",
    ])
