"""The one rollout collector over an `EnvPool`: real transitions only, correct bootstraps,
masks from info, the seeds of every episode, early ends restarted, demonstrations."""

from __future__ import annotations

import functools
import itertools
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from esper.rl.policy import MLPPolicy, RecurrentFactoredPolicy
from esper.rl.rollout import RolloutCollector
from esper.rl.workers import AsyncEnvPool, EnvPool
from tests.rl_envs import (
    SPEC,
    CountingEnv,
    LockstepPool,
    RandomMaskEnv,
    StoppingEnv,
    UnevenEnv,
    limited_random_mask_env,
    pool_of,
    slow_and_fast_env,
)


def _masked_policy(hidden: int = 8) -> RecurrentFactoredPolicy:
    return RecurrentFactoredPolicy(5, SPEC.n_slot, SPEC.n_blueprint, SPEC.n_blend, hidden)


def test_transitions_starts_endings_and_bootstraps() -> None:
    # env 0 terminates after 3 steps; env 1 is truncated by its time limit after 2.
    envs = [
        gym.wrappers.TimeLimit(CountingEnv(terminate_after=3), 10),
        gym.wrappers.TimeLimit(CountingEnv(terminate_after=10), 2),
    ]
    policy = MLPPolicy(1, 2)
    collector = RolloutCollector(pool_of(envs), policy)
    seeds = itertools.count()
    rollout = collector.collect(7, seeds, restart=False)
    buffer = rollout.buffer

    # Every stored step is a real decision: observations restart after each ending.
    assert buffer.obs[:, :, 0].T.tolist() == [[0, 1, 2, 0, 1, 2, 0], [0, 1, 0, 1, 0, 1, 0]]
    assert buffer.starts.T.tolist() == [[1, 0, 0, 1, 0, 0, 1], [1, 0, 1, 0, 1, 0, 1]]
    assert buffer.terminated.T.tolist() == [[0, 0, 1, 0, 0, 1, 0], [0] * 7]
    assert buffer.truncated.T.tolist() == [[0] * 7, [0, 1, 0, 1, 0, 1, 0]]
    assert torch.equal(buffer.rewards, torch.ones(7, 2))

    # A terminal step bootstraps nothing; a truncated one from its final observation
    # (the count 2, which the step returned).
    value_at_2 = policy.value(torch.tensor([[2.0]]), ())
    assert torch.equal(buffer.final_values[:, 0], torch.zeros(7))
    truncated = buffer.truncated[:, 1].bool()
    assert torch.equal(buffer.final_values[truncated, 1], value_at_2.expand(3))
    assert torch.equal(buffer.final_values[~truncated, 1], torch.zeros(4))
    torch.testing.assert_close(buffer.last_value, policy.value(torch.tensor([[1.0], [1.0]]), ()))
    torch.testing.assert_close(
        buffer.values, policy.value(buffer.obs.reshape(-1, 1), ()).reshape(7, 2)
    )

    # Seeds go to episodes in the order they start (in env order within a step).
    ends = [
        (e.env, e.seed, e.length, e.episode_return, e.truncated, e.global_step)
        for e in rollout.episodes
    ]
    assert ends == [
        (1, 1, 2, 2.0, True, 4),
        (0, 0, 3, 3.0, False, 6),
        (1, 2, 2, 2.0, True, 8),
        (0, 3, 3, 3.0, False, 12),
        (1, 4, 2, 2.0, True, 12),
    ]
    assert rollout.episodes[1].final_info["t"] == 3

    # The next rollout continues where this one stopped.
    following = collector.collect(7, seeds, restart=False).buffer
    assert following.obs[:, :, 0].T.tolist()[0][:2] == [1, 2]
    assert following.starts[0].tolist() == [0, 0]


@pytest.mark.parametrize("demonstrated", [False, True], ids=["policy", "demonstrated"])
def test_restart_starts_fresh_episodes_and_follows_a_stopped_one(demonstrated: bool) -> None:
    # Episodes of 4 steps; odd seeds stop after 2 (a governor stop). Episodes must start
    # fresh at each call, and a stopped one be followed at once by a spare seed's, also
    # when the demonstrator acts (stepping the stopped episode again would be an error).
    collector = RolloutCollector(
        pool_of([StoppingEnv(), StoppingEnv(), StoppingEnv()]), MLPPolicy(2, 2)
    )
    spare = itertools.count(100)
    rollout = collector.collect(
        4, itertools.chain([10, 11, 12], spare), restart=True, demonstrated=demonstrated
    )
    buffer = rollout.buffer
    assert buffer.obs[:, :, 0].T.tolist() == [[10] * 4, [11, 11, 100, 100], [12] * 4]
    assert buffer.starts.T.tolist() == [[1, 0, 0, 0], [1, 0, 1, 0], [1, 0, 0, 0]]
    ends = [(e.env, e.seed, e.length) for e in rollout.episodes]
    assert ends == [(1, 11, 2), (0, 10, 4), (2, 12, 4)]
    assert rollout.episodes[0].final_info["stopped"]
    assert next(spare) == 101  # episodes ending at the rollout's last step start none
    if demonstrated:
        steps_taken = buffer.obs[:, :, 1].long()
        assert torch.equal(buffer.actions, steps_taken % 2)
        scored = collector.policy.evaluate(
            buffer.obs, buffer.actions, None, buffer.initial_state, buffer.starts
        )
        torch.testing.assert_close(scored.log_prob, buffer.log_probs)

    # The next call starts every environment afresh, the unfinished episode too.
    following = collector.collect(2, iter([20, 21, 22]), restart=True).buffer
    assert following.obs[0, :, 0].tolist() == [20, 21, 22]
    assert following.starts[0].tolist() == [1, 1, 1]


