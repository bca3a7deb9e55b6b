"""Proximal policy optimisation (Schulman et al., 2017), as CleanRL's ``ppo.py`` does it.

One update: GAE(lambda) over the rollout, then several epochs over shuffled minibatches;
each minibatch re-scores its stored actions with the current policy, and takes one Adam
step on the clipped surrogate, the (clipped) value loss and an entropy bonus, with the
global gradient norm clipped. A recurrent policy's minibatches are whole environments'
sequences re-run from the LSTM state stored at the start of the rollout (Huang et al.,
"The 37 implementation details of PPO", 2022); a stateless policy's are shuffled steps.

Approximate KL and clip fraction are measured on every minibatch before its step: on the
first minibatch the policy is still the rollout's, so its ratios are exactly 1; from the
second on they move, which is what makes the clipping act.

`clone_update` fits a policy to demonstrations (behaviour cloning), a warm start for PPO.

This module and ``esper/training/loop.py`` are the only places that call ``backward()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import torch
from torch import Tensor, nn

from esper.rl.advantages import gae
from esper.rl.buffer import RolloutBuffer, Sequences
from esper.rl.policy import ActorCritic
from esper.rl.rollout import EpisodeRecord, RolloutCollector

__all__ = [
    "CloneStats",
    "PPOConfig",
    "PPOTrainer",
    "TrainResult",
    "UpdateRecord",
    "UpdateStats",
    "clone_update",
    "explained_variance",
    "ppo_update",
    "train_ppo",
]


@dataclass(frozen=True)
class PPOConfig:
    """PPO's hyperparameters; defaults are CleanRL's ``ppo.py`` (Atari/classic control)."""

    learning_rate: float = 2.5e-4
    """Adam's learning rate at the start of training."""
    adam_eps: float = 1e-5
    """Adam's epsilon (PyTorch's default 1e-8 is less stable for PPO)."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over the run's updates."""
    num_steps: int = 128
    """Steps per environment per rollout (T); a rollout is T x num_envs transitions."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE's lambda: bias (0) against variance (1) of the advantage estimate."""
    update_epochs: int = 4
    """Passes over the rollout per update."""
    num_minibatches: int = 4
    """Minibatches per pass: groups of environments (recurrent) or of steps (stateless)."""
    clip_coef: float = 0.2
    """Ratios are clipped to [1 - clip_coef, 1 + clip_coef] in the surrogate."""
    ent_coef: float = 0.01
    """Weight of the entropy bonus (entropy of the masked, applying heads)."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    max_grad_norm: float = 0.5
    """Clip the global gradient norm of the policy's parameters to this."""
    norm_adv: bool = True
    """Normalise advantages to mean 0, std 1 within each minibatch."""
    clip_vloss: bool = True
    """Clip the value update around the rollout's values by clip_coef, as CleanRL does."""
    target_kl: float | None = None
    """Stop the update before a minibatch whose approximate KL exceeds this (None: never)."""

    def __post_init__(self) -> None:
        for name in ("num_steps", "update_epochs", "num_minibatches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.max_grad_norm <= 0 or self.clip_coef <= 0:
            raise ValueError("learning_rate, max_grad_norm and clip_coef must be > 0")
        if not (0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1):
            raise ValueError("gamma and gae_lambda must be in [0, 1]")


@dataclass(frozen=True)
class UpdateStats:
    """What one PPO update did; losses and entropy are means over its minibatches."""

    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    """Mean over minibatches of E[(r - 1) - log r] (Schulman's low-variance estimator)."""
    clip_fraction: float
    """Mean over minibatches of the fraction of ratios outside the clip range."""
    approx_kl_per_minibatch: tuple[float, ...]
    clip_fraction_per_minibatch: tuple[float, ...]
    ratio_min: float
    ratio_max: float
    explained_variance: float
    """1 - Var(returns - values) / Var(returns) of the rollout's values (nan if constant)."""
    epochs: int
    """Epochs begun (fewer than configured only after a target-KL stop)."""
    minibatches: int
    """Gradient steps taken."""
    stopped_early: bool
    """The target KL stopped the update."""


def explained_variance(predicted: Tensor, target: Tensor) -> float:
    """1 - Var(target - predicted) / Var(target); nan when the target is constant."""
    variance = target.var()
    if variance == 0:
        return float("nan")
    return float(1 - (target - predicted).var() / variance)


def _value_loss(new: Tensor, old: Tensor, returns: Tensor, config: PPOConfig) -> Tensor:
    unclipped = (new - returns) ** 2
    if not config.clip_vloss:
        return 0.5 * unclipped.mean()
    clipped = old + (new - old).clamp(-config.clip_coef, config.clip_coef)
    return 0.5 * torch.max(unclipped, (clipped - returns) ** 2).mean()


def ppo_update(
    policy: ActorCritic,
    optimizer: torch.optim.Optimizer,
    buffer: RolloutBuffer,
    config: PPOConfig,
    generator: torch.Generator | None = None,
) -> UpdateStats:
    """One PPO update of ``policy`` from ``buffer`` (several epochs of minibatch steps).

    Args:
        policy: the policy that collected the rollout (its parameters are updated).
        optimizer: the optimizer over ``policy``'s parameters, learning rate already set.
        buffer: the rollout.
        config: the hyperparameters.
        generator: random generator for the minibatch shuffles (None: torch's global one).
    """
    data = _sequences(policy, buffer, config.gamma, config.gae_lambda)
    if config.num_minibatches > data.count:
        raise ValueError(
            f"{config.num_minibatches} minibatches need at least as many sequences; "
            f"this rollout has {data.count} (use more environments or fewer minibatches)"
        )
    names = ("policy_loss", "value_loss", "entropy", "ratio_min", "ratio_max", "kl", "clip")
    log: dict[str, list[float]] = {name: [] for name in names}
    epochs, stopped = 0, False
    while epochs < config.update_epochs and not stopped:
        epochs += 1
        order = torch.randperm(data.count, generator=generator).to(buffer.rewards.device)
        for columns in order.tensor_split(config.num_minibatches):
            batch = data.select(columns)
            new = policy.evaluate(
                batch.obs, batch.actions, batch.masks, batch.initial_state, batch.starts
            )
            log_ratio = new.log_prob - batch.log_probs
            ratio = log_ratio.exp()
            with torch.no_grad():  # measured before this minibatch's step
                approx_kl = float(((ratio - 1) - log_ratio).mean())
                clip_fraction = float(((ratio - 1).abs() > config.clip_coef).float().mean())
            if config.target_kl is not None and approx_kl > config.target_kl:
                stopped = True
                break
            policy_loss = _surrogate_loss(ratio, batch, config)
            value_loss = _value_loss(new.value, batch.values, batch.returns, config)
            entropy = new.entropy.mean()
            loss = policy_loss - config.ent_coef * entropy + config.vf_coef * value_loss

            _gradient_step(policy, optimizer, loss, config.max_grad_norm)

            measured = {
                "policy_loss": policy_loss,
                "value_loss": value_loss,
                "entropy": entropy,
                "ratio_min": ratio.min(),
                "ratio_max": ratio.max(),
            }
            for name, value in measured.items():
                log[name].append(value.item())
            log["kl"].append(approx_kl)
            log["clip"].append(clip_fraction)
    return UpdateStats(
        policy_loss=_mean(log["policy_loss"]),
        value_loss=_mean(log["value_loss"]),
        entropy=_mean(log["entropy"]),
        approx_kl=_mean(log["kl"]),
        clip_fraction=_mean(log["clip"]),
        approx_kl_per_minibatch=tuple(log["kl"]),
        clip_fraction_per_minibatch=tuple(log["clip"]),
        ratio_min=min(log["ratio_min"], default=float("nan")),
        ratio_max=max(log["ratio_max"], default=float("nan")),
        explained_variance=explained_variance(data.values, data.returns),
        epochs=epochs,
        minibatches=len(log["kl"]),
        stopped_early=stopped,
    )


def _sequences(policy: ActorCritic, buffer: RolloutBuffer, gamma: float, lam: float) -> Sequences:
    """The rollout's sequences for an update, with GAE(lambda) advantages and returns."""
    advantages, returns = gae(
        buffer.rewards,
        buffer.values,
        buffer.last_value,
        buffer.terminated,
        buffer.truncated,
        buffer.final_values,
        gamma,
        lam,
    )
    return buffer.sequences(advantages, returns, keep_time=policy.is_recurrent)


def _gradient_step(
    policy: ActorCritic, optimizer: torch.optim.Optimizer, loss: Tensor, max_grad_norm: float
) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)
    optimizer.step()


