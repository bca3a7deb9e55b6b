"""The one rollout collector: an `ActorCritic` steps any `VectorEnvPool`.

The pool is N environments stepped together: `esper.rl.workers.EnvPool` (processes on
this machine) or `esper.rl.ray_envs.RayEnvPool` (Ray actors). It calls each
environment's ``reset(seed=...)`` and ``step`` and never resets by itself, so any
Gymnasium environment fits: `MorphogenesisEnv`, CartPole, the toy environments of the
tests. Every episode starts with a seed of its own, taken from the ``seeds`` a
`RolloutCollector.collect` call is given, in the order the episodes start (within one
step, in environment order): the same seeds and the same random generator give the same
rollout, whatever the number of worker processes.

An environment whose episode ended starts its next episode just before its next step,
so every stored transition is a real decision. ``collect(restart=True)`` starts every
environment on a new episode at its first step (Esper: each update's episodes are fresh;
one that ends early, a run the governor stopped, is followed at once by another, except
after the rollout's last step); ``restart=False`` carries unfinished episodes and the
policy's recurrent state over to the next call (CartPole: episodes span rollouts).

Endings: a step that ends its episode by truncation (and not termination) is
bootstrapped from V(final observation), the observation that step returned, with the
recurrent state after the step (``final_values``); an episode still running when the
rollout stops is bootstrapped from ``last_value``; a terminal step from nothing.

Masks: an environment with conditional action masks puts the masks for its *next*
decision in ``info["masks"]``, a dict of boolean numpy arrays keyed op / slot / blueprint
/ blend with the shapes of `ActionMasks` minus the batch dimension, after ``reset()`` and
after every ``step()``; the collector stacks them over the environments. Environments
without ``info["masks"]`` are unmasked.

Demonstrations: with ``demonstrated=True`` the environments' demonstrator acts (the
action in ``info["demonstration"]``, see `MorphogenesisEnv`) instead of the policy, and
the buffer holds the policy's log-probabilities and values of those actions: the data to
clone a policy from (`esper.rl.ppo.clone_update`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from esper.rl.buffer import RolloutBuffer
from esper.rl.policy import ActionMasks, ActorCritic, ActOutput, PolicyState
from esper.rl.workers import StepResult, VectorEnvPool

__all__ = ["EpisodeRecord", "Rollout", "RolloutCollector"]


@dataclass(frozen=True)
class EpisodeRecord:
    """One finished episode."""

    env: int
    """Index of the environment in the pool."""
    seed: int
    """The seed the episode was reset with."""
    episode_return: float
    """Undiscounted sum of the episode's rewards."""
    length: int
    """Number of steps."""
    global_step: int
    """Steps taken by all environments of the collector when the episode ended."""
    truncated: bool
    """Ended by truncation (a time limit) rather than a terminal state."""
    final_info: dict[str, Any] = field(default_factory=dict)
    """The environment's ``info`` of the episode's last step."""

    @property
    def summary(self) -> dict[str, Any]:
        """``final_info["summary"]`` (`MorphogenesisEnv`: final accuracy, seeds, FLOPs),
        or empty."""
        return dict(self.final_info.get("summary", {}))


@dataclass(frozen=True)
class Rollout:
    """A collected rollout and the episodes that finished during it."""

    buffer: RolloutBuffer
    episodes: list[EpisodeRecord]


