"""Episode evaluation, in this process or on a pool of Ray actors (``--workers N``).

Evaluating a policy (set bits, calibrate, finetune, measure) is what a search
spends its time on, and policies of one round are independent, so a search
with ``workers > 1`` evaluates each round's N policies at once on N Ray actors.

* Each actor evaluates a policy with :func:`haq_plugin.engine.evaluate.evaluate_policy`, the
  one definition of "evaluate a policy on a prepared backend" that the driver uses too.
* :class:`WorkerPayload` is everything an actor needs.  It is put into Ray's
  object store once and every actor reads it once, when it starts: model and
  data never travel per episode; a round sends only bits and gets accuracies.
* :class:`EvaluationActor` holds its own prepared backend.  It reseeds the
  global generators from (seed, episode) before each evaluation, so an
  episode's accuracy does not depend on which actor ran it or what it ran
  before; that makes a search with the same seed and N the same bit for bit,
  resumed or not.
* :class:`RayPool` starts a local Ray (or joins ``ray_address``), places the
  actors (one CPU each, and a share of a GPU on CUDA), and stops what it
  started, also on Ctrl-C.

Ray is an optional dependency; :func:`require_ray` says how to install it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from haq_plugin.api.backend import QuantBackend, prepare_for_search
from haq_plugin.api.bits import BitPair
from haq_plugin.storage.rng import seed_everything
from haq_plugin.engine.backend_faults import contained
from haq_plugin.engine.evaluate import timed_evaluation
from haq_plugin.api.errors import HaqError
from haq_plugin.engine.eval_fn import EvaluationError, checked_eval_fn
from haq_plugin.engine.metric import metric_named
from haq_plugin.api.layers import LayerSpec
from haq_plugin.api.quantize_mode import use_quantize_mode
from haq_plugin.engine.placement import Placement

RAY_INSTALL = 'pip install torch==2.13.0 -e ".[ray]"  (or: pip install "haq-plugin[ray]")'
CONNECT_TIMEOUT_S = 5.0


def episode_seed(seed: int, episode: int) -> int:
    """The seed of the global generators for one episode's evaluation on a worker."""
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])


@dataclass(frozen=True)
class EpisodeJob:
    """One policy to evaluate: what the driver sends per episode."""

    episode: int
    bits: list[BitPair]


@dataclass(frozen=True)
class EpisodeOutcome:
    """What an actor sends back: the accuracy, or the evaluation's error message."""

    accuracy: float | None
    eval_seconds: float
    error: str | None = None


@dataclass
class WorkerPayload:
    """Everything an actor needs to evaluate policies, on the CPU (each actor moves it to its device)."""

    model: nn.Module
    example_input: Any
    calibration_data: Sequence[Any]
    train_data: Iterable[Any] | None
    eval_fn: Callable[[nn.Module], float]
    backend_class: type
    backend_options: dict[str, Any]
    loss_fn: Any
    layers: list[LayerSpec]
    quantize: str
    finetune_steps: int
    seed: int
    device: str
    metric: str = "accuracy"

    @classmethod
    def for_backend(cls, backend: QuantBackend, **values: Any) -> "WorkerPayload":
        """A payload whose actors build their own ``type(backend)(**options)``: a prepared backend stays local."""
        options = {key: value for key, value in backend.config.items() if value is not None}
        return cls(backend_class=type(backend), backend_options=options, loss_fn=backend.loss_fn, **values)


class EvaluationActor:
    """One worker: a prepared backend of its own, evaluating the policies the driver sends."""

    def __init__(self, payload: WorkerPayload) -> None:
        torch.set_num_threads(1)
        self.seed, self.finetune_steps = payload.seed, payload.finetune_steps
        self.names = [layer.name for layer in payload.layers]
        self.eval_fn = checked_eval_fn(payload.eval_fn, metric_named(payload.metric))
        self.train_data: Any = None
        self.failure: str | None = None
        try:
            self._prepare(payload, Placement(torch.device(payload.device)))
        except Exception as exc:  # reported by ready(): an actor that dies in __init__ tells only a traceback
            said = " ".join(str(exc).split())
            self.failure = said if isinstance(exc, HaqError) else f"{type(exc).__name__}: {said}"

    def _prepare(self, payload: WorkerPayload, placement: Placement) -> None:
        self.backend: QuantBackend = payload.backend_class(**payload.backend_options)
        self.backend.loss_fn = payload.loss_fn
        use_quantize_mode(self.backend, payload.quantize)
        model, example_input, calibration, self.train_data = placement.place(
            payload.model, payload.example_input, payload.calibration_data, payload.train_data)
        with contained(self.backend, "prepare"):
            prepare_for_search(self.backend, model, example_input, calibration, payload.layers)
        placement.place_backend(self.backend)

    def ready(self) -> str | None:
        """None once the backend is prepared, else why not (the driver asks before the first episode)."""
        return self.failure

    def evaluate(self, job: EpisodeJob) -> EpisodeOutcome:
        seed_everything(episode_seed(self.seed, job.episode))
        try:
            accuracy, seconds = timed_evaluation(self.backend, dict(zip(self.names, job.bits)), self.eval_fn,
                                                 self.finetune_steps, self.train_data)
        except EvaluationError as exc:
            return EpisodeOutcome(None, 0.0, str(exc))
        return EpisodeOutcome(accuracy, seconds)


