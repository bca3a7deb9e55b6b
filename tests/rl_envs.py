"""Toy Gymnasium environments with a known best policy, for the PPO tests.

They follow the masks convention of `esper.rl.rollout`: factored environments put the
conditional masks of their next decision in ``info["masks"]`` after reset and step.
The tests step them in an `EnvPool`, as Esper's training steps `MorphogenesisEnv`.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from esper.rl.policy import N_OP, FactoredActionSpec
from esper.rl.ppo import PPOConfig, Reference, UpdateRecord, adam, ppo_iteration
from esper.rl.rollout import RolloutCollector
from esper.rl.workers import EnvFactory, EnvPool, StepResult

WAIT, GERMINATE, FOSSILIZE, CULL = range(N_OP)
SPEC = FactoredActionSpec(n_slot=3, n_blueprint=3, n_blend=2)


def pool_of(envs: Sequence[gym.Env[Any, Any]]) -> EnvPool:
    """An `EnvPool` (one process) of these environments, in this order: the test keeps
    them to look inside."""
    return EnvPool(iter(envs).__next__, len(envs))


class LockstepPool:
    """An `EnvPool` seen only through ``reset`` and ``step``: stepped all together, as
    `RayEnvPool` is."""

    def __init__(self, pool: EnvPool) -> None:
        self.pool, self.num_envs = pool, pool.num_envs

    @classmethod
    def of(cls, factory: EnvFactory, num_envs: int, workers: int) -> LockstepPool:
        """A `PoolFactory`: an `EnvPool` of these, stepped all together."""
        return cls(EnvPool(factory, num_envs, workers))

    def reset(
        self, seeds: Sequence[int], which: Sequence[int] | None = None
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        return self.pool.reset(seeds, which)

    def step(self, actions: np.ndarray) -> StepResult:
        return self.pool.step(actions)

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> LockstepPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def train(
    collector: RolloutCollector,
    config: PPOConfig,
    updates: int,
    gamma: float = 0.99,
    reference: Reference | None = None,
) -> list[UpdateRecord]:
    """``updates`` iterations of Esper's PPO (`ppo_iteration`) of ``config.num_steps``
    steps each, on a fresh Adam (held near ``reference``, if given); episodes carry over
    between rollouts, seeded 0, 1, 2..."""
    optimizer, seeds = adam(collector.policy, config), itertools.count()
    return [
        ppo_iteration(
            collector,
            optimizer,
            config,
            gamma,
            update=update,
            updates=updates,
            steps=config.num_steps,
            seeds=seeds,
            restart=False,
            reference=reference,
        )
        for update in range(updates)
    ]


def limited_random_mask_env(max_steps: int) -> gym.Env[np.ndarray, np.ndarray]:
    """`RandomMaskEnv` truncated after ``max_steps`` (a picklable factory, with
    ``functools.partial``, for worker processes)."""
    return gym.wrappers.TimeLimit(RandomMaskEnv(), max_steps)


def random_masks(rng: np.random.Generator, spec: FactoredActionSpec) -> dict[str, np.ndarray]:
    """Consistent conditional masks: WAIT always legal, every legal op has a legal slot,
    every slot legal for GERMINATE has a legal blueprint, every blueprint a legal blend."""
    op = np.zeros(N_OP, dtype=bool)
    op[WAIT] = True
    op[1:] = rng.random(N_OP - 1) < 0.6
    slot = np.zeros((N_OP, spec.n_slot), dtype=bool)
    blueprint = np.zeros((spec.n_slot, spec.n_blueprint), dtype=bool)
    for o in np.flatnonzero(op[1:]) + 1:
        slot[o] = _nonempty(rng, spec.n_slot)
    for s in np.flatnonzero(slot[GERMINATE]):
        blueprint[s] = _nonempty(rng, spec.n_blueprint)
    blend = np.stack([_nonempty(rng, spec.n_blend) for _ in range(spec.n_blueprint)])
    return {"op": op, "slot": slot, "blueprint": blueprint, "blend": blend}


def _nonempty(rng: np.random.Generator, n: int) -> np.ndarray:
    subset = rng.random(n) < 0.5
    subset[rng.integers(n)] = True
    return subset


def is_legal(action: np.ndarray, masks: dict[str, np.ndarray]) -> bool:
    """Whether a factored action (op, slot, blueprint, blend) obeys the conditional masks."""
    op, slot, blueprint, blend = (int(a) for a in action)
    if not masks["op"][op]:
        return False
    if op == WAIT:
        return True
    if not masks["slot"][op, slot]:
        return False
    if op != GERMINATE:
        return True
    return bool(masks["blueprint"][slot, blueprint] and masks["blend"][blueprint, blend])


def _flat(masks: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([m.ravel() for m in masks.values()]).astype(np.float32)


class ConditionalBanditEnv(gym.Env[np.ndarray, np.ndarray]):
    """A one-step bandit over factored actions where only one legal arm pays.

    Each episode draws random conditional masks; GERMINATE is always legal, and blueprint
    ``PAYING`` is legal in some (at least one) of the slots GERMINATE may use. The
    observation is the masks, flattened. Reward 1 for GERMINATE with blueprint ``PAYING``
    and blend ``PAYING_BLEND``, 0 for anything else; an illegal action (which the masks
    must prevent) is applied as WAIT and counted in ``illegal_actions``.
    """

    PAYING = 2
    PAYING_BLEND = 1

    def __init__(self) -> None:
        heads = N_OP + N_OP * SPEC.n_slot + SPEC.n_slot * SPEC.n_blueprint
        n_obs = heads + SPEC.n_blueprint * SPEC.n_blend
        self.observation_space = gym.spaces.Box(0.0, 1.0, (n_obs,), np.float32)
        self.action_space = gym.spaces.MultiDiscrete(list(SPEC.nvec))
        self.illegal_actions = 0
        self.masks: dict[str, np.ndarray] = {}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        masks = random_masks(self.np_random, SPEC)
        masks["op"][GERMINATE] = True
        if not masks["slot"][GERMINATE].any():
            masks["slot"][GERMINATE, self.np_random.integers(SPEC.n_slot)] = True
        germinable = np.flatnonzero(masks["slot"][GERMINATE])
        masks["blueprint"][germinable] = True
        paying = self.np_random.random(len(germinable)) < 0.5
        paying[self.np_random.integers(len(germinable))] = True
        masks["blueprint"][germinable, self.PAYING] = paying
        masks["blend"][:] = True
        self.masks = masks
        return _flat(masks), {"masks": masks}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        legal = is_legal(action, self.masks)
        self.illegal_actions += not legal
        pays = (
            legal
            and action[0] == GERMINATE
            and action[2] == self.PAYING
            and action[3] == self.PAYING_BLEND
        )
        # The next decision never comes (terminal); its masks are all-legal placeholders.
        return _flat(self.masks), float(pays), True, False, {"masks": self.masks}


class MemoryEnv(gym.Env[np.ndarray, Any]):
    """Remember the first observation: only a policy with memory beats chance.

    Step 0 shows a random bit as a one-hot; the following ``length - 1`` observations
    are all zeros. The answer given at the last step earns 1 if it equals the bit, else
    0; earlier answers earn nothing. Answers are op WAIT (0) or GERMINATE (1) of a
    factored action (the only legal ops), or a ``Discrete(2)`` action when ``factored``
    is False. Chance is 0.5 per episode.
    """

    def __init__(self, length: int = 4, factored: bool = True) -> None:
        self.length, self.factored = length, factored
        self.observation_space = gym.spaces.Box(0.0, 1.0, (2,), np.float32)
        self.action_space: gym.spaces.Space[Any] = (
            gym.spaces.MultiDiscrete(list(SPEC.nvec)) if factored else gym.spaces.Discrete(2)
        )
        self.masks = {
            "op": np.array([True, True, False, False]),
            "slot": np.array([[False] * SPEC.n_slot] + [[True] * SPEC.n_slot] * 3),
            "blueprint": np.ones((SPEC.n_slot, SPEC.n_blueprint), dtype=bool),
            "blend": np.ones((SPEC.n_blueprint, SPEC.n_blend), dtype=bool),
        }
        self.bit, self.t = 0, 0

    def _info(self) -> dict[str, Any]:
        return {"masks": self.masks} if self.factored else {}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.bit, self.t = int(self.np_random.integers(2)), 0
        return np.eye(2, dtype=np.float32)[self.bit], self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        answer = int(action[0]) if self.factored else int(action)
        self.t += 1
        done = self.t == self.length
        reward = float(done and answer == self.bit)
        return np.zeros(2, dtype=np.float32), reward, done, False, self._info()


class RandomMaskEnv(gym.Env[np.ndarray, np.ndarray]):
    """Random observations and conditional masks, episodes of random length.

    Episodes end by termination with probability ``p_end`` per step; wrap it in a
    ``TimeLimit`` to get truncations too. Counts actions that break the masks, and keeps
    the masks each action was chosen under (``decided``).
    """

    def __init__(self, obs_dim: int = 5, p_end: float = 0.15) -> None:
        self.p_end = p_end
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (obs_dim,), np.float32)
        self.action_space = gym.spaces.MultiDiscrete(list(SPEC.nvec))
        self.masks: dict[str, np.ndarray] = {}
        self.illegal_actions = 0
        self.decided: list[dict[str, np.ndarray]] = []

    def _observe(self) -> tuple[np.ndarray, dict[str, Any]]:
        self.masks = random_masks(self.np_random, SPEC)
        obs = self.np_random.uniform(-1, 1, self.observation_space.shape).astype(np.float32)
        return obs, {"masks": self.masks}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        return self._observe()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.illegal_actions += not is_legal(action, self.masks)
        self.decided.append(self.masks)
        reward = float(action[0] == GERMINATE)
        obs, info = self._observe()
        return obs, reward, bool(self.np_random.random() < self.p_end), False, info


class SlowEnv(RandomMaskEnv):
    """`RandomMaskEnv` without episode ends, whose steps take ``delay`` seconds (time for
    a fault to strike mid-step). ``noisy`` adds noise from an unseeded generator, so an
    episode is no longer determined by its seed and actions."""

    def __init__(self, delay: float = 0.0, noisy: bool = False) -> None:
        super().__init__(p_end=0.0)
        self.delay, self.noisy = delay, noisy

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        time.sleep(self.delay)
        obs, reward, terminated, truncated, info = super().step(action)
        if self.noisy:
            obs = obs + np.random.default_rng().uniform(0, 1e-3, obs.shape).astype(np.float32)
        return obs, reward, terminated, truncated, info


class UnevenEnv(RandomMaskEnv):
    """`RandomMaskEnv` whose steps take 0 to 40 ms, set by its episode's seed and step,
    so that environments stepped in several workers answer out of order. Episodes also
    stop at random (``p_end``), so spare seeds are taken mid-rollout. With a ``slow``
    delay, every step of an episode of even seed takes that long instead. The info of
    each step lists when the episode's steps were answered (``answered``)."""

    def __init__(self, slow: float = 0.0, p_end: float = 0.2) -> None:
        super().__init__(p_end=p_end)
        self.slow, self.seed, self.t = slow, 0, 0
        self.answered: list[float] = []

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        self.seed, self.t, self.answered = int(seed or 0), 0, []
        return super().reset(seed=seed)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        slow = self.slow and self.seed % 2 == 0
        time.sleep(self.slow if slow else 0.01 * ((self.seed * 7 + self.t) % 5))
        self.t += 1
        obs, reward, terminated, truncated, info = super().step(action)
        self.answered.append(time.monotonic())
        return obs, reward, terminated, truncated, {**info, "answered": list(self.answered)}


