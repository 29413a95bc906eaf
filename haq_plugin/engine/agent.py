"""The DDPG agent that proposes bit widths, in one module.

HAQ treats the choice of a layer's bit width as a continuous action in [0, 1]
and learns it with DDPG (Lillicrap et al. 2016): an actor maps the layer's state
to an action, a critic scores (state, action) pairs, and slowly-moving target
copies of both stabilise the critic's regression target.  Everything here
follows the reference values of the HAQ paper and code; all of them live in
:class:`DDPGConfig`.

Episode protocol (what :mod:`haq_plugin.engine.search` does)::

    agent = DDPGAgent(state_dim=10, steps_per_episode=2 * n_layers, config=DDPGConfig(), seed=0)
    for each episode:
        for each step:  action = agent.act(state)
        agent.observe_episode(states, actions, reward)   # stores, then trains

Reproducibility: the agent owns its random generators (``numpy`` for actions and
replay sampling, ``torch`` for weight initialisation) and never touches the
global ones, and :meth:`DDPGAgent.state_dict` holds every bit of its state
(networks, targets, optimisers, replay buffer, baseline, generators), so a
search resumed from a checkpoint makes exactly the same decisions.
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from haq_plugin.api.errors import HaqError

# Draws of the truncated exploration noise before giving up and clipping (see DDPGAgent._truncated_normal).
REJECTION_TRIES = 1000


@dataclass(frozen=True)
class DDPGConfig:
    """Hyperparameters of the agent; defaults are those of HAQ's reference code."""

    hidden: int = 300
    """Width of the two hidden layers of the actor and the critic."""
    lr_actor: float = 1e-4
    """Adam learning rate of the actor (the network that proposes bit widths)."""
    lr_critic: float = 1e-3
    """Adam learning rate of the critic (the network that scores proposals)."""
    batch_size: int = 64
    """Transitions sampled from the replay buffer for each gradient update."""
    tau: float = 0.01
    """Soft target update rate: each update moves the target networks this fraction towards the trained ones."""
    buffer_episodes: int = 128
    """Replay buffer capacity in episodes (of 2 steps per layer each). HAQ's reference keeps rmsize=128
    transitions per layer with one step per layer, i.e. 128 of its episodes; sizing by steps keeps the
    same 128 episodes with the weight and activation steps this search takes per layer."""
    warmup_episodes: int = 20
    """Episodes of uniform random actions that fill the buffer before learning and noise start."""
    initial_sigma: float = 0.5
    """Exploration noise (standard deviation of the truncated normal around the actor's action) after warmup."""
    sigma_decay: float = 0.99
    """Factor by which the exploration noise shrinks after every learning episode."""
    baseline_alpha: float = 0.5
    """Rate of the moving average of rewards subtracted from each reward (variance reduction)."""
    gamma: float = 1.0
    """Discount of future rewards; 1 because the only reward comes at the end of an episode."""
    final_layer_init: float = 3e-3
    """Bound of the uniform initialisation of the output layers, so that first actions sit near 0.5."""
    updates_per_episode: int = 6
    """Most gradient updates per learning episode, at most one per stored transition (6: the same test medians as HAQ's setting over 3 seeds on the
    demo and the peer workload, at 13-16% of evaluation time instead of 54-80%); 0 is HAQ's reference, one
    update per stored transition."""

    def __post_init__(self) -> None:
        # name -> (allowed range in words, test); every value must also be a finite number
        rules = {name: ("> 0", lambda v: v > 0) for name in (
            "hidden", "lr_actor", "lr_critic", "batch_size", "buffer_episodes", "final_layer_init")}
        rules.update({name: ("in [0, 1]", lambda v: 0.0 <= v <= 1.0) for name in (
            "tau", "sigma_decay", "baseline_alpha", "gamma")})
        rules.update({name: (">= 0", lambda v: v >= 0) for name in (
            "warmup_episodes", "initial_sigma", "updates_per_episode")})
        integers = ("hidden", "batch_size", "buffer_episodes", "warmup_episodes", "updates_per_episode")
        for name, (allowed, test) in rules.items():
            value = getattr(self, name)
            kind = numbers.Integral if name in integers else numbers.Real
            if (isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value)
                    or not test(value)):
                what = "an integer" if name in integers else "a finite number"
                raise HaqError(f"DDPGConfig.{name} must be {what} {allowed}, got {value!r}.")


