"""Collect rollouts from a Gymnasium vector environment with an `ActorCritic`.

The vector environment must reset finished sub-environments in the same step
(``autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP``): the step that ends an
episode returns the episode's reward and end flags, the *next* episode's first
observation, and the episode's final observation in ``info["final_obs"]``. So every
stored transition is real (NEXT_STEP mode would return a step whose action is ignored),
and a truncated episode is bootstrapped from the value of its true final observation.

Masks: an environment with conditional action masks puts the masks for its *next*
decision in ``info["masks"]``, a dict of boolean numpy arrays keyed op / slot / blueprint
/ blend with the shapes of `ActionMasks` minus the batch dimension, after ``reset()`` and
after every ``step()``. The vector environment stacks them (in SAME_STEP mode a finished
sub-environment's entry comes from its reset, i.e. describes the new episode's first
decision). Environments without ``info["masks"]`` are unmasked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from esper.rl.buffer import RolloutBuffer
from esper.rl.policy import ActionMasks, ActorCritic, ActOutput, PolicyState
from esper.rl.workers import VectorEnvPool

__all__ = [
    "EpisodeRecord",
    "EpisodeSummary",
    "Rollout",
    "RolloutCollector",
    "collect_episodes",
    "env_info",
]


@dataclass(frozen=True)
class EpisodeRecord:
    """One finished episode."""

    env: int
    """Index of the sub-environment."""
    episode_return: float
    """Undiscounted sum of the episode's rewards."""
    length: int
    """Number of steps."""
    global_step: int
    """Environment steps taken by all sub-environments when the episode ended."""
    truncated: bool
    """Ended by a time limit rather than a terminal state."""
    final_info: dict[str, Any] = field(default_factory=dict)
    """The sub-environment's ``info`` of the episode's last step."""


@dataclass(frozen=True)
class Rollout:
    """A collected rollout and the episodes that finished during it."""

    buffer: RolloutBuffer
    episodes: list[EpisodeRecord]


def env_info(vector_info: dict[str, Any], index: int) -> dict[str, Any]:
    """Sub-environment ``index``'s entries of a vector environment's stacked ``info``."""
    own: dict[str, Any] = {}
    for key, value in vector_info.items():
        present = vector_info.get(f"_{key}")
        if key.startswith("_") or present is None or not present[index]:
            continue
        own[key] = env_info(value, index) if isinstance(value, dict) else value[index]
    return own


def _select(state: PolicyState, index: Tensor) -> PolicyState:
    return tuple(s[:, index] for s in state)