@dataclass(frozen=True)
class CloneStats:
    """What cloning a demonstrator did (`clone_update`)."""

    epochs: int
    """Passes over the demonstrations."""
    first_likelihood: float
    """Mean probability the policy gave the demonstrated actions during the first pass."""
    last_likelihood: float
    """The same during the last pass."""
    value_loss: float
    """Mean squared error (halved) of the value head against the demonstrations'
    returns during the last pass."""


def clone_update(
    policy: ActorCritic,
    optimizer: torch.optim.Optimizer,
    buffer: RolloutBuffer,
    config: PPOConfig,
    epochs: int,
    generator: torch.Generator | None = None,
) -> CloneStats:
    """Behaviour cloning: fit ``policy`` to the actions in ``buffer`` (a demonstrated
    rollout, see `esper.rl.rollout.collect_episodes`) by maximum likelihood, and its value
    head to the demonstrations' returns (discounted by ``config.gamma``), over ``epochs``
    passes of ``config.num_minibatches`` minibatches of whole sequences. A warm start for
    PPO: the policy begins where the demonstrator is, and the critic knows what that is
    worth."""
    # Lambda 1: the returns are the demonstrations' Monte Carlo returns, whatever V says.
    data = _sequences(policy, buffer, config.gamma, 1.0)
    minibatches = min(config.num_minibatches, data.count)
    likelihood: list[float] = []
    value_losses: list[float] = []
    first = float("nan")
    for epoch in range(epochs):
        likelihood, value_losses = [], []
        order = torch.randperm(data.count, generator=generator).to(buffer.rewards.device)
        for columns in order.tensor_split(minibatches):
            batch = data.select(columns)
            new = policy.evaluate(
                batch.obs, batch.actions, batch.masks, batch.initial_state, batch.starts
            )
            value_loss = 0.5 * ((new.value - batch.returns) ** 2).mean()
            loss = -new.log_prob.mean() + config.vf_coef * value_loss
            _gradient_step(policy, optimizer, loss, config.max_grad_norm)
            likelihood.append(float(new.log_prob.detach().exp().mean()))
            value_losses.append(value_loss.item())
        if epoch == 0:
            first = _mean(likelihood)
    return CloneStats(epochs, first, _mean(likelihood), _mean(value_losses))