def _linear(n_in: int, n_out: int, bound: float, generator: torch.Generator) -> nn.Linear:
    """A Linear layer initialised U(-bound, bound) from ``generator``.

    Built on the meta device first so that PyTorch's default initialisation does
    not draw from (and shift) the global random generator.
    """
    layer = nn.Linear(n_in, n_out, device="meta").to_empty(device="cpu")
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


class Actor(nn.Module):
    """state -> 300 -> ReLU -> 300 -> ReLU -> 1 -> sigmoid: an action in (0, 1)."""

    def __init__(self, state_dim: int, hidden: int, final_init: float, generator: torch.Generator) -> None:
        super().__init__()
        self.net = nn.Sequential(
            _linear(state_dim, hidden, 1 / math.sqrt(state_dim), generator), nn.ReLU(),
            _linear(hidden, hidden, 1 / math.sqrt(hidden), generator), nn.ReLU(),
            _linear(hidden, 1, final_init, generator), nn.Sigmoid(),
        )

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state)


class Critic(nn.Module):
    """Q(state, action): (state -> 300) + (action -> 300) -> ReLU -> 300 -> ReLU -> 1."""

    def __init__(self, state_dim: int, hidden: int, final_init: float, generator: torch.Generator) -> None:
        super().__init__()
        self.state_in = _linear(state_dim, hidden, 1 / math.sqrt(state_dim), generator)
        self.action_in = _linear(1, hidden, 1.0, generator)
        self.hidden = _linear(hidden, hidden, 1 / math.sqrt(hidden), generator)
        self.out = _linear(hidden, 1, final_init, generator)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.state_in(state) + self.action_in(action))
        return self.out(torch.relu(self.hidden(x)))


class ReplayBuffer:
    """Fixed-capacity ring buffer of transitions, stored as preallocated tensors.

    Tensors (not Python lists) so that sampling a batch is one indexing
    operation per field and the whole buffer goes into a checkpoint as is.
    """

    FIELDS = ("states", "actions", "rewards", "next_states", "dones")

    def __init__(self, capacity: int, state_dim: int) -> None:
        self.capacity = capacity
        self.states = torch.zeros(capacity, state_dim)
        self.actions = torch.zeros(capacity, 1)
        self.rewards = torch.zeros(capacity, 1)
        self.next_states = torch.zeros(capacity, state_dim)
        self.dones = torch.zeros(capacity, 1)
        self.position = 0
        self.size = 0

    def add_many(self, states: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                 next_states: torch.Tensor, dones: torch.Tensor) -> None:
        """Append transitions in order, overwriting the oldest once full."""
        n = len(states)
        if n > self.capacity:
            raise ValueError(f"{n} transitions do not fit a buffer of {self.capacity}")
        slots = (self.position + torch.arange(n)) % self.capacity
        for name, values in zip(self.FIELDS, (states, actions, rewards, next_states, dones)):
            getattr(self, name)[slots] = values
        self.position = (self.position + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, indices: np.ndarray) -> tuple[torch.Tensor, ...]:
        idx = torch.from_numpy(indices)
        return tuple(getattr(self, name)[idx] for name in self.FIELDS)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {name: getattr(self, name).clone() for name in self.FIELDS}
        state.update(position=self.position, size=self.size)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self.FIELDS:
            if state[name].shape != getattr(self, name).shape:
                raise HaqError(f"checkpoint replay buffer field '{name}' has shape {tuple(state[name].shape)}, "
                               f"expected {tuple(getattr(self, name).shape)}; it belongs to another search.")
            getattr(self, name).copy_(state[name])
        self.position, self.size = int(state["position"]), int(state["size"])