# -- Ray --------------------------------------------------------------------------------
def require_ray(workers: int) -> Any:
    """The ``ray`` module, or a :class:`HaqError` with the install command."""
    try:
        import ray
    except ImportError:
        raise HaqError(f"workers={workers} evaluates episodes on Ray actors, but Ray is not installed. Install "
                       f"the extra: {RAY_INSTALL}; or run with --workers 1.") from None
    return ray


def check_ray_address(address: str) -> None:
    """Fail fast (seconds, not Ray's minutes of retries) when nothing listens at ``host:port``."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise HaqError(f"--ray-address {address!r} is not HOST:PORT (e.g. 10.0.0.5:6379, or 'auto' for the "
                       "cluster this machine belongs to).")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise HaqError(f"--ray-address {address}: no Ray cluster answers there ({exc.strerror or exc}). Start "
                       "one with 'ray start --head', check the address, or leave --ray-address out to run a "
                       "local Ray.") from None


class RayPool:
    """N :class:`EvaluationActor` s on Ray; :meth:`close` stops the actors and the Ray it started."""

    def __init__(self, workers: int, payload: WorkerPayload, address: str | None = None) -> None:
        self.ray = require_ray(workers)
        self.started_ray = False
        self.actors: list[Any] = []
        self._starting: list[Any] = []
        self._connect(workers, address, payload.device)
        try:
            self._start_actors(workers, payload)
        except BaseException:
            self.close()
            raise

    def _connect(self, workers: int, address: str | None, device: str) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        quiet = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
        if address is not None:
            check_ray_address(address)
            try:
                ray.init(address=address, **quiet)
            except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError...
                raise HaqError(f"--ray-address {address}: could not join the Ray cluster: "
                               f"{' '.join(str(exc).split())}") from None
        else:
            gpus = torch.cuda.device_count() if device.startswith("cuda") else 0
            ray.init(num_cpus=max(os.cpu_count() or 1, workers), num_gpus=gpus, **quiet)
        self.started_ray = True

    def _start_actors(self, workers: int, payload: WorkerPayload) -> None:
        ray = self.ray
        resources = ray.cluster_resources()
        cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
        if cpus < workers:
            raise HaqError(f"workers={workers} needs {workers} CPUs on the Ray cluster, which has {cpus:g}.")
        placement: dict[str, float] = {"num_cpus": 1}
        if payload.device.startswith("cuda"):
            if gpus <= 0:
                raise HaqError(f"device {payload.device!r} with workers={workers}: the Ray cluster has no GPU.")
            placement["num_gpus"] = min(1.0, gpus / workers)
            payload.device = "cuda"  # Ray makes each actor's own GPU its cuda:0
        shared = ray.put(payload)  # once: every actor reads this one copy
        actor_class = ray.remote(EvaluationActor)
        self.actors = [actor_class.options(**placement).remote(shared) for _ in range(workers)]
        self._starting = [actor.ready.remote() for actor in self.actors]  # awaited by the first evaluate

    def _wait_ready(self) -> None:
        """Wait for every actor's prepare; a failure is one clear error before the first episode."""
        starting, self._starting = self._starting, []
        failures = [failure for failure in self._get(starting, "starting") if failure]
        if failures:
            raise HaqError(f"a worker failed preparing the backend: {failures[0]}")

    def evaluate(self, jobs: Sequence[EpisodeJob]) -> list[EpisodeOutcome]:
        """The jobs' outcomes, in order; job i runs on actor i."""
        if self._starting:
            self._wait_ready()
        return self._get([actor.evaluate.remote(job) for actor, job in zip(self.actors, jobs)], "an episode")

    def _get(self, refs: list[Any], what: str) -> list[Any]:
        try:
            return self.ray.get(refs)
        except (self.ray.exceptions.RayTaskError, self.ray.exceptions.RayActorError) as exc:
            cause = getattr(exc, "cause", None) or exc
            if isinstance(cause, HaqError):
                raise HaqError(f"a worker failed {what}: {cause}") from None
            text = " ".join(str(cause).split())
            raise HaqError(f"a worker failed {what}: {type(cause).__name__}: {text[:600]}") from None

    def close(self) -> None:
        """Stop the actors, and Ray itself if this pool started it (idempotent)."""
        for actor in self.actors:
            try:
                self.ray.kill(actor)
            except Exception:  # an actor that already died
                pass
        self.actors = []
        if self.started_ray and self.ray.is_initialized():
            self.ray.shutdown()
        self.started_ray = False
