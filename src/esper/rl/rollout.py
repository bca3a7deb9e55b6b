"""The one rollout collector: an `ActorCritic` steps any `VectorEnvPool`.

The pool is N environments: `esper.rl.workers.EnvPool` (processes on this machine),
which steps each environment as soon as its action is chosen, or
`esper.rl.ray_envs.RayEnvPool` (Ray actors), which steps them all together. It calls
each environment's ``reset(seed=...)`` and ``step`` and never resets by itself, so any
Gymnasium environment fits: `MorphogenesisEnv`, CartPole, the toy environments of the
tests.

Determinism: the policy acts for one environment at a time, sampling with that
environment's own generator (drawn from the collector's at each rollout). Every episode
starts with a seed of its own, taken from the ``seeds`` a `RolloutCollector.collect`
call is given in the order the episodes would start if every environment stepped
together (by step, then in environment order). So the same seeds and the same random
generator give the same rollout, whatever the number of worker processes, the order
their answers come in, or the pool.

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

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from esper.rl.buffer import RolloutBuffer
from esper.rl.policy import ActionMasks, ActorCritic, ActOutput, PolicyState
from esper.rl.workers import AsyncEnvPool, VectorEnvPool

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

    Each environment acts on its own: the policy chooses its action (a batch of one) as
    soon as its observation is back, sampling with a random generator of its own that
    is drawn from ``generator`` when the rollout starts. With an `AsyncEnvPool` (such as
    `EnvPool`) no environment waits for another; other pools (`RayEnvPool`) are stepped
    all together. Either way an environment's trajectory depends only on its seeds and
    its generator, so a rollout is the same whatever the number of worker processes, the
    order their answers arrive in, and the pool.

    Args:
        pool: the environments; none has an episode running yet.
        policy: the policy that acts (its parameters may change between rollouts).
        generator: random generator the environments' generators are drawn from (None:
            torch's global one).
    """

    def __init__(
        self, pool: VectorEnvPool, policy: ActorCritic, generator: torch.Generator | None = None
    ) -> None:
        self.pool, self.policy, self.generator = pool, policy, generator
        self.num_envs = pool.num_envs
        self.device = next(policy.parameters()).device
        self.global_step = 0
        """Steps taken so far, by all environments together."""
        self._stepper = pool if isinstance(pool, AsyncEnvPool) else _Lockstep(pool)
        self._envs = [_Env(policy.initial_state(1)) for _ in range(self.num_envs)]

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
            for env in self._envs:
                env.ended, env.state = True, self.policy.initial_state(1)
        generators = self._generators()
        tracks = [_Track(env, env.state, g) for env, g in zip(self._envs, generators, strict=True)]
        episodes: list[EpisodeRecord] = []
        waiting = [i for i, track in enumerate(tracks) if track.env.ended]
        for i in sorted(set(range(self.num_envs)) - set(waiting)):
            self._act(i, tracks[i], demonstrated)
        running = self.num_envs
        while running:
            waiting = self._start_episodes(tracks, waiting, seeds)
            i, reply = self._stepper.receive()
            track = tracks[i]
            if track.resetting:
                track.started(*reply)
                self._act(i, track, demonstrated)
                continue
            if self._stepped(track, reply):
                episodes.append(self._episode(i, track))
            if track.done == steps:
                running -= 1
            elif track.env.ended:
                waiting.append(i)
            else:
                self._act(i, track, demonstrated)
        self.global_step += self.num_envs * steps
        episodes.sort(key=lambda e: (e.global_step, e.env))
        return Rollout(RolloutBuffer.concat([self._buffer(t) for t in tracks]), episodes)

    def masks(self) -> ActionMasks | None:
        """The masks of every environment's next decision (leading ``[N]``), or None."""
        infos = [env.info for env in self._envs]
        given = [i for i, info in enumerate(infos) if "masks" in info]
        if not given:
            return None
        if len(given) < self.num_envs:
            raise ValueError(f"only environments {given} of {self.num_envs} gave masks")
        keys = infos[0]["masks"]
        arrays = {key: np.stack([info["masks"][key] for info in infos]) for key in keys}
        return ActionMasks.from_numpy(arrays, self.device)

    def _generators(self) -> list[torch.Generator]:
        """This rollout's generator of each environment, drawn from ``generator``."""
        draws = torch.randint(0, 2**62, (self.num_envs,), generator=self.generator)
        return [torch.Generator(self.device).manual_seed(int(d)) for d in draws]

    def _tensor(self, array: Any) -> Tensor:
        # A copy: what the environment returned may be updated in place later.
        return torch.tensor(np.asarray(array), dtype=torch.float32, device=self.device)

    def _start_episodes(
        self, tracks: list[_Track], waiting: list[int], seeds: Iterator[int]
    ) -> list[int]:
        """Reset the environments in ``waiting`` whose seed is known, the next seeds in the
        order of (step, environment), as if all stepped together; returns the rest.

        Environment i's episode starting at its step t takes its seed once no episode
        before it in that order can still start: every environment before i has done t
        steps, every one after it t - 1."""
        waiting = sorted(waiting, key=lambda i: (tracks[i].done, i))
        while waiting:
            i, t = waiting[0], tracks[waiting[0]].done
            if any(o.done < (t if j < i else t - 1) for j, o in enumerate(tracks) if j != i):
                break
            seed = next(seeds, None)
            if seed is None:
                self._abandon(tracks)
                raise ValueError(f"the seeds ran out: environment {i} starts an episode")
            tracks[i].env.seed, tracks[i].resetting = int(seed), True
            self._stepper.send(i, "reset", int(seed))
            waiting.pop(0)
        return waiting

    def _abandon(self, tracks: list[_Track]) -> None:
        """Give up the rollout: take the answers still out, so that the pool serves the
        next one, and start every environment afresh then."""
        if isinstance(self._stepper, _Lockstep):
            self._stepper = _Lockstep(self.pool)  # nothing was sent that is not answered
        else:
            for _ in range(sum(t.resetting or t.acted is not None for t in tracks)):
                self._stepper.receive()
        for env in self._envs:
            env.ended = True

    def _act(self, i: int, track: _Track, demonstrated: bool) -> None:
        """Choose environment i's action and send it."""
        env = track.env
        obs, starts = self._tensor(env.obs[None]), self._tensor([float(track.start)])
        masks = None
        if "masks" in env.info:
            masks = ActionMasks.from_numpy({k: v[None] for k, v in env.info["masks"].items()})
            masks = masks.to(self.device)
        # No gradient: the update re-scores the rollout.
        with torch.no_grad():
            out = self.policy.act(obs, env.state, masks, starts, generator=track.generator)
            if demonstrated:
                out = _demonstrated(self.policy, out, obs, env.state, masks, starts, [env.info])
        track.acted = _Acted(obs, out, starts, masks)
        self._stepper.send(i, "step", out.action[0].cpu().numpy())

    def _stepped(self, track: _Track, reply: Any) -> bool:
        """Record a step's answer ``(obs, reward, terminated, truncated, info)``; True when
        it ended the episode."""
        obs, reward, terminated, truncated, info = reply
        acted, env = track.acted, track.env
        assert acted is not None
        cut = bool(truncated and not terminated)
        # A truncated episode is bootstrapped from its final observation, with the state
        # after the step.
        final_value = torch.zeros(1, device=self.device)
        if cut:
            with torch.no_grad():
                final_value = self.policy.value(self._tensor(obs[None]), acted.out.state)
        track.rows.append(
            {
                "obs": acted.obs,
                "actions": acted.out.action,
                "log_probs": acted.out.log_prob,
                "values": acted.out.value,
                "rewards": self._tensor([reward]),
                "starts": acted.starts,
                "terminated": self._tensor([float(terminated)]),
                "truncated": self._tensor([float(cut)]),
                "final_values": final_value,
            }
        )
        track.masks.append(acted.masks)
        track.done, track.start, track.acted = track.done + 1, False, None
        env.obs, env.info, env.state = obs, info, acted.out.state
        env.episode_return += float(reward)
        env.length += 1
        env.ended = bool(terminated or truncated)
        env.cut = cut
        return env.ended

    def _episode(self, i: int, track: _Track) -> EpisodeRecord:
        env = track.env
        return EpisodeRecord(
            env=i,
            seed=env.seed,
            episode_return=env.episode_return,
            length=env.length,
            global_step=self.global_step + self.num_envs * track.done,
            truncated=env.cut,
            final_info=env.info,
        )

    def _buffer(self, track: _Track) -> RolloutBuffer:
        """One environment's rollout, ``[T, 1]``."""
        columns = {name: torch.stack([row[name] for row in track.rows]) for name in track.rows[0]}
        given = [m for m in track.masks if m is not None]
        if given and len(given) < len(track.masks):
            raise ValueError("an environment gave info['masks'] for some steps and not others")
        masks = ActionMasks.stack(given) if given else None
        env = track.env
        with torch.no_grad():
            last_value = self.policy.value(
                self._tensor(env.obs[None]), env.state, self._tensor([float(env.ended)])
            )
        return RolloutBuffer(
            **columns, masks=masks, initial_state=track.initial_state, last_value=last_value
        )


