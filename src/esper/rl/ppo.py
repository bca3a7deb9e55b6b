"""Proximal policy optimisation (Schulman et al., 2017), as CleanRL's ``ppo.py`` does it.

One update (`ppo_update`): GAE(lambda) over the rollout, then several epochs over
shuffled minibatches; each minibatch re-scores its stored actions with the current
policy, and takes one Adam step on the clipped surrogate, the (clipped) value loss and
an entropy bonus, with the global gradient norm clipped. A recurrent policy's minibatches
are whole environments' sequences re-run from the LSTM state stored at the start of the
rollout (Huang et al., "The 37 implementation details of PPO", 2022); a stateless
policy's are shuffled steps.

One iteration (`ppo_iteration`): anneal the learning rate (`annealed_lr`), collect a
rollout with the one collector (`esper.rl.rollout.RolloutCollector`), update on it. Esper's
training (`esper.rl.training.train`) runs exactly this, and so do the proofs that PPO
learns (CartPole in ``benchmarks/ppo_cartpole.py``, the masked bandit and the memory task
in ``tests/integration/test_rl_learning.py``): the path proven is the path shipped.

The discount is not a PPO hyperparameter here: the caller passes it (Esper's is
``run.episode.reward.gamma``, which reward shaping uses too).

Approximate KL and clip fraction are measured on every minibatch before its step: on the
first minibatch the policy is still the rollout's, so its ratios are exactly 1; from the
second on they move, which is what makes the clipping act. The mean over minibatches
understates how far an update moved; the last minibatch's value (CleanRL's) says it.

`clone_update` fits a policy to demonstrations (behaviour cloning), a warm start for PPO.

This module and ``esper/training/loop.py`` are the only places that call ``backward()``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from esper.rl.advantages import gae
from esper.rl.buffer import RolloutBuffer, Sequences
from esper.rl.policy import HEADS, ActorCritic, EvalOutput, head_applies
from esper.rl.rollout import EpisodeRecord, RolloutCollector

__all__ = [
    "CloneStats",
    "PPOConfig",
    "Reference",
    "UpdateRecord",
    "UpdateStats",
    "adam",
    "annealed_lr",
    "clone_update",
    "explained_variance",
    "ppo_iteration",
    "ppo_update",
]


@dataclass(frozen=True)
class PPOConfig:
    """PPO's hyperparameters; defaults are CleanRL's ``ppo.py`` (Atari/classic control).
    The discount is not here: `ppo_update` takes it (CleanRL's is 0.99)."""

    learning_rate: float = 2.5e-4
    """Adam's learning rate at the start of training."""
    adam_eps: float = 1e-5
    """Adam's epsilon (PyTorch's default 1e-8 is less stable for PPO)."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over the run's updates."""
    num_steps: int = 128
    """Steps per environment per rollout (T); a rollout is T x num_envs transitions.
    Esper's training ignores it: its rollouts are whole episodes (epochs - 1 steps)."""
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
        if not 0 <= self.gae_lambda <= 1:
            raise ValueError(f"gae_lambda must be in [0, 1], got {self.gae_lambda}")


@dataclass(frozen=True)
class UpdateStats:
    """What one PPO update did; losses and entropy are means over its minibatches."""

    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    """Mean over minibatches of E[(r - 1) - log r] (Schulman's low-variance estimator)."""
    approx_kl_last: float
    """The same on the last minibatch measured (CleanRL's ``approx_kl``): how far every
    step but that minibatch's had moved the policy; after a target-KL stop, the minibatch
    that stopped the update (every step taken)."""
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
    reference_kl: float = float("nan")
    """Mean over minibatches of KL(policy || reference) (nan without a `Reference`)."""


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


@dataclass(frozen=True)
class Reference:
    """A policy an update is held near (the cloned one, early in training): the loss
    gains ``coef`` times KL(policy || reference), estimated on the rollout's actions as
    E[r - 1 - log r] with r = reference / policy (unbiased where the actions are the
    policy's own, as a rollout's are up to the update's first step)."""

    policy: ActorCritic
    coef: float


def ppo_update(
    policy: ActorCritic,
    optimizer: torch.optim.Optimizer,
    buffer: RolloutBuffer,
    config: PPOConfig,
    gamma: float,
    generator: torch.Generator | None = None,
    reference: Reference | None = None,
) -> UpdateStats:
    """One PPO update of ``policy`` from ``buffer`` (several epochs of minibatch steps).

    Args:
        policy: the policy that collected the rollout (its parameters are updated).
        optimizer: the optimizer over ``policy``'s parameters, learning rate already set.
        buffer: the rollout.
        config: the hyperparameters.
        gamma: the discount.
        generator: random generator for the minibatch shuffles (None: torch's global one).
        reference: a policy to stay near, and how strongly (None: plain PPO).
    """
    data = _sequences(policy, buffer, gamma, config.gae_lambda)
    if config.num_minibatches > data.count:
        raise ValueError(
            f"{config.num_minibatches} minibatches need at least as many sequences; "
            f"this rollout has {data.count} (use more environments or fewer minibatches)"
        )
    log: dict[str, list[float]] = {name: [] for name in _LOGGED}
    epochs, stopped, last_kl = 0, False, float("nan")
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
                last_kl = float(((ratio - 1) - log_ratio).mean())
                clip_fraction = float(((ratio - 1).abs() > config.clip_coef).float().mean())
            if config.target_kl is not None and last_kl > config.target_kl:
                stopped = True
                break
            loss, measured = _loss(new, ratio, batch, config)
            if reference is not None and reference.coef > 0:
                penalty = _reference_kl(new, batch, reference.policy)
                loss = loss + reference.coef * penalty
                measured["reference_kl"] = penalty.item()
            _gradient_step(policy, optimizer, loss, config.max_grad_norm)
            for name, value in {**measured, "kl": last_kl, "clip": clip_fraction}.items():
                log[name].append(value)
    return UpdateStats(
        policy_loss=_mean(log["policy_loss"]),
        value_loss=_mean(log["value_loss"]),
        entropy=_mean(log["entropy"]),
        approx_kl=_mean(log["kl"]),
        approx_kl_last=last_kl,
        clip_fraction=_mean(log["clip"]),
        approx_kl_per_minibatch=tuple(log["kl"]),
        clip_fraction_per_minibatch=tuple(log["clip"]),
        ratio_min=min(log["ratio_min"], default=float("nan")),
        ratio_max=max(log["ratio_max"], default=float("nan")),
        explained_variance=explained_variance(data.values, data.returns),
        epochs=epochs,
        minibatches=len(log["kl"]),
        stopped_early=stopped,
        reference_kl=_mean(log["reference_kl"]),
    )


_LOGGED = (
    "policy_loss",
    "value_loss",
    "entropy",
    "ratio_min",
    "ratio_max",
    "kl",
    "clip",
    "reference_kl",
)


def _reference_kl(new: EvalOutput, batch: Sequences, reference: ActorCritic) -> Tensor:
    """KL(policy || reference) on ``batch``'s actions (see `Reference`)."""
    with torch.no_grad():
        theirs = reference.evaluate(
            batch.obs, batch.actions, batch.masks, batch.initial_state, batch.starts
        ).log_prob
    log_ratio = theirs - new.log_prob
    return (log_ratio.exp() - 1 - log_ratio).mean()


def _loss(
    new: EvalOutput, ratio: Tensor, batch: Sequences, config: PPOConfig
) -> tuple[Tensor, dict[str, float]]:
    """A minibatch's loss (clipped surrogate - entropy bonus + value loss) and its parts."""
    policy_loss = _surrogate_loss(ratio, batch, config)
    value_loss = _value_loss(new.value, batch.values, batch.returns, config)
    entropy = new.entropy.mean()
    loss = policy_loss - config.ent_coef * entropy + config.vf_coef * value_loss
    parts = {
        "policy_loss": policy_loss.item(),
        "value_loss": value_loss.item(),
        "entropy": entropy.item(),
        "ratio_min": ratio.min().item(),
        "ratio_max": ratio.max().item(),
    }
    return loss, parts


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
    """Passes over the demonstrations made."""
    first_likelihood: float
    """Mean probability the policy gave the demonstrated actions during the first pass."""
    last_likelihood: float
    """The same during the last pass."""
    value_loss: float
    """Mean squared error (halved) of the value head against the demonstrations'
    returns during the last pass."""
    kept_epoch: int
    """The pass whose weights the policy keeps (0: none, it stays as it was)."""
    held_out: int
    """Demonstrations held out of the fit to judge it (0: every one was fitted)."""
    held_out_likelihood: float
    """Mean probability the kept policy gives the held-out demonstrations' actions (the
    fitted ones' without a held-out set)."""
    stopped: str
    """Why cloning stopped: ``epochs`` (every pass made), ``held-out likelihood`` (it
    stopped rising for ``patience`` passes) or ``entropy floor``."""
    entropy_before: dict[str, float]
    """Per head, the policy's mean entropy (nats) on the judged demonstrations' steps
    where the head applies, before cloning..."""
    entropy_after: dict[str, float]
    """...and with the weights kept."""


def clone_update(
    policy: ActorCritic,
    optimizer: torch.optim.Optimizer,
    buffer: RolloutBuffer,
    config: PPOConfig,
    gamma: float,
    epochs: int,
    generator: torch.Generator | None = None,
    *,
    held_out: float = 0.0,
    patience: int | None = None,
    entropy_floor: float = 0.0,
) -> CloneStats:
    """Behaviour cloning: fit ``policy`` to the actions in ``buffer`` (a demonstrated
    rollout, see `esper.rl.rollout.RolloutCollector`) by maximum likelihood, and its value
    head to the demonstrations' returns (discounted by ``gamma``), over at most ``epochs``
    passes of ``config.num_minibatches`` minibatches of whole sequences. A warm start for
    PPO: the policy begins where the demonstrator is, and the critic knows what that is
    worth.

    Cloning to certainty leaves PPO nothing to explore, so it can stop earlier: a share
    ``held_out`` of the demonstrations (whole sequences, at least one, when there are two
    or more) is not fitted, and the policy keeps the pass whose held-out likelihood was
    highest, stopping once it has not risen for ``patience`` passes; and no pass whose
    mean entropy per decision on the judged demonstrations falls below
    ``entropy_floor`` nats is kept (cloning stops there). With neither, every pass is
    made and the last kept, as plain cloning does."""
    # Lambda 1: the returns are the demonstrations' Monte Carlo returns, whatever V says.
    data = _sequences(policy, buffer, gamma, 1.0)
    fit, judged = _split(data, held_out, generator)
    # Unguarded (plain cloning) keeps the last pass: no judging or snapshots per pass.
    guarded = judged is not fit or entropy_floor > 0
    before = _judge(policy, judged)
    kept_epoch, kept = 0, before
    kept_state = copy.deepcopy(policy.state_dict()) if guarded else None
    done, first, stale, stopped = 0, float("nan"), 0, "epochs"
    stats: tuple[float, float] = (float("nan"), float("nan"))
    for epoch in range(1, epochs + 1):
        done = epoch
        stats = _clone_pass(policy, optimizer, fit, config, generator)
        first = stats[0] if epoch == 1 else first
        if not guarded:
            continue
        seen = _judge(policy, judged)
        if seen.entropy < entropy_floor:
            stopped = "entropy floor"
            break
        if seen.log_likelihood > kept.log_likelihood or kept_epoch == 0:
            kept_epoch, kept, stale = epoch, seen, 0
            kept_state = copy.deepcopy(policy.state_dict())
        else:
            stale += 1
            if patience is not None and stale >= patience:
                stopped = "held-out likelihood"
                break
    if kept_state is not None:
        policy.load_state_dict(kept_state)
    else:
        kept_epoch, kept = done, _judge(policy, judged)
    return CloneStats(
        epochs=done,
        first_likelihood=first,
        last_likelihood=stats[0],
        value_loss=stats[1],
        kept_epoch=kept_epoch,
        held_out=0 if judged is fit else judged.count,
        held_out_likelihood=kept.likelihood,
        stopped=stopped,
        entropy_before=before.heads,
        entropy_after=kept.heads,
    )


def _split(
    data: Sequences, share: float, generator: torch.Generator | None
) -> tuple[Sequences, Sequences]:
    """(fitted, judged) sequences: a random ``share`` held out (at least one, never all),
    or every sequence both fitted and judged when ``share`` is 0 or there is only one."""
    if share <= 0 or data.count < 2:
        return data, data
    held = min(max(round(share * data.count), 1), data.count - 1)
    order = torch.randperm(data.count, generator=generator).to(data.log_probs.device)
    return data.select(order[held:]), data.select(order[:held])


def _clone_pass(
    policy: ActorCritic,
    optimizer: torch.optim.Optimizer,
    data: Sequences,
    config: PPOConfig,
    generator: torch.Generator | None,
) -> tuple[float, float]:
    """One pass of cloning over ``data``: its mean likelihood and value loss."""
    likelihood: list[float] = []
    value_losses: list[float] = []
    order = torch.randperm(data.count, generator=generator).to(data.log_probs.device)
    for columns in order.tensor_split(min(config.num_minibatches, data.count)):
        batch = data.select(columns)
        new = policy.evaluate(
            batch.obs, batch.actions, batch.masks, batch.initial_state, batch.starts
        )
        value_loss = 0.5 * ((new.value - batch.returns) ** 2).mean()
        loss = -new.log_prob.mean() + config.vf_coef * value_loss
        _gradient_step(policy, optimizer, loss, config.max_grad_norm)
        likelihood.append(float(new.log_prob.detach().exp().mean()))
        value_losses.append(value_loss.item())
    return _mean(likelihood), _mean(value_losses)


@dataclass(frozen=True)
class _Judged:
    """A policy on demonstrations: how likely their actions are, and its entropy."""

    log_likelihood: float
    likelihood: float
    entropy: float
    """Mean over steps of the entropy of the heads that apply (nats per decision)."""
    heads: dict[str, float]


@torch.no_grad()
def _judge(policy: ActorCritic, data: Sequences) -> _Judged:
    new = policy.evaluate(data.obs, data.actions, data.masks, data.initial_state, data.starts)
    heads = {"all": float(new.entropy.mean())}
    if new.head_entropy is not None:
        applies = head_applies(data.actions[..., 0])
        totals = new.head_entropy.sum(dim=(0, 1)) / applies.sum(dim=(0, 1)).clamp(min=1)
        heads = {name: float(value) for name, value in zip(HEADS, totals, strict=True)}
    return _Judged(
        float(new.log_prob.mean()),
        float(new.log_prob.exp().mean()),
        float(new.entropy.mean()),
        heads,
    )


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


def adam(policy: nn.Module, config: PPOConfig) -> torch.optim.Adam:
    """Adam over ``policy``'s parameters with PPO's learning rate and epsilon."""
    return torch.optim.Adam(policy.parameters(), lr=config.learning_rate, eps=config.adam_eps)


def annealed_lr(config: PPOConfig, update: int, updates: int) -> float:
    """The learning rate of update ``update`` (0-based) of ``updates``: with ``anneal_lr``
    it falls linearly from ``config.learning_rate`` (the first) to ``learning_rate /
    updates`` (the last), else it stays ``config.learning_rate``."""
    fraction = 1.0 - update / updates if config.anneal_lr else 1.0
    return fraction * config.learning_rate


@dataclass(frozen=True)
class UpdateRecord:
    """One PPO iteration (`ppo_iteration`): a rollout and the update on it."""

    learning_rate: float
    stats: UpdateStats
    episodes: list[EpisodeRecord]
    """Episodes that finished during the rollout."""
    rollout_seconds: float
    update_seconds: float


def ppo_iteration(
    collector: RolloutCollector,
    optimizer: torch.optim.Optimizer,
    config: PPOConfig,
    gamma: float,
    *,
    update: int,
    updates: int,
    steps: int,
    seeds: Iterator[int],
    restart: bool,
    reference: Reference | None = None,
) -> UpdateRecord:
    """Update ``update`` (0-based) of a run of ``updates``: set the annealed learning
    rate, collect ``steps`` steps of every environment (`RolloutCollector.collect` with
    ``seeds`` and ``restart``), then `ppo_update` ``collector.policy`` on them with
    discount ``gamma`` (held near ``reference``, if given). The collector's generator
    samples the actions and shuffles the minibatches: one random stream per run."""
    learning_rate = annealed_lr(config, update, updates)
    for group in optimizer.param_groups:
        group["lr"] = learning_rate
    began = time.perf_counter()
    rollout = collector.collect(steps, seeds, restart=restart)
    collected = time.perf_counter()
    policy = collector.policy
    policy.train()
    stats = ppo_update(
        policy, optimizer, rollout.buffer, config, gamma, collector.generator, reference
    )
    policy.eval()
    return UpdateRecord(
        learning_rate,
        stats,
        rollout.episodes,
        rollout_seconds=collected - began,
        update_seconds=time.perf_counter() - collected,
    )