def slow_and_fast_env(steps: int) -> gym.Env[np.ndarray, np.ndarray]:
    """`UnevenEnv` episodes of ``steps`` steps, 0.4 s each for even seeds and none for
    odd ones (a picklable factory, with ``functools.partial``)."""
    return gym.wrappers.TimeLimit(UnevenEnv(slow=0.4, p_end=0.0), steps)


class CountingEnv(gym.Env[np.ndarray, int]):
    """Observation = steps taken so far; reward = 1 per step; terminates after
    ``terminate_after`` steps (wrap in a ``TimeLimit`` to truncate earlier)."""

    def __init__(self, terminate_after: int) -> None:
        self.terminate_after = terminate_after
        self.observation_space = gym.spaces.Box(0.0, 1e3, (1,), np.float32)
        self.action_space: gym.spaces.Space[Any] = gym.spaces.Discrete(2)
        self.t = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], dtype=np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.t += 1
        obs = np.array([float(self.t)], dtype=np.float32)
        return obs, 1.0, self.t >= self.terminate_after, False, {"t": self.t}


class StoppingEnv(gym.Env[np.ndarray, int]):
    """Episodes of ``length`` steps that terminate, except that one with an odd seed
    stops after ``stop_after`` steps, as the governor stops a run of `MorphogenesisEnv`.

    The observation is (seed, steps taken); the reward 1 per step. A demonstrator's
    action (steps taken mod 2) is in ``info["demonstration"]`` after reset and every
    step but a stopping one. Stepping an episode that ended is an error, as in
    `MorphogenesisEnv`.
    """

    def __init__(self, length: int = 4, stop_after: int = 2) -> None:
        self.length, self.stop_after = length, stop_after
        self.observation_space = gym.spaces.Box(0.0, np.inf, (2,), np.float32)
        self.action_space: gym.spaces.Space[Any] = gym.spaces.Discrete(2)
        self.episode_seed, self.t, self.done = 0, 0, True

    def _obs(self) -> np.ndarray:
        return np.array([self.episode_seed, self.t], dtype=np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.episode_seed, self.t, self.done = int(seed or 0), 0, False
        return self._obs(), {"demonstration": np.int64(0)}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self.done:
            raise RuntimeError("step() after the episode ended")
        self.t += 1
        if self.episode_seed % 2 and self.t == self.stop_after:
            self.done = True
            return self._obs(), 1.0, True, False, {"stopped": "the governor stopped it"}
        self.done = self.t == self.length
        return self._obs(), 1.0, self.done, False, {"demonstration": np.int64(self.t % 2)}