def _surrogate_loss(ratio: Tensor, batch: Sequences, config: PPOConfig) -> Tensor:
    """The clipped surrogate, negated to a loss: E[max(-A r, -A clip(r, 1 -+ eps))]."""
    advantages = batch.advantages
    if config.norm_adv:
        # Population std: a one-element minibatch gives 0 advantage, not NaN.
        advantages = (advantages - advantages.mean()) / (advantages.std(correction=0) + 1e-8)
    clipped = ratio.clamp(1 - config.clip_coef, 1 + config.clip_coef)
    return torch.max(-advantages * ratio, -advantages * clipped).mean()


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


@dataclass(frozen=True)
class UpdateRecord:
    """One iteration of training: a rollout and the update on it."""

    update: int
    """1-based index of the update."""
    global_step: int
    """Environment steps (over all environments) taken so far."""
    learning_rate: float
    stats: UpdateStats
    episodes: list[EpisodeRecord]
    """Episodes that finished during this rollout."""
    rollout_seconds: float
    update_seconds: float


class PPOTrainer:
    """Rollout, then update, then again: the state of a PPO run between updates.

    Args:
        envs: a vector environment in SAME_STEP autoreset mode (see `RolloutCollector`).
        policy: the policy to train.
        config: the hyperparameters.
        seed: seeds the environments' first reset and the sampling/shuffling generator.
    """

    def __init__(
        self, envs: gym.vector.VectorEnv, policy: ActorCritic, config: PPOConfig, seed: int
    ) -> None:
        self.policy, self.config = policy, config
        self.optimizer = torch.optim.Adam(
            policy.parameters(), lr=config.learning_rate, eps=config.adam_eps
        )
        self.generator = torch.Generator().manual_seed(seed)
        self.collector = RolloutCollector(envs, policy, config.num_steps, seed, self.generator)
        self.updates = 0

    @property
    def steps_per_update(self) -> int:
        """Environment steps per rollout: num_steps x number of environments."""
        return self.config.num_steps * self.collector.num_envs

    def update(self, total_updates: int) -> UpdateRecord:
        """Collect one rollout and update on it; the learning rate anneals over ``total_updates``.

        Args:
            total_updates: the run's planned number of updates (the annealing horizon).
        """
        fraction = 1.0 - self.updates / total_updates if self.config.anneal_lr else 1.0
        learning_rate = fraction * self.config.learning_rate
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        start = time.perf_counter()
        rollout = self.collector.collect()
        middle = time.perf_counter()
        stats = ppo_update(self.policy, self.optimizer, rollout.buffer, self.config, self.generator)
        self.updates += 1
        return UpdateRecord(
            self.updates,
            self.collector.global_step,
            learning_rate,
            stats,
            rollout.episodes,
            middle - start,
            time.perf_counter() - middle,
        )


@dataclass(frozen=True)
class TrainResult:
    """Every update's record; episodes are inside them."""

    updates: list[UpdateRecord]

    @property
    def episodes(self) -> list[EpisodeRecord]:
        """All finished episodes, in order of finishing."""
        return [e for record in self.updates for e in record.episodes]


def train_ppo(
    envs: gym.vector.VectorEnv,
    policy: ActorCritic,
    config: PPOConfig,
    total_steps: int,
    seed: int = 0,
    on_update: Callable[[UpdateRecord], None] | None = None,
) -> TrainResult:
    """Train ``policy`` on ``envs`` for ``total_steps`` environment steps (rounded down to
    whole rollouts, at least one).

    Args:
        envs: a vector environment in SAME_STEP autoreset mode.
        policy: the policy to train (in place).
        config: the hyperparameters.
        total_steps: environment steps over all environments.
        seed: seeds environments, sampling and minibatch order; with the same initial
            policy, the same seed gives the same result.
        on_update: called after every update (progress display, logging).
    """
    trainer = PPOTrainer(envs, policy, config, seed)
    total_updates = max(1, total_steps // trainer.steps_per_update)
    records = []
    for _ in range(total_updates):
        record = trainer.update(total_updates)
        records.append(record)
        if on_update is not None:
            on_update(record)
    return TrainResult(records)
