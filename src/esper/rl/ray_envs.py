"""RayEnvPool: N environments stepped by W Ray actors, the learner in the driver.

The same interface as `esper.rl.workers.EnvPool`, and the same results: each actor
(one CPU, one torch thread) owns a contiguous block of the environments and steps them
one after the other, all actors together (lockstep); the driver samples every action
from the policy, each environment's from its own generator (`RolloutCollector`). So a
policy trained on Ray equals one trained with local worker processes, which step each
environment as soon as its action is ready, step for step.

Why the driver acts: one environment step is a whole training epoch (a tenth of a second
on digits, tens of seconds on CIFAR-10), while the policy is a small LSTM that picks all
N actions in about a millisecond. What crosses the network per step is tiny either way:
an action of four integers goes out, and an observation of a few hundred floats with its
masks comes back. Acting in the driver keeps the sampling in one place (the reason Ray and
local runs agree, and the reason a replayed episode is the same episode), keeps the
whole trajectory in the driver as it is collected, and needs no weights to be sent
anywhere. Actors that held a copy of the policy would save one round trip per epoch,
about a millisecond against seconds of training.

Faults: an actor that dies (its process killed, its node lost) is restarted by Ray
(``max_restarts=-1``), or replaced if Ray gives it up. The driver knows each of the
actor's unfinished episodes by its seed and every action taken since its reset; it
replays them on the new actor (environments are deterministic given seed and actions),
checks that each replay ends on the observation seen the first time, and then repeats
the call that failed. Finished episodes already live in the driver, so none is lost,
and a rollout never holds a partial trajectory. Each actor tells its incarnation with
every answer, so a call that reaches a restarted actor (whose environments are new) does
nothing and triggers the same replay.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from esper.cluster import RayUnavailableError, import_ray
from esper.rl.workers import (
    EnvFactory,
    EnvWorkerError,
    StepResult,
    apply_command,
    reset_arguments,
    reset_replies,
    step_result,
)

__all__ = ["EnvActor", "RayEnvPool"]

log = logging.getLogger("esper")


class EnvActor:
    """What each Ray actor runs: ``count`` environments from ``factory``."""

    def __init__(self, factory: EnvFactory, count: int) -> None:
        torch.set_num_threads(1)
        self.envs = [factory() for _ in range(count)]
        self.incarnation = uuid.uuid4().hex
        """Differs after every restart: the driver's way to know the environments are new."""

    def ready(self) -> str:
        return self.incarnation

    def call(self, incarnation: str, command: str, argument: Any) -> tuple[str, Any]:
        """`apply_command` if this is the incarnation the driver knows; otherwise (the
        actor was restarted, its environments are new) nothing, with the new incarnation."""
        if incarnation != self.incarnation:
            return self.incarnation, None
        return self.incarnation, apply_command(self.envs, command, argument)

    def replay(
        self, episodes: dict[int, tuple[int, list[np.ndarray]]]
    ) -> tuple[str, dict[int, np.ndarray]]:
        """Rerun episodes ``{environment: (seed, actions so far)}``; the observation each
        ends on."""
        last = {}
        for k, (seed, actions) in episodes.items():
            obs, _ = self.envs[k].reset(seed=seed)
            for action in actions:
                obs, *_ = self.envs[k].step(action)
            last[k] = obs
        return self.incarnation, last


@dataclass
class _Episode:
    """What the driver knows of one environment's current episode."""

    seed: int
    obs: np.ndarray
    """The latest observation."""
    actions: list[np.ndarray] = field(default_factory=list)
    ended: bool = False


