"""The search loop: one :class:`SearchRun` per :func:`~haq_plugin.engine.search.search` call.

A run extracts the layers, builds the search space and the cost table, then runs
episodes in rounds (one episode per round, HAQ's loop, or ``workers`` at once on
Ray actors), evaluating each proposed policy through the backend, checkpointing
after every round and writing the outputs at the end.  The entry points and what
they guarantee are described in :mod:`haq_plugin.engine.search`.
"""


from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from torch import nn

from haq_plugin.api.backend import QuantBackend, prepare_for_search
from haq_plugin.api.bits import BitPair
from haq_plugin.api.errors import HaqError
from haq_plugin.api.hardware import HardwareModel
from haq_plugin.api.layers import extract_layers
from haq_plugin.api.plugins import get_plugin_manager, plugin_sources
from haq_plugin.api.policy import Policy
from haq_plugin.api.quantize_mode import use_quantize_mode
from haq_plugin.engine.agent import DDPGAgent
from haq_plugin.engine.costs import UNITS, build_cost_table, with_backend_storage
from haq_plugin.engine.unit_environment import build_environment
from haq_plugin.engine.environment import STATE_DIM
from haq_plugin.engine.eval_fn import EvaluationError, checked_eval_fn, explain
from haq_plugin.engine.backend_faults import BackendFault, contained
from haq_plugin.engine.evaluate import float_accuracy, timed_evaluation
from haq_plugin.engine.placement import Placement
from haq_plugin.engine.results import EpisodeRecord, PluginChoice, SearchInterrupted, SearchResult, UniformBaseline
from haq_plugin.engine.greedy import greedy_policy
from haq_plugin.engine.metric import metric_named
from haq_plugin.engine.results import jsonable, provenance
from haq_plugin.engine.settings import SearchSettings
from haq_plugin.engine.space import build_space, check_constraint
from haq_plugin.engine.workers import EpisodeJob, RayPool, WorkerPayload
from haq_plugin.storage import checkpoint
from haq_plugin.storage.checkpoint import CHECKPOINT, Checkpoint
from haq_plugin.storage.outputs import open_output_dir
from haq_plugin.storage.report import summary_text, write_episodes_csv, write_search_outputs
from haq_plugin.storage.rng import capture_rng_state, restore_rng_state, seed_everything
from haq_plugin.tasks.validation import check_calibration