class DDPGAgent:
    """DDPG over the HAQ layer-by-layer MDP (one action per step, reward at the end)."""

    def __init__(self, state_dim: int, steps_per_episode: int, config: DDPGConfig = DDPGConfig(),
                 seed: int = 0) -> None:
        self.config = config
        self.state_dim = state_dim
        self.steps_per_episode = steps_per_episode
        self.rng = np.random.default_rng(seed)
        self.torch_rng = torch.Generator().manual_seed(seed)
        c = config
        self.actor = Actor(state_dim, c.hidden, c.final_layer_init, self.torch_rng)
        self.critic = Critic(state_dim, c.hidden, c.final_layer_init, self.torch_rng)
        self.actor_target = copy.deepcopy(self.actor)
        self.critic_target = copy.deepcopy(self.critic)
        for target in (self.actor_target, self.critic_target):
            target.requires_grad_(False)
        # fused: one kernel per parameter instead of ~10 small ops (a quarter off each update on CPU)
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=c.lr_actor, fused=True)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=c.lr_critic, fused=True)
        self.buffer = ReplayBuffer(c.buffer_episodes * steps_per_episode, state_dim)
        self._actor_params = list(self.actor.parameters())
        self._soft_pairs = [(list(target.parameters()), list(net.parameters()))
                            for target, net in ((self.actor_target, self.actor), (self.critic_target, self.critic))]
        self.baseline: float | None = None
        self.episodes_seen = 0
        self.updates = 0
        self._warned_clipping = False

    # -- acting -----------------------------------------------------------------------
    @property
    def warming_up(self) -> bool:
        """True while episodes still use uniform random actions (no learning yet)."""
        return self.episodes_seen < self.config.warmup_episodes

    @property
    def sigma(self) -> float | None:
        """Exploration noise of the current episode: initial * decay^(episode - warmup); None while warming up.

        None is the project's one sentinel for "no exploration noise" (warmup, random and uniform
        episodes alike), in the agent, the episode records and ``episodes.csv``.
        """
        if self.warming_up:
            return None
        c = self.config
        return c.initial_sigma * c.sigma_decay ** (self.episodes_seen - c.warmup_episodes)

    def policy_action(self, state: np.ndarray) -> float:
        """The actor's action for ``state``, without exploration."""
        with torch.no_grad():
            return float(self.actor(torch.as_tensor(state, dtype=torch.float32).view(1, -1)))

    def act(self, state: np.ndarray) -> float:
        """Action for ``state`` in this episode: uniform in warmup, else actor + truncated noise."""
        if self.warming_up:
            return float(self.rng.uniform(0.0, 1.0))
        return self._truncated_normal(self.policy_action(state), self.sigma)

    def _truncated_normal(self, mean: float, sigma: float) -> float:
        """Normal(mean, sigma) restricted to [0, 1], by rejection.

        With mean in [0, 1] and sigma <= 0.5 at least 47% of draws land in
        [0, 1], so the loop is short; it is exact, unlike clipping, which would
        pile probability on the end points.  The loop is bounded all the same
        (a diverged actor gives a NaN mean, a huge sigma almost never lands):
        after ``REJECTION_TRIES`` misses the last draw is clipped, with one
        warning per agent.
        """
        if sigma <= 0.0 or not math.isfinite(mean):
            return min(max(mean, 0.0), 1.0) if math.isfinite(mean) else self._clipped(0.5, mean, sigma)
        x = mean
        for _ in range(REJECTION_TRIES):
            x = float(self.rng.normal(mean, sigma))
            if 0.0 <= x <= 1.0:
                return x
        return self._clipped(x, mean, sigma)

    def _clipped(self, x: float, mean: float, sigma: float) -> float:
        if not self._warned_clipping:
            self._warned_clipping = True
            warnings.warn(f"DDPG exploration: no draw of Normal({mean:g}, {sigma:g}) landed in [0, 1] after "
                          f"{REJECTION_TRIES} tries; the action is clipped (the actor may have diverged: "
                          "check lr_actor, lr_critic and initial_sigma).", RuntimeWarning, stacklevel=3)
        return min(max(x, 0.0), 1.0) if math.isfinite(x) else 0.5

    # -- learning ---------------------------------------------------------------------
    def observe_episode(self, states: np.ndarray, actions: np.ndarray, reward: float) -> None:
        """Store an episode (every step gets the final reward) and train after warmup.

        The next state of step t is the state of step t+1; the last step is
        terminal.  At most ``config.updates_per_episode`` gradient updates (never
        more than the episode stored transitions; 0: one per transition, as in
        HAQ): on small models the updates cost more than evaluating a policy, and
        a few updates per episode learn about as well (``benchmarks/search_overhead.py``).
        """
        states_t = torch.as_tensor(np.asarray(states), dtype=torch.float32)
        n = len(states_t)
        next_states = torch.cat([states_t[1:], states_t[-1:]])
        dones = torch.zeros(n, 1)
        dones[-1] = 1.0
        actions_t = torch.as_tensor(np.asarray(actions), dtype=torch.float32).view(n, 1)
        rewards = torch.full((n, 1), float(reward))
        self.buffer.add_many(states_t, actions_t, rewards, next_states, dones)
        train = not self.warming_up
        self.episodes_seen += 1
        if train:
            for _ in range(min(self.config.updates_per_episode or n, n)):
                self.update()

    def update(self) -> None:
        """One DDPG step: critic regression, actor ascent on Q, soft target update."""
        c = self.config
        indices = self.rng.integers(0, self.buffer.size, size=c.batch_size)
        s, a, r, s2, done = self.buffer.sample(indices)
        batch_mean = float(r.mean())
        if self.baseline is None:
            self.baseline = batch_mean
        else:
            self.baseline += c.baseline_alpha * (batch_mean - self.baseline)
        with torch.no_grad():
            next_q = self.critic_target(s2, self.actor_target(s2))
            target = (r - self.baseline) + c.gamma * (1.0 - done) * next_q
        critic_loss = nn.functional.mse_loss(self.critic(s, a), target)
        self.critic_optim.zero_grad()
        critic_loss.backward()
        self.critic_optim.step()

        actor_loss = -self.critic(s, self.actor(s)).mean()
        grads = torch.autograd.grad(actor_loss, self._actor_params)  # no critic weight gradients needed
        for p, g in zip(self._actor_params, grads):
            p.grad = g
        self.actor_optim.step()

        with torch.no_grad():
            for target_params, params in self._soft_pairs:
                torch._foreach_lerp_(target_params, params, c.tau)
        self.updates += 1

    # -- checkpointing ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit for bit (tensors and plain Python values only)."""
        return {
            "config": asdict(self.config),
            "state_dim": self.state_dim,
            "steps_per_episode": self.steps_per_episode,
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "actor_target": self.actor_target.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "actor_optim": self.actor_optim.state_dict(),
            "critic_optim": self.critic_optim.state_dict(),
            "buffer": self.buffer.state_dict(),
            "baseline": self.baseline,
            "episodes_seen": self.episodes_seen,
            "updates": self.updates,
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": self.torch_rng.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = (asdict(self.config), self.state_dim, self.steps_per_episode)
        theirs = (state["config"], state["state_dim"], state["steps_per_episode"])
        if mine != theirs:
            raise HaqError("The checkpointed agent was built with another configuration or model "
                           f"(config/state size/steps {theirs} vs {mine}); start a new search.")
        for name in ("actor", "critic", "actor_target", "critic_target", "actor_optim", "critic_optim"):
            getattr(self, name).load_state_dict(state[name])
        self.buffer.load_state_dict(state["buffer"])
        self.baseline = state["baseline"]
        self.episodes_seen = int(state["episodes_seen"])
        self.updates = int(state["updates"])
        self.rng.bit_generator.state = state["numpy_rng"]
        self.torch_rng.set_state(state["torch_rng"])