class RolloutCollector:
    """Steps ``envs`` with ``policy`` and returns T-step rollouts, continuing between calls.

    Args:
        envs: a vector environment in SAME_STEP autoreset mode.
        policy: the policy that acts (its parameters may change between rollouts).
        num_steps: T, steps per environment per rollout.
        seed: seeds the environments' first reset (sub-environment i gets seed + i).
        generator: random generator for sampling actions (None: torch's global one).
    """

    def __init__(
        self,
        envs: gym.vector.VectorEnv,
        policy: ActorCritic,
        num_steps: int,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        mode = envs.metadata.get("autoreset_mode")
        if mode != gym.vector.AutoresetMode.SAME_STEP:
            raise ValueError(
                f"the vector env resets in mode {mode}; create it with "
                "autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP"
            )
        if num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {num_steps}")
        self.envs, self.policy, self.num_steps, self.generator = envs, policy, num_steps, generator
        self.num_envs = envs.num_envs
        self.device = next(policy.parameters()).device
        obs, info = envs.reset(seed=seed)
        self.obs = self._tensor(obs)
        self.masks = self._masks(info)
        self.starts = torch.ones(self.num_envs, device=self.device)
        self.state = policy.initial_state(self.num_envs)
        self.returns = np.zeros(self.num_envs)
        self.lengths = np.zeros(self.num_envs, dtype=np.int64)
        self.global_step = 0

    def _tensor(self, array: Any) -> Tensor:
        return torch.as_tensor(np.asarray(array), dtype=torch.float32, device=self.device)

    def _masks(self, info: dict[str, Any]) -> ActionMasks | None:
        if "masks" not in info:
            return None
        present = info["_masks"]
        if not present.all():
            raise ValueError(f"only sub-environments {np.flatnonzero(present)} gave masks")
        return ActionMasks.from_numpy(info["masks"], self.device)

    def collect(self) -> Rollout:
        """Run T steps in every environment and return them with the finished episodes."""
        initial_state = self.state
        steps: dict[str, list[Tensor]] = {}
        masks: list[ActionMasks] = []
        episodes: list[EpisodeRecord] = []
        for _ in range(self.num_steps):
            out = self.policy.act(
                self.obs, self.state, self.masks, self.starts, generator=self.generator
            )
            next_obs, reward, terminated, truncated, info = self.envs.step(out.action.cpu().numpy())
            self.global_step += self.num_envs
            step = {
                "obs": self.obs,
                "actions": out.action,
                "log_probs": out.log_prob,
                "values": out.value,
                "rewards": self._tensor(reward),
                "starts": self.starts,
                "terminated": self._tensor(terminated),
                "truncated": self._tensor(truncated),
                "final_values": self._final_values(truncated & ~terminated, info, out.state),
            }
            for name, value in step.items():
                steps.setdefault(name, []).append(value)
            if self.masks is not None:
                masks.append(self.masks)
            episodes += self._finish_episodes(reward, terminated, truncated, info)
            self.obs, self.state, self.masks = self._tensor(next_obs), out.state, self._masks(info)
            self.starts = self._tensor(terminated | truncated)
        stacked = {name: torch.stack(values) for name, values in steps.items()}
        buffer = RolloutBuffer(
            **stacked,
            masks=ActionMasks.stack(masks) if masks else None,
            initial_state=initial_state,
            last_value=self.policy.value(self.obs, self.state, self.starts),
        )
        return Rollout(buffer, episodes)

    def _final_values(
        self, truncated: np.ndarray, info: dict[str, Any], state: PolicyState
    ) -> Tensor:
        """V(final observation) for truncated episodes, from the state after their last step."""
        values = torch.zeros(self.num_envs, device=self.device)
        index = np.flatnonzero(truncated)
        if len(index):
            final_obs = self._tensor(np.stack([info["final_obs"][i] for i in index]))
            rows = torch.as_tensor(index, device=self.device)
            values[rows] = self.policy.value(final_obs, _select(state, rows))
        return values

    def _finish_episodes(
        self,
        reward: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        info: dict[str, Any],
    ) -> list[EpisodeRecord]:
        self.returns += reward
        self.lengths += 1
        finished = []
        for i in np.flatnonzero(terminated | truncated):
            final_info = env_info(info.get("final_info", {}), int(i))
            finished.append(
                EpisodeRecord(
                    int(i),
                    float(self.returns[i]),
                    int(self.lengths[i]),
                    self.global_step,
                    bool(truncated[i] and not terminated[i]),
                    final_info,
                )
            )
            self.returns[i], self.lengths[i] = 0.0, 0
        return finished


@dataclass(frozen=True)
class EpisodeSummary:
    """One finished episode of an `EnvPool` rollout."""

    env: int
    seed: int
    episode_return: float
    length: int
    summary: dict[str, Any]
    """The environment's ``info["summary"]`` at the end (final accuracy, seeds, FLOPs)."""


def collect_episodes(
    pool: VectorEnvPool,
    policy: ActorCritic,
    seeds: Sequence[int],
    steps: int,
    generator: torch.Generator | None = None,
    next_seed: Callable[[], int] | None = None,
    demonstrated: bool = False,
) -> tuple[RolloutBuffer, list[EpisodeSummary]]:
    """A rollout of whole episodes: every environment starts a fresh episode (``seeds``)
    and takes ``steps`` steps; episodes are fixed-length, so all end on the last step.

    With ``demonstrated`` the environments' demonstrator acts (``info["demonstration"]``,
    see `MorphogenesisEnv`) instead of the policy, and the buffer holds the policy's
    log-probabilities and values of those actions: the data to clone a policy from.

    An environment whose episode ends early (a run the governor had to stop) starts
    another at once, with seed ``next_seed()``, so every sequence is ``steps`` long; an
    episode still running at the end is bootstrapped from its value, never dropped.
    """
    device = next(policy.parameters()).device

    def tensor(array: Any) -> Tensor:
        return torch.as_tensor(np.asarray(array), dtype=torch.float32, device=device)

    def stack_masks(infos: list[dict[str, Any]]) -> ActionMasks | None:
        if not all("masks" in info for info in infos):
            return None
        arrays = {
            key: np.stack([info["masks"][key] for info in infos]) for key in infos[0]["masks"]
        }
        return ActionMasks.from_numpy(arrays, device)

    n = pool.num_envs
    obs_array, infos = pool.reset(seeds)
    if demonstrated and not all("demonstration" in info for info in infos):
        raise ValueError("demonstrated rollouts need environments with a demonstrator")
    obs, masks = tensor(obs_array), stack_masks(infos)
    current = list(seeds)
    state = policy.initial_state(n)
    initial_state = state
    starts = torch.ones(n, device=device)
    returns, lengths = np.zeros(n), np.zeros(n, dtype=np.int64)
    columns: dict[str, list[Tensor]] = {}
    step_masks: list[ActionMasks] = []
    finished: list[EpisodeSummary] = []
    for _ in range(steps):
        with torch.no_grad():
            out = policy.act(obs, state, masks, starts, generator=generator)
            if demonstrated:
                out = _demonstrated(policy, out, obs, state, masks, starts, infos)
        result = pool.step(out.action.cpu().numpy())
        ended = result.terminated | result.truncated
        row = {
            "obs": obs,
            "actions": out.action,
            "log_probs": out.log_prob,
            "values": out.value,
            "rewards": tensor(result.rewards),
            "starts": starts,
            "terminated": tensor(result.terminated),
            "truncated": tensor(result.truncated & ~result.terminated),
            "final_values": torch.zeros(n, device=device),  # episodes end by terminating
        }
        for name, value in row.items():
            columns.setdefault(name, []).append(value)
        if masks is not None:
            step_masks.append(masks)
        returns += result.rewards
        lengths += 1
        next_infos = list(result.infos)
        next_obs = result.obs.copy()
        done = np.flatnonzero(ended)
        for i in done:
            finished.append(
                EpisodeSummary(
                    int(i),
                    current[i],
                    float(returns[i]),
                    int(lengths[i]),
                    dict(result.infos[i].get("summary", {})),
                )
            )
            returns[i], lengths[i] = 0.0, 0
        if len(done) and next_seed is not None and _ < steps - 1:
            restart = [next_seed() for _ in done]
            fresh_obs, fresh_infos = pool.reset(restart, done.tolist())
            for k, i in enumerate(done):
                next_obs[i], next_infos[i], current[i] = fresh_obs[k], fresh_infos[k], restart[k]
        obs, state, masks = tensor(next_obs), out.state, stack_masks(next_infos)
        starts, infos = tensor(ended), next_infos
    stacked = {name: torch.stack(values) for name, values in columns.items()}
    with torch.no_grad():
        last_value = policy.value(obs, state, starts)
    buffer = RolloutBuffer(
        **stacked,
        masks=ActionMasks.stack(step_masks) if step_masks else None,
        initial_state=initial_state,
        last_value=last_value,
    )
    return buffer, finished


def _demonstrated(
    policy: ActorCritic,
    out: ActOutput,
    obs: Tensor,
    state: PolicyState,
    masks: ActionMasks | None,
    starts: Tensor,
    infos: Sequence[dict[str, Any]],
) -> ActOutput:
    """``out`` with the demonstrator's actions and the policy's log-probabilities of them
    (the recurrent state does not depend on the action, so ``out.state`` stands)."""
    actions = torch.as_tensor(
        np.stack([info["demonstration"] for info in infos]), device=obs.device
    )
    scored = policy.evaluate(
        obs[None],
        actions[None],
        masks.index(None) if masks is not None else None,
        state,
        starts[None],
    )
    return out._replace(action=actions, log_prob=scored.log_prob[0])