class SearchRun:
    """State of one search call; :meth:`execute` runs it from start or checkpoint to the end."""

    def __init__(self, *, model: nn.Module, example_input: Any, settings: SearchSettings,
                 hardware: HardwareModel, backend: QuantBackend, eval_fn: Callable[[nn.Module], float],
                 calibration_data: Iterable[Any], train_data: Iterable[Any] | None, progress: bool,
                 use_cache: bool, placement: Placement = Placement()) -> None:
        self.model, self.example_input, self.settings = model, example_input, settings
        self.cpu_model, self.placement, self.user_eval_fn = model, placement, eval_fn
        self.hardware, self.backend = hardware, backend
        self.metric = metric_named(settings.metric)
        self.eval_fn = checked_eval_fn(eval_fn, self.metric)
        self.train_data, self.progress = train_data, progress
        self.calibration_data = check_calibration(model, calibration_data)
        check_constraint(hardware, settings.constraint)
        self.layers = extract_layers(model, example_input)
        self.names = [layer.name for layer in self.layers]
        self.space = build_space(self.layers, hardware, backend, settings)
        self.table = with_backend_storage(
            build_cost_table(hardware, self.layers, bits=self.space.table_bits, cache=use_cache), backend)
        self.env = build_environment(
            self.layers, self.table, constraint=settings.constraint, budget=float(settings.budget),
            bits_per_weight=settings.bits_per_weight, decisions=settings.decisions, quantize=str(settings.quantize),
            allowed=self.space.allowed, fixed=self.space.fixed)
        use_quantize_mode(backend, settings.quantize)
        self.identity = jsonable({
            "hardware": PluginChoice(hardware.name, hardware.config).to_dict(),
            "backend": PluginChoice(backend.name, backend.config).to_dict(),
            "layers": [[layer.name, layer.shape_key()] for layer in self.layers],
            "allowed_bits": list(self.space.allowed),
        })
        self.float_accuracy = settings.float_accuracy
        self.agent: DDPGAgent | None = None
        self.action_rng = np.random.default_rng(settings.seed)
        self.history: list[EpisodeRecord] = []
        self.best: int | None = None
        self.uniform: UniformBaseline | None = None
        self.timings = {"setup": 0.0, "loop": 0.0, "eval": 0.0, "agent": 0.0, "checkpoint": 0.0}
        self.output_dir: Path | None = None
        self.pool: RayPool | None = None

    # -- driver -------------------------------------------------------------------------
    def execute(self, output_dir: str | Path | None, resume: bool, force: bool) -> SearchResult:
        if output_dir is None:
            return self._run(None)
        self.output_dir, lock = open_output_dir(Path(output_dir), resume, force)
        try:
            restored = self._load_checkpoint() if resume else None
            return self._run(restored)
        finally:
            lock.release()

    def _run(self, restored: Checkpoint | None) -> SearchResult:
        done = len(restored.history) if restored is not None else 0
        if (self.settings.workers > 1 and self.settings.strategy not in ("uniform", "greedy")
                and done < self.settings.episodes):
            # started first: the actors prepare their backends while this process does its own set-up
            self.pool = RayPool(self.settings.workers, self._worker_payload(), self.placement.ray_address)
        try:
            return self._search(restored)
        finally:
            if self.pool is not None:
                self.pool.close()
                self.pool = None

    def _search(self, restored: Checkpoint | None) -> SearchResult:
        start = time.perf_counter()
        s = self.settings
        if s.strategy == "ddpg":
            self.agent = DDPGAgent(STATE_DIM, self.env.n_steps, s.ddpg, s.seed)
        seed_everything(s.seed)
        on_device = self.placement.place(self.model, self.example_input, self.calibration_data, self.train_data)
        self.model, self.example_input, self.calibration_data, self.train_data = on_device
        if restored is None and self.float_accuracy is None:
            self.float_accuracy = self._evaluate_float()
        with contained(self.backend, "prepare"):
            prepare_for_search(self.backend, self.model, self.example_input, self.calibration_data, self.layers)
        self.placement.place_backend(self.backend)
        if restored is None:
            self.uniform = self._evaluate_uniform()
        else:
            self._restore(restored)
        self.timings["setup"] = time.perf_counter() - start
        get_plugin_manager().notify("haq_search_started", info=self._start_info(resumed=restored is not None))
        if s.strategy == "uniform":
            self._run_uniform_strategy()
        elif s.strategy == "greedy":
            self._run_greedy_strategy()
        else:
            self._run_episodes()
        return self._finish()

    def _start_info(self, resumed: bool) -> dict[str, Any]:
        budget, constraint = self.env.budget, self.settings.constraint
        return {"layers": list(self.names), "hardware": self.identity["hardware"], "backend": self.identity["backend"],
                "constraint": constraint, "budget": {"fraction": budget.fraction, "absolute": budget.absolute,
                                                     "unit": UNITS[constraint]},
                "settings": {**self.settings.to_dict(), **self.identity}, "episodes": self.settings.episodes,
                "start_episode": len(self.history), "resumed": resumed, "float_accuracy": self.float_accuracy,
                "output_dir": str(self.output_dir) if self.output_dir else None}

    # -- evaluation ---------------------------------------------------------------------
    def _evaluate_float(self) -> float:
        """The float model's accuracy: also the check that eval_fn answers in percent, before any episode."""
        try:
            return float_accuracy(self.model, self.eval_fn)
        except EvaluationError as exc:
            hint = "" if self.placement.on_cpu else (
                f" The model is on {self.placement.device} (device): eval_fn must move its batches there, e.g. "
                "with haq_plugin.engine.device.on_model_device(batch, model).")
            raise EvaluationError(explain(exc, "the float model (before the first episode)", metric=self.metric)
                                  + hint) from exc

    def _evaluate(self, bits: Sequence[BitPair], what: str) -> tuple[float, float]:
        """Accuracy of a policy through this process's backend, and the seconds it took."""
        try:
            return timed_evaluation(self.backend, dict(zip(self.names, bits)), self.eval_fn,
                                    self.settings.finetune_steps, self.train_data)
        except EvaluationError as exc:
            raise self._evaluation_failed(exc, what) from exc
        except BackendFault as exc:
            raise self._backend_failed(exc, what) from exc

    def _backend_failed(self, exc: BackendFault, what: str) -> BackendFault:
        """A backend fault while evaluating ``what``, with the finished episodes saved for a resume."""
        if self.output_dir is None or not self.history:
            return exc
        write_episodes_csv(self.output_dir, self.history)
        return BackendFault(f"{exc} (while evaluating {what}; the {len(self.history)} finished episode(s) are "
                            f"saved: haq-plugin search --resume {self.output_dir} once it is fixed)")

    def _evaluate_round(self, jobs: Sequence[EpisodeJob]) -> list[tuple[float, float]]:
        """(accuracy, seconds) of each job: here one by one, or at once on the worker pool."""
        if self.pool is None:
            return [self._evaluate(job.bits, f"episode {job.episode}") for job in jobs]
        outcomes = self.pool.evaluate(jobs)
        for job, outcome in zip(jobs, outcomes):
            if outcome.error is not None:
                raise self._evaluation_failed(EvaluationError(outcome.error), f"episode {job.episode}")
        return [(float(outcome.accuracy), outcome.eval_seconds) for outcome in outcomes]  # type: ignore[arg-type]

    def _evaluation_failed(self, exc: EvaluationError, what: str) -> EvaluationError:
        """Stop with what is saved: the finished episodes are in the checkpoint, ready to resume."""
        if self.output_dir is None or not self.history:
            return EvaluationError(explain(exc, what, metric=self.metric))
        write_episodes_csv(self.output_dir, self.history, self.settings.metric)
        return EvaluationError(explain(exc, what, self.output_dir, len(self.history), metric=self.metric),
                               checkpoint=self.output_dir / CHECKPOINT)

    def _evaluate_uniform(self) -> UniformBaseline | None:
        found = self.env.best_uniform()
        if found is None:
            if self.settings.strategy == "uniform":
                raise HaqError(
                    f"No uniform policy fits the {self.settings.constraint} budget of {self.env.budget.fraction:g} "
                    f"on hardware '{self.hardware.name}' (its cheapest policy mixes widths); use strategy 'ddpg' "
                    "or 'random', or raise the budget.")
            return None
        bits, policy = found
        accuracy, _ = self._evaluate(policy, f"the uniform w{bits}/a{bits} baseline")
        cost = self.env.cost(policy)
        return UniformBaseline(bits=bits, accuracy=accuracy, cost=cost, cost_fraction=cost / self.env.budget.reference,
                               policy=Policy.from_bits(self.layers, policy, source="uniform baseline"))

    # -- strategies ---------------------------------------------------------------------
    def _run_uniform_strategy(self) -> None:
        """The 'uniform' strategy: its one policy is the baseline already evaluated."""
        if self.history:
            return
        assert self.uniform is not None  # checked in _evaluate_uniform
        self._record(0, self.uniform.policy.as_list(), self.uniform.accuracy, None, 0.0, 0.0)
        self._save_checkpoint()
        get_plugin_manager().notify("haq_episode_finished", record=self.history[-1].to_dict())

    def _run_greedy_strategy(self) -> None:
        """The 'greedy' strategy: measure every unit's loss per width, choose, evaluate the one policy."""
        if self.history:
            return
        start = time.perf_counter()
        bits, measured = greedy_policy(
            self.env, lambda layer_bits: self._evaluate(layer_bits, "a greedy measurement")[0], self.metric,
            self.float_accuracy, memo=(self.backend, (id(self.user_eval_fn), tuple(self.names))),
            progress=self.progress)
        self.timings["greedy_measurements"] = float(measured)
        accuracy, eval_seconds = self._evaluate(bits, "the greedy policy")
        self._record(0, bits, accuracy, None, eval_seconds, time.perf_counter() - start)
        self._save_checkpoint()
        get_plugin_manager().notify("haq_episode_finished", record=self.history[-1].to_dict())

    def _propose(self) -> tuple[list[BitPair], np.ndarray, np.ndarray]:
        """One episode of actions: the bits within budget, and the states and actions seen."""
        states = np.zeros((self.env.n_steps, STATE_DIM))
        actions = np.zeros(self.env.n_steps)
        state: np.ndarray | None = self.env.reset()
        for t in range(self.env.n_steps):
            assert state is not None
            states[t] = state
            actions[t] = self.agent.act(state) if self.agent is not None else self.action_rng.uniform(0.0, 1.0)
            state = self.env.step(actions[t])
        return self.env.enforce_budget(self.env.chosen_bits()), states, actions

    def _round(self, size: int) -> list[EpisodeRecord]:
        """``size`` episodes from the current actor: propose all, evaluate them together, then learn from each.

        With one worker a round is one episode, exactly HAQ's loop.  The round's
        episodes share the current exploration sigma, each with its own noise;
        the checkpoint is written once the whole round is recorded.
        """
        started = time.perf_counter()
        sigma = self.agent.sigma if self.agent is not None else None
        first = len(self.history)
        proposals = [self._propose() for _ in range(size)]
        results = self._evaluate_round([EpisodeJob(first + i, bits) for i, (bits, _, _) in enumerate(proposals)])
        learn_start = time.perf_counter()
        if self.agent is not None:
            for (_, states, actions), (accuracy, _) in zip(proposals, results):
                self.agent.observe_episode(states, actions, self.metric.reward(accuracy, self.float_accuracy))
        self.timings["agent"] += time.perf_counter() - learn_start
        seconds = (time.perf_counter() - started) / size
        records = [self._record(first + i, bits, accuracy, sigma, eval_seconds, seconds)
                   for i, ((bits, _, _), (accuracy, eval_seconds)) in enumerate(zip(proposals, results))]
        self._save_checkpoint()
        for record in records:
            get_plugin_manager().notify("haq_episode_finished", record=record.to_dict())
        return records

    def _run_episodes(self) -> None:
        from tqdm import tqdm

        s = self.settings
        bar = tqdm(total=s.episodes, initial=len(self.history), desc=f"HAQ {s.strategy}", unit="ep",
                   file=sys.stderr, disable=not self.progress, dynamic_ncols=True)
        loop_start = time.perf_counter()
        try:
            while len(self.history) < s.episodes:
                for record in self._round(min(s.workers, s.episodes - len(self.history))):
                    self._update_bar(bar, record)
        except KeyboardInterrupt:
            raise self._interrupted() from None
        finally:
            self.timings["loop"] += time.perf_counter() - loop_start
            bar.close()

    def _worker_payload(self) -> WorkerPayload:
        """What each worker needs, taken before anything moves to the device; sent once via Ray's object store."""
        return WorkerPayload.for_backend(
            self.backend, model=self.cpu_model, example_input=self.example_input,
            calibration_data=list(self.calibration_data),
            train_data=None if self.train_data is None else list(self.train_data),
            eval_fn=self.user_eval_fn, layers=self.layers, quantize=self.settings.quantize, metric=self.settings.metric,
            finetune_steps=self.settings.finetune_steps, seed=self.settings.seed,
            device=str(self.placement.device))

    def _record(self, episode: int, bits: Sequence[BitPair], accuracy: float, sigma: float | None,
                eval_seconds: float, seconds: float) -> EpisodeRecord:
        cost = self.env.cost(bits)
        is_best = self.best is None or self.metric.is_better(accuracy, self.history[self.best].accuracy)
        record = EpisodeRecord(
            episode=episode, strategy=self.settings.strategy, bits=[tuple(p) for p in bits],  # type: ignore[misc]
            cost=cost, cost_fraction=cost / self.env.budget.reference, accuracy=accuracy,
            reward=self.metric.reward(accuracy, self.float_accuracy), sigma=sigma, is_best=is_best,
            seconds=seconds, eval_seconds=eval_seconds,
        )
        self.history.append(record)
        if is_best:
            self.best = len(self.history) - 1
        self.timings["eval"] += eval_seconds
        return record

    def _update_bar(self, bar: Any, record: EpisodeRecord) -> None:
        label = "acc" if self.metric.higher_is_better else "ppl"
        bar.set_postfix_str(f"{label} {record.accuracy:.2f} best {self.history[self.best].accuracy:.2f} "  # type: ignore
                            f"{self.settings.constraint} {record.cost_fraction:.3f}/{self.env.budget.fraction:.3f}",
                            refresh=False)
        bar.update(1)

    # -- checkpoint -----------------------------------------------------------------------
    def _save_checkpoint(self) -> None:
        if self.output_dir is None:
            return
        start = time.perf_counter()
        checkpoint.save(self.output_dir / CHECKPOINT, Checkpoint(
            settings=self.settings, run=self.identity, float_accuracy=self.float_accuracy,
            uniform=self.uniform.to_dict() if self.uniform is not None else None, history=self.history,
            best=self.best, agent=self.agent.state_dict() if self.agent is not None else None,
            action_rng=self.action_rng.bit_generator.state, rng=capture_rng_state()))
        self.timings["checkpoint"] += time.perf_counter() - start

    def _load_checkpoint(self) -> Checkpoint:
        """The checkpoint to continue, checked against these settings (only episodes may differ)."""
        assert self.output_dir is not None
        checkpoint.remove_stale_temporaries(self.output_dir)
        saved = checkpoint.load(self.output_dir / CHECKPOINT)
        saved.check_resumable(self.settings, self.identity)
        return saved

    def _restore(self, saved: Checkpoint) -> None:
        self.float_accuracy = saved.float_accuracy
        self.uniform = None if saved.uniform is None else UniformBaseline.from_dict(saved.uniform, self.layers)
        self.history, self.best = list(saved.history), saved.best
        if self.agent is not None:
            self.agent.load_state_dict(saved.agent)  # type: ignore[arg-type]
        self.action_rng.bit_generator.state = saved.action_rng
        restore_rng_state(saved.rng)

    # -- results --------------------------------------------------------------------------
    def _result(self, interrupted: bool) -> SearchResult:
        assert self.best is not None and self.float_accuracy is not None
        best = self.history[self.best]
        result = SearchResult(
            policy=Policy.from_bits(self.layers, best.bits, **provenance(
                self.settings, self.identity, self.env.budget, best, self.float_accuracy, self.uniform,
                len(self.history), plugin_sources(self.hardware, self.backend))), history=list(self.history),
            float_accuracy=self.float_accuracy, uniform=self.uniform, best_episode=self.best,
            budget=self.env.budget, layers=self.layers, cost_table=self.table, settings=self.settings,
            hardware=PluginChoice(**self.identity["hardware"]), backend=PluginChoice(**self.identity["backend"]),
            allowed_bits=self.space.allowed, interrupted=interrupted, output_dir=self.output_dir,
            timings=dict(self.timings),
        )
        result.summary = summary_text(result)
        return result

    def _interrupted(self) -> SearchInterrupted:
        checkpoint_path = self.output_dir / CHECKPOINT if self.output_dir and self.history else None
        if not self.history:
            return SearchInterrupted(None, checkpoint_path)
        result = self._result(interrupted=True)
        if self.output_dir is not None:
            result.files["episodes"] = write_episodes_csv(self.output_dir, self.history, self.settings.metric)
        return SearchInterrupted(result, checkpoint_path)

    def _finish(self) -> SearchResult:
        result = self._result(interrupted=False)
        if self.output_dir is not None:
            result.files = write_search_outputs(result, self.backend)
        get_plugin_manager().notify("haq_search_finished", result=result)
        return result

