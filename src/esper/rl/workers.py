"""EnvPool: N environments stepped in W worker processes, one torch thread each.

Each worker owns a contiguous block of the environments and serves their requests in
the order they arrive. Two ways to drive it: ``reset``/``step`` ask every worker at once
and wait for all (lockstep); ``send``/``receive`` (`AsyncEnvPool`) ask one environment
and hand back whichever answer is ready first, so a worker never waits for another and,
with two or more environments each, rarely for the learner either. ``workers=1`` keeps
every environment in this process, so a run gives the same results whatever the number
of workers (each environment's episode depends only on its own seed and actions).

Worker processes are spawned, not forked: a forked child would inherit torch's thread
pools mid-state. They die with the process that started them, however it ends (even
``kill -9``, which runs no clean-up of its own): each watches its parent and exits
when it is gone (`esper.lifetime.die_with_parent`), mid-step or not.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np
import torch

from esper.lifetime import die_with_parent

__all__ = [
    "AsyncEnvPool",
    "EnvFactory",
    "EnvPool",
    "EnvWorkerError",
    "PoolFactory",
    "StepResult",
    "VectorEnvPool",
    "apply_command",
    "apply_one",
    "reset_arguments",
    "reset_replies",
    "step_result",
]


EnvFactory = Callable[[], Any]
"""Builds one environment (a picklable callable, e.g. a ``functools.partial``)."""


class EnvWorkerError(RuntimeError):
    """An environment raised in a worker; the message carries its traceback's last line."""


@dataclass(frozen=True)
class StepResult:
    """One step of every environment: ``obs [N, D]``, ``rewards [N]``, end flags ``[N]``
    and each environment's ``info``."""

    obs: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    infos: list[dict[str, Any]]


