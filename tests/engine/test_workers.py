"""Parallel evaluation on Ray actors (``workers=N``): same results for the same seed and N, resume, errors.

The searches use the smoke test's analytic hardware and rounding backend, so each
takes seconds; the actors are real Ray actors on a local Ray started once for the
module (a search that finds Ray running uses it and leaves it running).
"""

from __future__ import annotations

import os
import socket

import pytest

from haq_plugin import HaqError, search
from haq_plugin.api.backend import prepare_for_search
from haq_plugin.engine.eval_fn import EvaluationError, checked_eval_fn
from haq_plugin.api.layers import extract_layers
from haq_plugin.api.plugins import get_plugin_manager, reset_plugin_manager
from haq_plugin.engine.results import SearchInterrupted
from haq_plugin.engine.evaluate import evaluate_policy
from haq_plugin.engine.workers import EpisodeJob, EvaluationActor, WorkerPayload, check_ray_address, episode_seed
from tests.engine.test_search_smoke import (QUICK, BitOpsHardware, RoundingBackend, history_key,  # noqa: F401
                                          task)  # task: the fixture
from tests.helpers import Interrupter

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.usefixtures("one_thread")
EPISODES = 6


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def run(task, **overrides):
    options = dict(hardware=BitOpsHardware(), backend=RoundingBackend(), constraint="latency", budget=0.85,
                   eval_fn=task["eval_fn"], calibration_data=task["calibration_data"], episodes=EPISODES,
                   ddpg=QUICK, seed=0, progress=False, keep_last_layer_8bit=False, workers=2)
    options.update(overrides)
    return search(task["model"], task["example_input"], **options)


# -- without Ray: the pieces an actor is made of -------------------------------------------
def payload_for(task, eval_fn):
    layers = extract_layers(task["model"], task["example_input"])
    return layers, WorkerPayload.for_backend(
        RoundingBackend(), model=task["model"], example_input=task["example_input"],
        calibration_data=task["calibration_data"], train_data=None, eval_fn=eval_fn, layers=layers,
        quantize="weights+activations", finetune_steps=0, seed=0, device="cpu")


def test_an_actor_evaluates_like_the_driver_whatever_it_ran_before(task):
    layers, payload = payload_for(task, task["eval_fn"])
    backend = RoundingBackend()
    prepare_for_search(backend, task["model"], task["example_input"], task["calibration_data"], layers)
    names = [layer.name for layer in layers]
    low, high = [(2, 2)] * len(names), [(8, 8)] * len(names)
    expected = evaluate_policy(backend, dict(zip(names, low)), checked_eval_fn(task["eval_fn"]))
    actor = EvaluationActor(payload)
    first = actor.evaluate(EpisodeJob(0, low))
    assert actor.evaluate(EpisodeJob(1, high)).accuracy > first.accuracy + 5 > 20
    assert first.accuracy == actor.evaluate(EpisodeJob(0, low)).accuracy == expected
    assert first.error is None and first.eval_seconds > 0


def test_an_actor_reports_a_failing_eval_fn_instead_of_dying(task):
    layers, payload = payload_for(task, lambda model: float("nan"))
    outcome = EvaluationActor(payload).evaluate(EpisodeJob(3, [(8, 8)] * len(layers)))
    assert outcome.accuracy is None and "NaN" in outcome.error


def test_episode_seeds_differ_by_episode_and_seed():
    seeds = {episode_seed(s, e) for s in range(3) for e in range(50)}
    assert len(seeds) == 150 and episode_seed(1, 7) == episode_seed(1, 7)


def test_a_ray_address_where_nothing_listens_is_refused_in_seconds():
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(HaqError, match=rf"127.0.0.1:{port}: no Ray cluster answers there"):
        check_ray_address(f"127.0.0.1:{port}")
    with pytest.raises(HaqError, match="is not HOST:PORT"):
        check_ray_address("localhost")


@pytest.mark.parametrize("workers", [0, -2, 1.5, "2"])
def test_workers_must_be_a_positive_integer(task, workers):
    with pytest.raises(HaqError, match="workers must be an integer >= 1"):
        run(task, workers=workers)


# -- on Ray ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(task, local_ray, tmp_path_factory):
    return run(task, output_dir=tmp_path_factory.mktemp("workers"))


def test_rounds_of_two_fit_the_budget_and_learn_after_warmup(reference):
    r = reference
    assert [rec.episode for rec in r.history] == list(range(EPISODES)) and not r.interrupted
    assert all(rec.cost_fraction <= 0.85 + 1e-9 for rec in r.history)
    # warmup is QUICK's 2 episodes = one round; each later round shares its sigma, decayed per episode
    assert [rec.sigma for rec in r.history] == [None, None, 0.5, 0.5, pytest.approx(0.5 * 0.99 ** 2)] * 1 + \
        [pytest.approx(0.5 * 0.99 ** 2)]
    assert len({tuple(rec.bits) for rec in r.history}) == EPISODES  # independent noise per episode
    assert r.settings.workers == 2 and r.policy.provenance["search"]["workers"] == 2


def test_same_seed_and_workers_give_the_same_search(reference, task):
    again = run(task)
    assert history_key(again) == history_key(reference) and again.policy.bits == reference.policy.bits
    other = run(task, seed=1)
    assert history_key(other) != history_key(reference)


def test_interrupt_then_resume_ends_like_an_uninterrupted_search(reference, task, tmp_path):
    get_plugin_manager().register(Interrupter(after=4), name="interrupter")
    try:
        with pytest.raises(SearchInterrupted) as info:
            run(task, output_dir=tmp_path)
    finally:
        reset_plugin_manager()
    assert len(info.value.result.history) == 4  # two whole rounds are in the checkpoint
    resumed = run(task, output_dir=tmp_path, resume=True)
    assert history_key(resumed) == history_key(reference) and resumed.policy.bits == reference.policy.bits


def test_an_eval_fn_failing_on_a_worker_is_reported_with_its_episode(task, local_ray, tmp_path):
    driver = os.getpid()

    def fails_on_workers(model):  # fine in this process (float and uniform); NaN on the workers
        return task["eval_fn"](model) if os.getpid() == driver else float("nan")

    with pytest.raises(EvaluationError, match=r"eval_fn returned NaN while evaluating episode 0"):
        run(task, eval_fn=fails_on_workers, output_dir=tmp_path)


def test_a_backend_failing_on_a_worker_is_one_clear_error(task, local_ray):
    class FailsOnWorkers(RoundingBackend):
        """Prepares in the driver's process only (as a backend needing a library the workers lack)."""

        name = "fails-on-workers"
        driver_pid = os.getpid()

        def prepare(self, model, example_input, calibration_data, layers=None):
            if os.getpid() != self.driver_pid:
                raise RuntimeError("no GPU driver here")
            super().prepare(model, example_input, calibration_data, layers)

    with pytest.raises(HaqError, match=r"a worker failed preparing the backend: backend 'fails-on-workers' .*failed in "
                                     r"prepare\(\): raised RuntimeError: no GPU driver here"):
        run(task, backend=FailsOnWorkers())