@dataclass
class _Env:
    """One environment as the collector left it: what carries over between rollouts."""

    state: PolicyState
    """The policy's recurrent state after the environment's latest step, ``[layers, 1, H]``."""
    obs: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    info: dict[str, Any] = field(default_factory=dict)
    """The latest ``info`` (its masks describe the next decision)."""
    ended: bool = True
    """The episode has ended (or none began): the next step starts another."""
    cut: bool = False
    """The latest step truncated the episode (and did not terminate it)."""
    seed: int = 0
    episode_return: float = 0.0
    length: int = 0


class _Acted(NamedTuple):
    """An action sent and not yet answered, and what it was chosen on."""

    obs: Tensor
    out: ActOutput
    starts: Tensor
    masks: ActionMasks | None


@dataclass
class _Track:
    """One environment's part of a rollout in progress."""

    env: _Env
    initial_state: PolicyState
    generator: torch.Generator
    done: int = 0
    """Steps of this rollout done."""
    start: bool = False
    """The next step is the episode's first."""
    resetting: bool = False
    """A reset has been sent and not yet answered."""
    acted: _Acted | None = None
    rows: list[dict[str, Tensor]] = field(default_factory=list)
    masks: list[ActionMasks | None] = field(default_factory=list)

    def started(self, obs: np.ndarray, info: dict[str, Any]) -> None:
        """A reset's answer: the new episode's first observation and info."""
        env = self.env
        env.obs, env.info, env.episode_return, env.length = obs, info, 0.0, 0
        self.start, self.resetting = True, False