def test_masks_come_from_info_and_describe_the_next_decision() -> None:
    envs = [RandomMaskEnv() for _ in range(3)]
    collector = RolloutCollector(
        pool_of([gym.wrappers.TimeLimit(env, 4) for env in envs]), _masked_policy()
    )
    buffer = collector.collect(10, itertools.count(1), restart=False).buffer
    assert buffer.masks is not None
    assert buffer.masks.op.shape == (10, 3, 4)
    assert buffer.masks.slot.shape == (10, 3, 4, SPEC.n_slot)
    assert buffer.masks.blueprint.shape == (10, 3, SPEC.n_slot, SPEC.n_blueprint)
    assert buffer.masks.blend.shape == (10, 3, SPEC.n_blueprint, SPEC.n_blend)
    assert [env.illegal_actions for env in envs] == [0, 0, 0]
    # Each step's masks are those the environment showed for that decision ...
    for i, env in enumerate(envs):
        shown = np.stack([masks["slot"] for masks in env.decided])
        assert np.array_equal(buffer.masks.slot[:, i].numpy(), shown)
    # ... and after the last step, those of each environment's next one.
    masks = collector.masks()
    assert masks is not None
    assert np.array_equal(masks.op.numpy(), np.stack([env.masks["op"] for env in envs]))


def test_a_fixed_seed_gives_the_same_rollout() -> None:
    def rollout() -> torch.Tensor:
        torch.manual_seed(0)
        collector = RolloutCollector(
            EnvPool(RandomMaskEnv, 2), _masked_policy(), torch.Generator().manual_seed(4)
        )
        return collector.collect(6, itertools.count(4), restart=False).buffer.actions

    assert torch.equal(rollout(), rollout())


def test_two_workers_give_the_same_rollouts_as_one_process() -> None:
    def rollouts(workers: int) -> list[torch.Tensor]:
        torch.manual_seed(0)
        factory = functools.partial(limited_random_mask_env, 5)
        with EnvPool(factory, 3, workers) as pool:
            collector = RolloutCollector(pool, _masked_policy(), torch.Generator().manual_seed(2))
            seen, seeds = [], itertools.count(2)
            for restart in (False, False, True):
                buffer = collector.collect(7, seeds, restart=restart).buffer
                assert buffer.masks is not None
                seen += [buffer.obs, buffer.actions, buffer.final_values, buffer.masks.slot]
        return seen

    one, two = rollouts(1), rollouts(2)
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))


def _uneven_rollouts(pool: Any) -> list[Any]:
    """Three rollouts (carried over, then restarted) of `UnevenEnv`s: what was stored,
    and every episode's environment, seed, length and end."""
    torch.manual_seed(0)
    collector = RolloutCollector(pool, _masked_policy(), torch.Generator().manual_seed(3))
    seen: list[Any] = []
    seeds = itertools.count(7)
    for restart in (False, False, True):
        rollout = collector.collect(6, seeds, restart=restart)
        b = rollout.buffer
        assert b.masks is not None
        seen += [b.obs, b.actions, b.log_probs, b.starts, b.terminated, b.masks.slot]
        seen.append([(e.env, e.seed, e.length, e.global_step) for e in rollout.episodes])
    seen.append(next(seeds))  # the same number of seeds taken
    return seen


def _same(a: list[Any], b: list[Any]) -> bool:
    return all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
        for x, y in zip(a, b, strict=True)
    )


def test_stepping_each_environment_when_ready_gives_the_lockstep_rollouts() -> None:
    # Four environments in two workers answer in whatever order their steps finish and
    # stop at random; stepped all together they answer in order. Same rollouts, same
    # seeds for the episodes that start mid-rollout.
    with EnvPool(UnevenEnv, 4, 2) as pool:
        assert isinstance(pool, AsyncEnvPool)
        ready = _uneven_rollouts(pool)
    with LockstepPool(EnvPool(UnevenEnv, 4, 1)) as lockstep:
        assert not isinstance(lockstep, AsyncEnvPool)
        together = _uneven_rollouts(lockstep)
    assert any(e[2] < 6 for e in ready[6]), "some episodes should start mid-rollout"
    assert _same(ready, together)


def test_a_slow_environment_does_not_hold_up_the_others() -> None:
    # Environment 0 (an even seed) takes 0.4 s a step, environment 1 none; each has a
    # worker. Environment 1 does all its steps while 0 is still on its first.
    with EnvPool(functools.partial(slow_and_fast_env, 3), 2, 2) as pool:
        collector = RolloutCollector(pool, _masked_policy(), torch.Generator().manual_seed(0))
        episodes = collector.collect(3, iter([0, 1]), restart=True).episodes
    answered = {e.seed: e.final_info["answered"] for e in episodes}
    assert max(answered[1]) < min(answered[0])


def test_a_rollout_needs_a_step_and_a_seed_for_every_episode() -> None:
    collector = RolloutCollector(EnvPool(functools.partial(CountingEnv, 3), 2), MLPPolicy(1, 2))
    with pytest.raises(ValueError, match="at least 1 step"):
        collector.collect(0, itertools.count(), restart=True)
    with pytest.raises(ValueError, match="the seeds ran out"):
        collector.collect(4, iter([1]), restart=True)
    # The pool is left ready for the next rollout, which starts afresh.
    buffer = collector.collect(2, iter([5, 6]), restart=False).buffer
    assert buffer.starts[0].tolist() == [1, 1]