class RolloutCollector:
    """Steps ``pool`` with ``policy``, a rollout per `collect` call.

    Args:
        pool: the environments; none has an episode running yet.
        policy: the policy that acts (its parameters may change between rollouts).
        generator: random generator for sampling actions (None: torch's global one).
    """

    def __init__(
        self, pool: VectorEnvPool, policy: ActorCritic, generator: torch.Generator | None = None
    ) -> None:
        self.pool, self.policy, self.generator = pool, policy, generator
        self.num_envs = pool.num_envs
        self.device = next(policy.parameters()).device
        self.global_step = 0
        """Steps taken so far, by all environments together."""
        n = self.num_envs
        self.obs = np.zeros((n, 0), dtype=np.float32)
        """``[N, obs_dim]``: each environment's latest observation."""
        self.infos: list[dict[str, Any]] = [{} for _ in range(n)]
        """Each environment's latest ``info`` (its masks describe its next decision)."""
        self.state = policy.initial_state(n)
        """The policy's recurrent state after the latest step."""
        self.ended = np.ones(n, dtype=bool)
        """``[N]``: the environment's episode has ended (or none began): the next step
        starts another."""
        self._seeds = [0] * n
        self._returns, self._lengths = np.zeros(n), np.zeros(n, dtype=np.int64)

    def collect(
        self, steps: int, seeds: Iterator[int], *, restart: bool, demonstrated: bool = False
    ) -> Rollout:
        """``steps`` steps of every environment, and the episodes that finished in them.

        Args:
            steps: T, steps per environment.
            seeds: the seed of each episode that starts, in the order they start.
            restart: start every environment on a new episode first (else continue).
            demonstrated: the environments' demonstrators act (see the module docstring).
        """
        if steps < 1:
            raise ValueError(f"a rollout needs at least 1 step, got {steps}")
        if restart:
            self.ended[:] = True
            self.state = self.policy.initial_state(self.num_envs)
        initial_state = self.state
        columns: dict[str, list[Tensor]] = {}
        step_masks: list[ActionMasks] = []
        episodes: list[EpisodeRecord] = []
        for _ in range(steps):
            starts = self._start_episodes(seeds)
            obs, masks = self._tensor(self.obs), self.masks()
            out = self._act(obs, masks, starts, demonstrated)
            result = self.pool.step(out.action.cpu().numpy())
            self.global_step += self.num_envs
            row = self._row(obs, out, starts, result)
            for name, value in row.items():
                columns.setdefault(name, []).append(value)
            if masks is not None:
                step_masks.append(masks)
            episodes += self._finish_episodes(result)
            self.obs, self.infos, self.state = result.obs, result.infos, out.state
            self.ended = result.terminated | result.truncated
        with torch.no_grad():
            last_value = self.policy.value(
                self._tensor(self.obs), self.state, self._tensor(self.ended)
            )
        buffer = RolloutBuffer(
            **{name: torch.stack(values) for name, values in columns.items()},
            masks=ActionMasks.stack(step_masks) if step_masks else None,
            initial_state=initial_state,
            last_value=last_value,
        )
        return Rollout(buffer, episodes)

    def masks(self) -> ActionMasks | None:
        """The masks of every environment's next decision (leading ``[N]``), or None."""
        given = [i for i, info in enumerate(self.infos) if "masks" in info]
        if not given:
            return None
        if len(given) < self.num_envs:
            raise ValueError(f"only environments {given} of {self.num_envs} gave masks")
        keys = self.infos[0]["masks"]
        arrays = {key: np.stack([info["masks"][key] for info in self.infos]) for key in keys}
        return ActionMasks.from_numpy(arrays, self.device)

    def _tensor(self, array: Any) -> Tensor:
        # A copy: the collector's numpy arrays are later updated in place.
        return torch.tensor(np.asarray(array), dtype=torch.float32, device=self.device)

    def _start_episodes(self, seeds: Iterator[int]) -> Tensor:
        """Reset every environment whose episode ended, with the next seeds; the step's
        episode-start flags ``[N]``."""
        which = np.flatnonzero(self.ended)
        if len(which):
            chosen = list(itertools.islice(seeds, len(which)))
            if len(chosen) < len(which):
                raise ValueError(f"the seeds ran out: {len(which)} episodes start")
            obs, infos = self.pool.reset(chosen, which.tolist())
            if self.obs.shape[1:] != obs.shape[1:]:  # the first reset
                self.obs = np.zeros((self.num_envs, *obs.shape[1:]), dtype=obs.dtype)
            self.obs[which] = obs
            for k, i in enumerate(which):
                self.infos[i], self._seeds[i] = infos[k], chosen[k]
            self._returns[which], self._lengths[which] = 0.0, 0
        starts = self._tensor(self.ended)
        self.ended = np.zeros(self.num_envs, dtype=bool)
        return starts

    def _act(
        self, obs: Tensor, masks: ActionMasks | None, starts: Tensor, demonstrated: bool
    ) -> ActOutput:
        # No gradient: the update re-scores the rollout. Not around the pool's calls
        # either, whose environments may train (`MorphogenesisEnv`).
        with torch.no_grad():
            out = self.policy.act(obs, self.state, masks, starts, generator=self.generator)
            if demonstrated:
                out = _demonstrated(self.policy, out, obs, self.state, masks, starts, self.infos)
        return out

    def _row(
        self, obs: Tensor, out: ActOutput, starts: Tensor, result: StepResult
    ) -> dict[str, Tensor]:
        """One step's entries of the buffer, each ``[N, ...]``."""
        return {
            "obs": obs,
            "actions": out.action,
            "log_probs": out.log_prob,
            "values": out.value,
            "rewards": self._tensor(result.rewards),
            "starts": starts,
            "terminated": self._tensor(result.terminated),
            "truncated": self._tensor(result.truncated & ~result.terminated),
            "final_values": self._final_values(result, out.state),
        }

    def _final_values(self, result: StepResult, state: PolicyState) -> Tensor:
        """``[N]``: V(final observation) where the step truncated its episode, else 0;
        from the state after the step."""
        values = torch.zeros(self.num_envs, device=self.device)
        index = np.flatnonzero(result.truncated & ~result.terminated)
        if len(index):
            rows = torch.as_tensor(index, device=self.device)
            selected = tuple(s[:, rows] for s in state)
            with torch.no_grad():
                values[rows] = self.policy.value(self._tensor(result.obs[index]), selected)
        return values

    def _finish_episodes(self, result: StepResult) -> list[EpisodeRecord]:
        self._returns += result.rewards
        self._lengths += 1
        return [
            EpisodeRecord(
                env=int(i),
                seed=self._seeds[i],
                episode_return=float(self._returns[i]),
                length=int(self._lengths[i]),
                global_step=self.global_step,
                truncated=bool(result.truncated[i] and not result.terminated[i]),
                final_info=result.infos[i],
            )
            for i in np.flatnonzero(result.terminated | result.truncated)
        ]


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
    if not all("demonstration" in info for info in infos):
        raise ValueError("demonstrated rollouts need environments with a demonstrator")
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