class VectorEnvPool(Protocol):
    """N environments stepped together: `EnvPool` (processes on this machine) or
    `esper.rl.ray_envs.RayEnvPool` (actors on a Ray cluster). Built by a `PoolFactory`."""

    num_envs: int

    def reset(
        self, seeds: Sequence[int], which: Sequence[int] | None = None
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Start an episode in environments ``which`` (default: all), the k-th of them
        with ``seeds[k]``; their first observations ``[len(which), D]`` and infos."""
        ...

    def step(self, actions: np.ndarray) -> StepResult:
        """Step every environment with its row of ``actions``."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class AsyncEnvPool(VectorEnvPool, Protocol):
    """A pool whose environments can be asked one at a time, without waiting."""

    def send(self, env: int, command: str, argument: Any) -> None:
        """Ask environment ``env`` to ``reset`` (``argument``: the seed) or to ``step``
        (``argument``: its action)."""
        ...

    def receive(self) -> tuple[int, Any]:
        """Wait for the next answer to a `send`: ``(env, answer)``, the answer being
        ``(obs, info)`` for a reset and ``(obs, reward, terminated, truncated, info)``
        for a step. Answers of one environment come in the order it was asked."""
        ...


PoolFactory = Callable[[EnvFactory, int, int], VectorEnvPool]
"""(environment factory, environments, workers) -> a pool, e.g. `EnvPool` itself."""


def reset_arguments(
    blocks: list[list[int]], num_envs: int, seeds: Sequence[int], which: Sequence[int] | None
) -> tuple[list[int], dict[int, int], list[dict[int, int]]]:
    """What a pool's ``reset(seeds, which)`` asks of its workers: the environments chosen,
    the seed of each, and per worker {index in its block: seed}."""
    chosen = list(range(num_envs)) if which is None else [int(i) for i in which]
    if len(seeds) != len(chosen):
        raise ValueError(f"{len(chosen)} environments need {len(chosen)} seeds")
    seed_of = dict(zip(chosen, (int(s) for s in seeds), strict=True))
    arguments = [{i - b[0]: seed_of[i] for i in b if i in seed_of} for b in blocks]
    return chosen, seed_of, arguments


def reset_replies(blocks: list[list[int]], replies: list[Any]) -> dict[int, Any]:
    """The workers' answers to a reset, as {environment: (obs, info)}."""
    found: dict[int, Any] = {}
    for block, reply in zip(blocks, replies, strict=True):
        found.update({block[0] + k: result for k, result in reply.items()})
    return found


def step_result(flat: list[Any]) -> StepResult:
    """Every environment's ``(obs, reward, terminated, truncated, info)``, stacked."""
    return StepResult(
        obs=np.stack([r[0] for r in flat]),
        rewards=np.array([r[1] for r in flat], dtype=np.float64),
        terminated=np.array([r[2] for r in flat], dtype=bool),
        truncated=np.array([r[3] for r in flat], dtype=bool),
        infos=[r[4] for r in flat],
    )


class EnvPool:
    """``num_envs`` environments from ``factory``, in ``workers`` processes."""

    def __init__(self, factory: EnvFactory, num_envs: int, workers: int = 1) -> None:
        if num_envs < 1:
            raise ValueError(f"--envs must be at least 1, got {num_envs}")
        if not workers >= 1:
            raise ValueError(f"--workers must be at least 1, got {workers}")
        self.num_envs = num_envs
        self.workers = min(workers, num_envs)
        blocks = np.array_split(np.arange(num_envs), self.workers)
        self._blocks = [block.tolist() for block in blocks]
        self._local: list[Any] = []
        self._pipes: list[Connection] = []
        self._processes: list[Any] = []
        self._answers: deque[tuple[int, Any]] = deque()  # with workers=1: answered at once
        self._asked = [0] * self.workers  # per worker: sent and not yet received
        if self.workers == 1:
            self._local = [factory() for _ in range(num_envs)]
        else:
            context = multiprocessing.get_context("spawn")
            for block in self._blocks:
                parent, child = context.Pipe()
                process = context.Process(
                    target=_worker,
                    args=(child, factory, len(block), os.getpid()),
                    daemon=True,
                )
                process.start()
                child.close()
                self._pipes.append(parent)
                self._processes.append(process)
            for pipe in self._pipes:
                self._receive(pipe)  # "ready", or the error that stopped the worker

    def reset(
        self, seeds: Sequence[int], which: Sequence[int] | None = None
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Start an episode in environments ``which`` (default: all), the k-th of them
        with ``seeds[k]``; returns their first observations ``[len(which), D]`` and infos."""
        chosen, _, arguments = reset_arguments(self._blocks, self.num_envs, seeds, which)
        found = reset_replies(self._blocks, self._call("reset", arguments))
        return np.stack([found[i][0] for i in chosen]), [found[i][1] for i in chosen]

    def step(self, actions: np.ndarray) -> StepResult:
        """Step every environment with its row of ``actions``."""
        replies = self._call("step", [actions[b[0] : b[-1] + 1] for b in self._blocks])
        return step_result([r for reply in replies for r in reply])

    def send(self, env: int, command: str, argument: Any) -> None:
        """Ask environment ``env`` to ``reset`` (the seed) or ``step`` (its action),
        without waiting (`AsyncEnvPool`)."""
        if self.workers == 1:
            self._answers.append((env, apply_one(self._local[env], command, argument)))
            return
        worker = next(w for w, block in enumerate(self._blocks) if env in block)
        self._pipes[worker].send(("one", (env - self._blocks[worker][0], command, argument)))
        self._asked[worker] += 1

    def receive(self) -> tuple[int, Any]:
        """The first answer ready to a `send`: ``(env, answer)`` (`AsyncEnvPool`)."""
        if self.workers == 1:
            if not self._answers:
                raise RuntimeError("receive() without a request: send() first")
            return self._answers.popleft()
        asked = [pipe for pipe, n in zip(self._pipes, self._asked, strict=True) if n]
        if not asked:
            raise RuntimeError("receive() without a request: send() first")
        pipe = wait(asked)[0]
        worker = self._pipes.index(pipe)  # type: ignore[arg-type]
        self._asked[worker] -= 1
        k, answer = self._receive(self._pipes[worker])
        return self._blocks[worker][0] + k, answer

    def close(self) -> None:
        for pipe in self._pipes:
            with contextlib.suppress(BrokenPipeError, OSError):  # already gone
                pipe.send(("close", None))
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
        self._pipes, self._processes = [], []

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ internals

    def _call(self, command: str, arguments: list[Any]) -> list[Any]:
        if any(self._asked) or self._answers:
            raise RuntimeError(f"{command}() while answers to send() are still out")
        if self.workers == 1:
            return [apply_command(self._local, command, arguments[0])]
        for pipe, argument in zip(self._pipes, arguments, strict=True):
            pipe.send((command, argument))
        return [self._receive(pipe) for pipe in self._pipes]

    @staticmethod
    def _receive(pipe: Connection) -> Any:
        try:
            status, payload = pipe.recv()
        except EOFError:
            raise EnvWorkerError("an environment worker died") from None
        if status == "error":
            raise EnvWorkerError(payload)
        return payload


def apply_command(envs: list[Any], command: str, argument: Any) -> Any:
    """Run ``command`` on a worker's environments: ``reset`` takes {index: seed} and
    returns {index: (obs, info)}; ``step`` takes one action per environment and returns
    their ``(obs, reward, terminated, truncated, info)``."""
    if command == "reset":  # {index in the block: seed}
        return {k: apply_one(envs[k], command, seed) for k, seed in argument.items()}
    if command == "step":
        return [apply_one(e, command, a) for e, a in zip(envs, argument, strict=True)]
    raise ValueError(f"unknown command {command!r}")


def apply_one(env: Any, command: str, argument: Any) -> Any:
    """Run one environment's ``reset`` (argument: the seed) or ``step`` (its action)."""
    if command == "reset":
        return env.reset(seed=argument)
    if command == "step":
        return env.step(argument)
    raise ValueError(f"unknown command {command!r}")


def _worker(pipe: Connection, factory: EnvFactory, count: int, parent: int) -> None:
    # Ctrl-C is the parent's to handle: it stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)
    torch.set_num_threads(1)
    try:
        envs = [factory() for _ in range(count)]
        pipe.send(("ok", "ready"))
        while True:
            command, argument = pipe.recv()
            if command == "close":
                return
            if command == "one":  # (index in the block, command, argument)
                k, one, given = argument
                pipe.send(("ok", (k, apply_one(envs[k], one, given))))
                continue
            pipe.send(("ok", apply_command(envs, command, argument)))
    except (EOFError, KeyboardInterrupt):
        return
    except Exception as error:  # reported to the parent as one line, with where it was
        where = traceback.extract_tb(error.__traceback__)[-1]
        message = f"{type(error).__name__}: {error} ({where.filename}:{where.lineno})"
        with contextlib.suppress(BrokenPipeError, OSError):  # the parent is gone
            pipe.send(("error", message))
