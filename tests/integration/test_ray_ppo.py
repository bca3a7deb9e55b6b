"""``esper ppo train --ray`` on a local Ray: environment actors that die (restarted by
Ray, or dead for good and replaced) have their unfinished episodes replayed, and the
training ends with the policy of a run without faults; a replay that does not reproduce
its episode stops the rollout instead of training on it."""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

import esper.rl.ray_envs
from esper.rl.ray_envs import RayEnvPool
from esper.rl.training import read_updates
from esper.rl.workers import EnvPool, EnvWorkerError, StepResult
from tests.commands import policy_weights, ppo_train
from tests.rl_envs import SPEC, SlowEnv


@pytest.fixture(scope="module")
def local_policy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The policy trained with the local pool (one process), no faults."""
    out = tmp_path_factory.mktemp("ppo") / "local"
    assert ppo_train(out) == 0
    return policy_weights(out)


def _kill(ray: ModuleType, pool: RayEnvPool, w: int, restart: bool) -> None:
    """Kill actor ``w`` and wait until Ray has seen it die: a call made right after
    ``ray.kill`` can still reach the old process."""
    ray.kill(pool._actors[w], no_restart=not restart)
    while True:
        try:
            if ray.get(pool._actors[w].ready.remote()) != pool._incarnations[w]:
                return  # restarted
        except ray.exceptions.ActorDiedError:
            return  # dead for good
        except ray.exceptions.RayActorError:
            pass  # restarting
        time.sleep(0.05)


def test_killed_actors_are_restarted_and_the_policy_is_the_one_without_faults(
    local_ray: ModuleType,
    local_policy: dict[str, torch.Tensor],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ray = local_ray
    real = RayEnvPool.step
    calls: list[int] = []

    def step(pool: RayEnvPool, actions: np.ndarray) -> StepResult:
        calls.append(1)
        # Each update is 5 steps (6 epochs, the first trained by reset).
        if len(calls) == 3:  # mid-rollout of update 1: Ray restarts the actor
            _kill(ray, pool, 1, restart=True)
        if len(calls) == 7:  # mid-rollout of update 2: dead for good, replaced
            _kill(ray, pool, 0, restart=False)
        return real(pool, actions)

    monkeypatch.setattr(esper.rl.ray_envs.RayEnvPool, "step", step)
    out = tmp_path / "ray"
    assert ppo_train(out, "--ray", "--workers", "2") == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "restarted" in line]
    assert len(warnings) == 2, warnings
    assert "replayed its 1 unfinished episode(s) from their seeds (2 steps)" in warnings[0]
    assert "replayed its 1 unfinished episode(s) from their seeds (1 steps)" in warnings[1]
    assert [row.episodes for row in read_updates(out / "updates.jsonl")] == [2, 4]
    # Same seeds, same actions (sampled in the driver), so the same episodes: the same
    # policy as one process without any fault, bit for bit.
    weights = policy_weights(out)
    for key, value in local_policy.items():
        assert torch.equal(weights[key], value), key


def _rollout(pool: Any, steps: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    obs, _ = pool.reset([10, 11, 12, 13])
    seen = [(obs, np.zeros(4))]
    for _ in range(steps):
        actions = rng.integers(0, SPEC.nvec, size=(4, len(SPEC.nvec)))
        result = pool.step(actions)
        seen.append((result.obs, result.rewards))
    return seen


def test_an_actor_killed_during_a_step_is_recovered_with_the_same_results(
    local_ray: ModuleType,
) -> None:
    factory = functools.partial(SlowEnv, delay=0.1)
    with EnvPool(factory, 4, 1) as local:
        expected = _rollout(local)
    with RayEnvPool(factory, 4, 2, warn=lambda message: None) as pool:
        # The third step of actor 0 (two environments of 0.1 s each) dies half-way.
        original = pool._call

        def call(command: str, arguments: list[Any], resetting: Any) -> list[Any]:
            if command == "step" and pool.restarts == 0 and len(calls) == 2:
                threading.Timer(0.1, local_ray.kill, (pool._actors[0],)).start()
            calls.append(command)
            return original(command, arguments, resetting)

        calls: list[str] = []
        pool._call = call  # type: ignore[method-assign]
        seen = _rollout(pool)
        assert pool.restarts == 1
    for (obs, rewards), (want_obs, want_rewards) in zip(seen, expected, strict=True):
        assert np.array_equal(obs, want_obs) and np.array_equal(rewards, want_rewards)


def test_a_replay_that_does_not_reproduce_its_episode_stops_the_rollout(
    local_ray: ModuleType,
) -> None:
    with RayEnvPool(functools.partial(SlowEnv, noisy=True), 2, 1) as pool:
        pool.reset([1, 2])
        pool.step(np.zeros((2, len(SPEC.nvec)), dtype=np.int64))
        _kill(local_ray, pool, 0, restart=True)
        with pytest.raises(EnvWorkerError, match="did not reproduce it"):
            pool.step(np.zeros((2, len(SPEC.nvec)), dtype=np.int64))


def test_an_environment_that_cannot_start_is_one_line(local_ray: ModuleType) -> None:
    with pytest.raises(EnvWorkerError, match=r"could not start: .*TypeError"):
        RayEnvPool(functools.partial(SlowEnv, no_such_argument=1), 2, 2)  # type: ignore[call-arg]
