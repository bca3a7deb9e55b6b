"""PPO learns toy tasks with a known best policy (each in a few seconds on one core),
through the collector and iteration that train Esper's controller (`ppo_iteration`)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import torch

from esper.rl.policy import ActionMasks, ActorCritic, MLPPolicy, RecurrentFactoredPolicy
from esper.rl.ppo import PPOConfig, Reference, UpdateRecord
from esper.rl.rollout import RolloutCollector
from tests.rl_envs import SPEC, ConditionalBanditEnv, MemoryEnv, pool_of, train

CONFIG = PPOConfig(learning_rate=2e-3, num_steps=16, anneal_lr=False)
ENVS = 8


def _train(
    policy: ActorCritic,
    envs: list[gym.Env[Any, Any]],
    total_steps: int,
    reference: Reference | None = None,
) -> list[UpdateRecord]:
    """PPO on ``envs`` for ``total_steps`` steps (all environments), sampling seeded 0."""
    collector = RolloutCollector(pool_of(envs), policy, torch.Generator().manual_seed(0))
    updates = total_steps // (CONFIG.num_steps * len(envs))
    return train(collector, CONFIG, updates, reference=reference)


def _greedy_return(
    policy: ActorCritic, make: Callable[[], gym.Env[Any, Any]], episodes: int
) -> float:
    """Mean return of the policy's most probable actions over fresh episodes."""
    env, total = make(), 0.0
    for episode in range(episodes):
        obs, info = env.reset(seed=10_000 + episode)
        state, done = policy.initial_state(1), False
        while not done:
            masks = ActionMasks.from_numpy(info["masks"]).index(None) if "masks" in info else None
            out = policy.act(torch.as_tensor(obs)[None], state, masks, deterministic=True)
            action = out.action[0].numpy()
            obs, reward, terminated, truncated, info = env.step(action)
            total, state, done = total + float(reward), out.state, terminated or truncated
    return total / episodes


def _factored_policy(obs_dim: int) -> RecurrentFactoredPolicy:
    return RecurrentFactoredPolicy(obs_dim, SPEC.n_slot, SPEC.n_blueprint, SPEC.n_blend, hidden=32)


def test_masked_bandit_only_the_legal_arm_pays() -> None:
    # The paying arm is GERMINATE with blueprint 2 (legal in a random subset of slots,
    # shown in the observation) and blend 1: the policy must pick the op, then a slot
    # where that blueprint is legal, then the blueprint and the blend.
    torch.manual_seed(0)
    envs = [ConditionalBanditEnv() for _ in range(ENVS)]
    policy = _factored_policy(envs[0].observation_space.shape[0])  # type: ignore[index]
    before = _greedy_return(policy, ConditionalBanditEnv, 200)
    _train(policy, list(envs), total_steps=4096)
    after = _greedy_return(policy, ConditionalBanditEnv, 200)
    assert before < 0.3
    assert after >= 0.95
    assert sum(env.illegal_actions for env in envs) == 0


def _penalised(coef: float) -> tuple[float, float]:
    """Greedy return and last KL from the reference after PPO on the bandit with a KL
    penalty of ``coef`` toward the untrained policy."""
    torch.manual_seed(0)
    envs = [ConditionalBanditEnv() for _ in range(ENVS)]
    policy = _factored_policy(envs[0].observation_space.shape[0])  # type: ignore[index]
    frozen = copy.deepcopy(policy).requires_grad_(False)
    records = _train(policy, list(envs), 4096, Reference(frozen, coef))
    kl = [r.stats.reference_kl for r in records]
    assert all(math.isfinite(value) and value >= 0 for value in kl)
    return _greedy_return(policy, ConditionalBanditEnv, 200), kl[-1]


def test_a_kl_penalty_toward_a_reference_holds_the_policy_near_it() -> None:
    # The reference is the untrained policy (as the cloned one is at PPO's start). A
    # light penalty still lets PPO find the paying arm, moving toward higher advantage;
    # a heavy one keeps the policy near the reference.
    light_return, light_kl = _penalised(0.05)
    heavy_return, heavy_kl = _penalised(5.0)
    assert light_return >= 0.95
    assert heavy_kl < 0.5 * light_kl and heavy_return <= light_return


def test_memory_task_needs_the_recurrent_policy() -> None:
    # The answer at the 4th step must repeat the bit shown at the 1st; the observations
    # in between are zeros. Chance is 0.5.
    torch.manual_seed(0)
    recurrent = _factored_policy(2)
    _train(recurrent, [MemoryEnv(4) for _ in range(ENVS)], total_steps=4096)
    assert _greedy_return(recurrent, lambda: MemoryEnv(4), 200) >= 0.95

    # Without memory the last observation says nothing: no better than chance.
    mlp = MLPPolicy(2, 2)
    _train(mlp, [MemoryEnv(4, factored=False) for _ in range(ENVS)], total_steps=2048)
    assert 0.4 <= _greedy_return(mlp, lambda: MemoryEnv(4, factored=False), 400) <= 0.6
