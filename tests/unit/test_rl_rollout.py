"""The rollout collector: real transitions only, correct bootstraps, masks from info."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from esper.rl.policy import MLPPolicy, RecurrentFactoredPolicy
from esper.rl.rollout import RolloutCollector, env_info
from tests.rl_envs import SPEC, CountingEnv, RandomMaskEnv, vector_env


def _counting_envs() -> gym.vector.SyncVectorEnv:
    # env 0 terminates after 3 steps; env 1 is truncated by its time limit after 2.
    return gym.vector.SyncVectorEnv(
        [
            lambda: gym.wrappers.TimeLimit(CountingEnv(terminate_after=3), 10),
            lambda: gym.wrappers.TimeLimit(CountingEnv(terminate_after=10), 2),
        ],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )


def test_transitions_starts_endings_and_bootstraps() -> None:
    policy = MLPPolicy(1, 2)
    collector = RolloutCollector(_counting_envs(), policy, num_steps=7, seed=0)
    rollout = collector.collect()
    buffer = rollout.buffer

    # Every stored step is a real decision: observations restart after each ending.
    assert buffer.obs[:, :, 0].T.tolist() == [[0, 1, 2, 0, 1, 2, 0], [0, 1, 0, 1, 0, 1, 0]]
    assert buffer.starts.T.tolist() == [[1, 0, 0, 1, 0, 0, 1], [1, 0, 1, 0, 1, 0, 1]]
    assert buffer.terminated.T.tolist() == [[0, 0, 1, 0, 0, 1, 0], [0] * 7]
    assert buffer.truncated.T.tolist() == [[0] * 7, [0, 1, 0, 1, 0, 1, 0]]
    assert torch.equal(buffer.rewards, torch.ones(7, 2))

    # A terminal step bootstraps nothing; a truncated one from its true final observation
    # (the count 2, which the vector env hands over in info["final_obs"]).
    value_at_2 = policy.value(torch.tensor([[2.0]]), ())
    assert torch.equal(buffer.final_values[:, 0], torch.zeros(7))
    truncated = buffer.truncated[:, 1].bool()
    assert torch.equal(buffer.final_values[truncated, 1], value_at_2.expand(3))
    assert torch.equal(buffer.final_values[~truncated, 1], torch.zeros(4))
    torch.testing.assert_close(buffer.last_value, policy.value(torch.tensor([[1.0], [1.0]]), ()))
    torch.testing.assert_close(
        buffer.values, policy.value(buffer.obs.reshape(-1, 1), ()).reshape(7, 2)
    )

    ends = [
        (e.env, e.length, e.episode_return, e.truncated, e.global_step) for e in rollout.episodes
    ]
    assert ends == [
        (1, 2, 2.0, True, 4),
        (0, 3, 3.0, False, 6),
        (1, 2, 2.0, True, 8),
        (0, 3, 3.0, False, 12),
        (1, 2, 2.0, True, 12),
    ]
    assert rollout.episodes[1].final_info["t"] == 3

    # The next rollout continues where this one stopped.
    following = collector.collect().buffer
    assert following.obs[:, :, 0].T.tolist()[0][:2] == [1, 2]
    assert following.starts[0].tolist() == [0, 0]


def test_next_step_autoreset_is_refused() -> None:
    envs = gym.vector.SyncVectorEnv([lambda: CountingEnv(3)])
    with pytest.raises(ValueError, match="SAME_STEP"):
        RolloutCollector(envs, MLPPolicy(1, 2), num_steps=4)


def test_masks_come_from_info_and_describe_the_next_decision() -> None:
    envs = vector_env(lambda: gym.wrappers.TimeLimit(RandomMaskEnv(), 4), 3)
    policy = RecurrentFactoredPolicy(5, SPEC.n_slot, SPEC.n_blueprint, SPEC.n_blend, hidden=8)
    collector = RolloutCollector(envs, policy, num_steps=10, seed=1)
    buffer = collector.collect().buffer
    assert buffer.masks is not None
    assert buffer.masks.op.shape == (10, 3, 4)
    assert buffer.masks.slot.shape == (10, 3, 4, SPEC.n_slot)
    assert buffer.masks.blueprint.shape == (10, 3, SPEC.n_slot, SPEC.n_blueprint)
    assert buffer.masks.blend.shape == (10, 3, SPEC.n_blend)
    assert [env.unwrapped.illegal_actions for env in envs.envs] == [0, 0, 0]  # type: ignore[attr-defined]
    # The masks after the last step are those of each env's current decision.
    current = [env.unwrapped.masks["op"] for env in envs.envs]  # type: ignore[attr-defined]
    assert collector.masks is not None
    assert np.array_equal(collector.masks.op.numpy(), np.stack(current))


def test_a_fixed_seed_gives_the_same_rollout() -> None:
    def rollout() -> torch.Tensor:
        torch.manual_seed(0)
        envs = vector_env(RandomMaskEnv, 2)
        policy = RecurrentFactoredPolicy(5, SPEC.n_slot, SPEC.n_blueprint, SPEC.n_blend, hidden=8)
        collector = RolloutCollector(
            envs, policy, 6, seed=4, generator=torch.Generator().manual_seed(4)
        )
        return collector.collect().buffer.actions

    assert torch.equal(rollout(), rollout())


def test_env_info_unstacks_one_environment() -> None:
    info = {
        "a": np.array([1, 2]),
        "_a": np.array([True, False]),
        "d": {"x": np.array([3, 4]), "_x": np.array([False, True])},
        "_d": np.array([True, True]),
    }
    assert env_info(info, 0) == {"a": 1, "d": {}}
    assert env_info(info, 1) == {"d": {"x": 4}}


def test_async_workers_give_the_same_rollout_as_one_process() -> None:
    def make() -> gym.Env[np.ndarray, np.ndarray]:
        return gym.wrappers.TimeLimit(RandomMaskEnv(), 5)

    def rollout(envs: gym.vector.VectorEnv) -> tuple[torch.Tensor, ...]:
        torch.manual_seed(0)
        policy = RecurrentFactoredPolicy(5, SPEC.n_slot, SPEC.n_blueprint, SPEC.n_blend, hidden=8)
        collector = RolloutCollector(
            envs, policy, 12, seed=2, generator=torch.Generator().manual_seed(2)
        )
        buffer = collector.collect().buffer
        envs.close()
        assert buffer.masks is not None
        return buffer.obs, buffer.actions, buffer.final_values, buffer.masks.slot

    same_step = gym.vector.AutoresetMode.SAME_STEP
    in_process = rollout(gym.vector.SyncVectorEnv([make] * 2, autoreset_mode=same_step))
    workers = rollout(gym.vector.AsyncVectorEnv([make] * 2, autoreset_mode=same_step))
    assert all(torch.equal(a, b) for a, b in zip(in_process, workers, strict=True))
