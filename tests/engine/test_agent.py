"""The DDPG agent: architecture, exploration, replay, learning and bit-exact checkpoints."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from haq_plugin.engine.agent import Actor, Critic, DDPGAgent, DDPGConfig, ReplayBuffer
from haq_plugin.api.errors import HaqError

STEPS = 4


pytestmark = pytest.mark.usefixtures("one_thread")


def toy_states(steps: int = STEPS) -> np.ndarray:
    states = np.zeros((steps, 10))
    states[:, 0] = np.arange(steps) / (steps - 1)
    states[0::2, 8] = 1.0
    return states


def run_episodes(agent: DDPGAgent, episodes: int, target: float) -> None:
    """Episodes whose reward is highest when every action equals ``target``."""
    states = toy_states(agent.steps_per_episode)
    for _ in range(episodes):
        actions = np.array([agent.act(s) for s in states])
        agent.observe_episode(states, actions, 1.0 - 4.0 * float(np.mean((actions - target) ** 2)))


def test_networks_have_the_reference_architecture():
    g = torch.Generator().manual_seed(0)
    actor, critic = Actor(10, 300, 3e-3, g), Critic(10, 300, 3e-3, g)
    shapes = [tuple(p.shape) for p in actor.parameters()]
    assert shapes == [(300, 10), (300,), (300, 300), (300,), (1, 300), (1,)]
    assert [type(m).__name__ for m in actor.net] == ["Linear", "ReLU", "Linear", "ReLU", "Linear", "Sigmoid"]
    assert [tuple(p.shape) for p in critic.parameters()] == [
        (300, 10), (300,), (300, 1), (300,), (300, 300), (300,), (1, 300), (1,)]
    out = actor(torch.rand(64, 10))
    assert out.shape == (64, 1) and torch.all((out > 0) & (out < 1))
    assert critic(torch.rand(64, 10), out).shape == (64, 1)
    assert actor.net[4].weight.abs().max() <= 3e-3, "small final layer: actions start near 0.5"


def test_agent_never_touches_the_global_random_generators():
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    agent = DDPGAgent(10, STEPS, DDPGConfig(warmup_episodes=1), seed=3)
    run_episodes(agent, 3, 0.5)
    assert torch.equal(torch_state, torch.get_rng_state())
    assert np.array_equal(np_state, np.random.get_state()[1])


def test_warmup_actions_are_uniform_and_do_not_train():
    agent = DDPGAgent(10, STEPS, DDPGConfig(warmup_episodes=5, updates_per_episode=0), seed=11)
    expected = np.random.default_rng(11).uniform(0.0, 1.0, 5 * STEPS)
    states = toy_states()
    actions = []
    before = [p.clone() for p in agent.actor.parameters()]
    for _ in range(5):
        assert agent.warming_up and agent.sigma is None
        episode = [agent.act(s) for s in states]
        actions += episode
        agent.observe_episode(states, np.array(episode), 0.3)
    assert np.allclose(actions, expected)
    assert agent.updates == 0 and all(torch.equal(a, b) for a, b in zip(before, agent.actor.parameters()))
    assert not agent.warming_up
    agent.observe_episode(states, np.full(STEPS, 0.5), 0.3)
    assert agent.updates == STEPS, "one gradient update per stored transition"


def test_noise_schedule_decays_from_the_end_of_warmup():
    agent = DDPGAgent(10, STEPS, DDPGConfig(warmup_episodes=20), seed=0)
    agent.episodes_seen = 20
    assert agent.sigma == 0.5
    agent.episodes_seen = 120
    assert agent.sigma == pytest.approx(0.5 * 0.99 ** 100)


def test_truncated_normal_stays_in_range_and_is_truncated_not_clipped():
    agent = DDPGAgent(10, STEPS, seed=0)
    samples = np.array([agent._truncated_normal(0.9, 0.5) for _ in range(4000)])
    assert samples.min() >= 0.0 and samples.max() <= 1.0
    assert np.mean(samples == 1.0) == 0.0, "clipping would put mass on the boundary"
    assert samples.mean() == pytest.approx(truncated_normal_mean(0.9, 0.5), abs=0.015)
    narrow = np.array([agent._truncated_normal(0.3, 0.01) for _ in range(500)])
    assert narrow.mean() == pytest.approx(0.3, abs=0.002)


def truncated_normal_mean(mu: float, sigma: float) -> float:
    """Mean of N(mu, sigma) restricted to [0, 1] (closed form)."""
    pdf = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    lo, hi = (0 - mu) / sigma, (1 - mu) / sigma
    return mu + sigma * (pdf(lo) - pdf(hi)) / (cdf(hi) - cdf(lo))


def test_replay_buffer_wraps_around_in_order():
    buffer = ReplayBuffer(5, 2)
    for start in (0, 3):
        n = 3
        states = torch.arange(start, start + n, dtype=torch.float32)[:, None].repeat(1, 2)
        buffer.add_many(states, states[:, :1], states[:, :1], states, torch.zeros(n, 1))
    assert buffer.size == 5 and buffer.position == 1
    assert buffer.states[:, 0].tolist() == [5.0, 1.0, 2.0, 3.0, 4.0]


def test_observed_episode_is_stored_with_final_reward_and_terminal_last_step():
    agent = DDPGAgent(10, STEPS, DDPGConfig(warmup_episodes=3), seed=0)
    states = toy_states()
    agent.observe_episode(states, np.array([0.1, 0.2, 0.3, 0.4]), reward=-0.7)
    b = agent.buffer
    assert b.capacity == 128 * STEPS and b.size == STEPS
    assert torch.allclose(b.rewards[:STEPS, 0], torch.full((STEPS,), -0.7))
    assert b.dones[:STEPS, 0].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert torch.allclose(b.next_states[:STEPS - 1], torch.as_tensor(states[1:], dtype=torch.float32))
    assert torch.allclose(b.actions[:STEPS, 0], torch.tensor([0.1, 0.2, 0.3, 0.4]))


@pytest.mark.parametrize("target", [0.8, 0.2])
def test_agent_learns_the_rewarded_action(target):
    agent = DDPGAgent(10, STEPS, DDPGConfig(warmup_episodes=10, buffer_episodes=64), seed=0)
    run_episodes(agent, 80, target)
    actions = np.array([agent.policy_action(s) for s in toy_states()])
    # every action moved from the initial 0.5 towards the rewarded value, and not past it by as much
    assert np.all(np.abs(actions - target) < np.abs(0.5 - target)), actions
    assert agent.baseline is not None and agent.updates == 70 * STEPS


def test_state_dict_round_trip_continues_bit_for_bit():
    config = DDPGConfig(warmup_episodes=2, hidden=64)
    agent = DDPGAgent(10, STEPS, config, seed=5)
    run_episodes(agent, 4, 0.7)
    blob = io.BytesIO()
    torch.save(agent.state_dict(), blob)
    blob.seek(0)
    restored = DDPGAgent(10, STEPS, config, seed=99)  # another seed: everything must come from the state
    restored.load_state_dict(torch.load(blob, weights_only=True))
    run_episodes(agent, 3, 0.7)
    run_episodes(restored, 3, 0.7)
    for a, b in zip(agent.state_dict()["actor"].values(), restored.state_dict()["actor"].values()):
        assert torch.equal(a, b)
    for a, b in zip(agent.critic_target.parameters(), restored.critic_target.parameters()):
        assert torch.equal(a, b)
    assert agent.baseline == restored.baseline
    states = toy_states()
    assert [agent.act(s) for s in states] == [restored.act(s) for s in states]


def test_load_state_dict_refuses_another_configuration():
    state = DDPGAgent(10, STEPS, DDPGConfig(hidden=32), seed=0).state_dict()
    with pytest.raises(HaqError, match="another configuration"):
        DDPGAgent(10, STEPS, DDPGConfig(hidden=64), seed=0).load_state_dict(state)


@pytest.mark.parametrize("field,value", [("batch_size", 0), ("tau", 1.5), ("lr_actor", -1.0),
                                         ("warmup_episodes", -1), ("sigma_decay", 2.0)])
def test_config_rejects_impossible_values(field, value):
    with pytest.raises(HaqError, match=field):
        DDPGConfig(**{field: value})


@pytest.mark.parametrize("field,value,allowed", [
    ("lr_actor", math.inf, "a finite number > 0"), ("lr_critic", math.nan, "a finite number > 0"),
    ("initial_sigma", math.inf, "a finite number >= 0"), ("tau", math.nan, "a finite number in \\[0, 1\\]"),
    ("final_layer_init", -math.inf, "a finite number > 0"), ("hidden", 2.5, "an integer > 0"),
    ("batch_size", True, "an integer > 0"), ("lr_actor", "0.1", "a finite number > 0")])
def test_config_rejects_non_finite_values_naming_the_range(field, value, allowed):
    with pytest.raises(HaqError, match=f"DDPGConfig.{field} must be {allowed}, got"):
        DDPGConfig(**{field: value})


def test_config_accepts_numpy_numbers():
    c = DDPGConfig(hidden=np.int64(16), lr_actor=np.float64(1e-3))
    assert (c.hidden, c.lr_actor) == (16, 1e-3)


@pytest.mark.parametrize("mean,sigma", [(math.nan, 0.5), (0.5, 1e300), (40.0, 1e-3), (math.inf, 0.2)])
def test_exploration_noise_never_hangs_and_warns_once(mean, sigma):
    agent = DDPGAgent(10, STEPS, DDPGConfig(), seed=0)
    with pytest.warns(RuntimeWarning, match="clipped") as caught:
        draws = [agent._truncated_normal(mean, sigma) for _ in range(3)]
    assert len(caught) == 1
    assert all(0.0 <= x <= 1.0 for x in draws)
    if mean == 40.0:
        assert draws == [1.0, 1.0, 1.0], "far above the range: clipped to the upper end"


def test_exploration_noise_in_range_does_not_warn():
    agent = DDPGAgent(10, STEPS, DDPGConfig(), seed=0)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        draws = [agent._truncated_normal(0.9, 0.5) for _ in range(200)]
    assert 0.0 < min(draws) and max(draws) < 1.0


def test_config_defaults_are_the_reference_values():
    c = DDPGConfig()
    assert (c.hidden, c.lr_actor, c.lr_critic, c.batch_size, c.tau) == (300, 1e-4, 1e-3, 64, 0.01)
    assert (c.buffer_episodes, c.warmup_episodes, c.initial_sigma, c.sigma_decay) == (128, 20, 0.5, 0.99)
    assert (c.baseline_alpha, c.gamma) == (0.5, 1.0)


def test_updates_per_episode_sets_the_number_of_gradient_updates():
    haq = DDPGAgent(10, STEPS, DDPGConfig(warmup_episodes=1, updates_per_episode=0), seed=2)
    default = DDPGAgent(10, STEPS, DDPGConfig(warmup_episodes=1), seed=2)
    fewer = DDPGAgent(10, STEPS, DDPGConfig(warmup_episodes=1, updates_per_episode=3), seed=2)
    for agent in (haq, default, fewer):
        run_episodes(agent, 3, 0.5)
    assert (haq.updates, default.updates, fewer.updates) == (2 * STEPS, 2 * min(6, STEPS), 2 * 3)
    assert DDPGConfig().updates_per_episode == 6, "default: 6 updates; 0 is HAQ's one per stored transition"
    with pytest.raises(HaqError, match="updates_per_episode must be an integer >= 0"):
        DDPGConfig(updates_per_episode=-1)