class _Lockstep:
    """`AsyncEnvPool`'s calls on a pool that steps all its environments together: the
    requests wait until every environment has one (or only resets are asked for)."""

    def __init__(self, pool: VectorEnvPool) -> None:
        self.pool = pool
        self._resets: dict[int, int] = {}
        self._steps: dict[int, np.ndarray] = {}
        self._answers: deque[tuple[int, Any]] = deque()

    def send(self, env: int, command: str, argument: Any) -> None:
        (self._resets if command == "reset" else self._steps)[env] = argument

    def receive(self) -> tuple[int, Any]:
        if not self._answers:
            self._flush()
        return self._answers.popleft()

    def _flush(self) -> None:
        if self._resets:
            which = sorted(self._resets)
            obs, infos = self.pool.reset([self._resets[i] for i in which], which)
            self._answers.extend((i, (obs[k], infos[k])) for k, i in enumerate(which))
            self._resets = {}
            return
        n = self.pool.num_envs
        if len(self._steps) < n:
            raise RuntimeError(f"a lockstep pool steps all {n} environments at once")
        result = self.pool.step(np.stack([self._steps[i] for i in range(n)]))
        self._steps = {}
        self._answers.extend(
            (i, (result.obs[i], result.rewards[i], result.terminated[i], result.truncated[i],
                 result.infos[i]))
            for i in range(n)
        )  # fmt: skip


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
