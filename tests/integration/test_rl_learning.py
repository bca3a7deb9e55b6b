"""PPO learns toy tasks with a known best policy (each in a few seconds on one core)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import torch

from esper.rl.policy import ActionMasks, ActorCritic, MLPPolicy, RecurrentFactoredPolicy
from esper.rl.ppo import PPOConfig, train_ppo
from tests.rl_envs import SPEC, ConditionalBanditEnv, MemoryEnv, vector_env

CONFIG = PPOConfig(learning_rate=2e-3, num_steps=16, anneal_lr=False)


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
    envs = vector_env(ConditionalBanditEnv, 8)
    policy = _factored_policy(envs.single_observation_space.shape[0])  # type: ignore[index]
    before = _greedy_return(policy, ConditionalBanditEnv, 200)
    train_ppo(envs, policy, CONFIG, total_steps=4096, seed=0)
    after = _greedy_return(policy, ConditionalBanditEnv, 200)
    assert before < 0.3
    assert after >= 0.95
    assert sum(env.illegal_actions for env in envs.envs) == 0  # type: ignore[attr-defined]


def test_memory_task_needs_the_recurrent_policy() -> None:
    # The answer at the 4th step must repeat the bit shown at the 1st; the observations
    # in between are zeros. Chance is 0.5.
    torch.manual_seed(0)
    recurrent = _factored_policy(2)
    train_ppo(vector_env(lambda: MemoryEnv(4), 8), recurrent, CONFIG, total_steps=4096, seed=0)
    assert _greedy_return(recurrent, lambda: MemoryEnv(4), 200) >= 0.95

    # Without memory the last observation says nothing: no better than chance.
    mlp = MLPPolicy(2, 2)
    memoryless = lambda: MemoryEnv(4, factored=False)  # noqa: E731
    train_ppo(vector_env(memoryless, 8), mlp, CONFIG, total_steps=2048, seed=0)
    assert 0.4 <= _greedy_return(mlp, memoryless, 400) <= 0.6