class RayEnvPool:
    """``num_envs`` environments from ``factory``, in ``workers`` Ray actors.

    Needs a Ray connection (`esper.cluster.connected`).

    Args:
        max_failures: times in a row an actor may die during one call before the
            rollout gives up (`EnvWorkerError`).
        warn: told of every restart, in one line.
    """

    def __init__(
        self,
        factory: EnvFactory,
        num_envs: int,
        workers: int = 1,
        max_failures: int = 3,
        warn: Callable[[str], None] = log.warning,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"--envs must be at least 1, got {num_envs}")
        if not workers >= 1:
            raise ValueError(f"--workers must be at least 1, got {workers}")
        self._ray = import_ray()
        if not self._ray.is_initialized():
            raise RayUnavailableError("RayEnvPool needs a Ray connection: esper.cluster.connected")
        self.num_envs = num_envs
        self.workers = min(workers, num_envs)
        self.max_failures = max_failures
        self.restarts = 0
        """Actors restarted (or replaced) so far."""
        self._warn = warn
        self._factory = factory
        blocks = np.array_split(np.arange(num_envs), self.workers)
        self._blocks = [block.tolist() for block in blocks]
        self._actor_class = self._ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=0)(
            EnvActor
        )
        self._actors = [self._actor_class.remote(factory, len(b)) for b in self._blocks]
        try:
            self._incarnations = [self._get(actor.ready.remote()) for actor in self._actors]
        except BaseException:
            self.close()
            raise
        self._episodes: list[_Episode | None] = [None] * num_envs

    def reset(
        self, seeds: Sequence[int], which: Sequence[int] | None = None
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Start an episode in environments ``which`` (default: all), the k-th of them
        with ``seeds[k]``; returns their first observations ``[len(which), D]`` and infos."""
        chosen, seed_of, arguments = reset_arguments(self._blocks, self.num_envs, seeds, which)
        found = reset_replies(self._blocks, self._call("reset", arguments, chosen))
        for i in chosen:
            self._episodes[i] = _Episode(seed_of[i], found[i][0])
        return np.stack([found[i][0] for i in chosen]), [found[i][1] for i in chosen]

    def step(self, actions: np.ndarray) -> StepResult:
        """Step every environment with its row of ``actions``."""
        arguments = [actions[b[0] : b[-1] + 1] for b in self._blocks]
        flat = [r for reply in self._call("step", arguments, ()) for r in reply]
        for i, (obs, _, terminated, truncated, _) in enumerate(flat):
            episode = self._episodes[i]
            if episode is not None:
                episode.actions.append(np.array(actions[i], copy=True))
                episode.obs, episode.ended = obs, bool(terminated or truncated)
        return step_result(flat)

    def close(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor, no_restart=True)
        self._actors = []

    def __enter__(self) -> RayEnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ calls and recovery

    def _call(self, command: str, arguments: list[Any], resetting: Collection[int]) -> list[Any]:
        """``command`` on every actor at once; an actor that died is recovered and asked
        again. ``resetting``: environments this call starts afresh (not replayed)."""
        refs = [
            actor.call.remote(incarnation, command, argument)
            for actor, incarnation, argument in zip(
                self._actors, self._incarnations, arguments, strict=True
            )
        ]
        return [
            self._answer(w, ref, command, arguments[w], set(resetting))
            for w, ref in enumerate(refs)
        ]

    def _answer(self, w: int, ref: Any, command: str, argument: Any, resetting: set[int]) -> Any:
        for attempt in range(self.max_failures + 1):
            try:
                if attempt:
                    self._recover(w, resetting)
                    ref = self._actors[w].call.remote(self._incarnations[w], command, argument)
                incarnation, payload = self._get(ref)
                if incarnation == self._incarnations[w]:
                    return payload
            except self._ray.exceptions.RayActorError:
                pass  # it died during the call (or the replay): Ray restarts it
        raise EnvWorkerError(
            f"environment actor {w} died {self.max_failures + 1} times in a row during one "
            f"{command}; see the Ray logs of its node"
        )

    def _recover(self, w: int, resetting: set[int]) -> None:
        """Bring actor ``w`` back (restarted by Ray, or a new one) to where the driver's
        record of its episodes says it was."""
        self._incarnations[w] = self._wait_alive(w)
        block = self._blocks[w]
        episodes = {}
        for k, i in enumerate(block):
            episode = self._episodes[i]
            if episode is not None and not episode.ended and i not in resetting:
                episodes[k] = (episode.seed, episode.actions)
        if episodes:
            incarnation, last = self._get(self._actors[w].replay.remote(episodes))
            if incarnation != self._incarnations[w]:
                raise self._ray.exceptions.RayActorError()  # restarted again meanwhile
            for k, obs in last.items():
                episode = self._episodes[block[k]]
                assert episode is not None
                if not np.array_equal(obs, episode.obs):
                    raise EnvWorkerError(
                        f"replaying the episode of seed {episode.seed} on a restarted actor "
                        "did not reproduce it: the environment is not deterministic"
                    )
        self.restarts += 1
        steps = sum(len(actions) for _, actions in episodes.values())
        self._warn(
            f"environment actor {w} died and was restarted; replayed its {len(episodes)} "
            f"unfinished episode(s) from their seeds ({steps} steps)"
        )

    def _wait_alive(self, w: int) -> str:
        """The incarnation of actor ``w`` once it answers again."""
        replaced = False
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                return str(self._get(self._actors[w].ready.remote()))
            except self._ray.exceptions.ActorUnavailableError:
                time.sleep(0.1)  # restarting
            except self._ray.exceptions.ActorDiedError as error:
                if error.actor_init_failed:
                    raise EnvWorkerError(_init_failure(error)) from None
                if replaced:
                    raise
                # Dead for good (killed without restart, restarts used up): replace it.
                self._ray.kill(self._actors[w], no_restart=True)
                self._actors[w] = self._actor_class.remote(self._factory, len(self._blocks[w]))
                replaced = True
        raise EnvWorkerError(f"environment actor {w} did not come back within 10 minutes")

    def _get(self, ref: Any) -> Any:
        """``ray.get``; an exception raised by an environment becomes one line."""
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as error:
            cause = error.cause
            raise EnvWorkerError(f"{type(cause).__name__}: {cause}") from None
        except self._ray.exceptions.ActorDiedError as error:
            if error.actor_init_failed:
                raise EnvWorkerError(_init_failure(error)) from None
            raise


def _init_failure(error: Exception) -> str:
    """The last line of an actor's failed constructor: its exception."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"an environment actor could not start: {lines[-1] if lines else error}"
