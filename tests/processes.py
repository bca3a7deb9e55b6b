"""A real ``esper`` process for the fault tests: `fork` runs ``main`` in a forked copy of
the test process (so it starts without importing torch again), after a patch that makes
it meet a fault at a chosen point (``kill -9`` of itself, a signal, a pause)."""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esper.cli import main


@dataclass
class Child:
    """A forked copy of the test process running ``esper``; its output goes to files."""

    pid: int
    out: Path

    def wait(self, timeout: float = 120.0) -> int:
        """Exit status, or minus the signal that killed it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.01)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        raise AssertionError(f"child {self.pid} did not finish in {timeout} s")

    @property
    def stdout(self) -> str:
        return (self.out / "stdout").read_text()

    @property
    def stderr(self) -> str:
        return (self.out / "stderr").read_text()


def fork(argv: list[str], out: Path, patch: Callable[[], None] = lambda: None) -> Child:
    """Run ``main(argv)`` in a forked process, after ``patch()`` (fault injection)."""
    out.mkdir(parents=True, exist_ok=True)
    stdout, stderr = (out / "stdout").open("w"), (out / "stderr").open("w")
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.dup2(stdout.fileno(), 1)
            os.dup2(stderr.fileno(), 2)
            sys.stdout, sys.stderr = stdout, stderr
            patch()
            code = main(argv)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    stdout.close()
    stderr.close()
    return Child(pid, out)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the child"
        time.sleep(0.01)


def kill_on_replace(target: str, nth: int = 1, *, after: bool = False) -> Callable[[], None]:
    """Patch: SIGKILL at the ``nth`` ``os.replace`` onto a file named ``target`` (before
    it, or right ``after`` it)."""

    def patch() -> None:
        real = os.replace
        seen = [0]

        def replace(src: Any, dst: Any, **kwargs: Any) -> None:
            hit = Path(dst).name == target
            if hit:
                seen[0] += 1
            if hit and seen[0] == nth and not after:
                kill_self()
            real(src, dst, **kwargs)
            if hit and seen[0] == nth and after:
                kill_self()

        setattr(os, "replace", replace)  # noqa: B010

    return patch


def running(pid: int) -> bool:
    """Whether process ``pid`` still runs: any of its threads is neither a zombie nor dead.

    A killed multithreaded process shows its main thread as a zombie while the other
    threads are still exiting, and its files (its run's lock among them) stay open until
    the last one has; and a zombie nobody reaps (a container's init may not) stays listed.
    """
    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return False
    for thread in threads:
        try:
            stat = (thread / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
            return True
    return False


class SleepingEnv:
    """An environment of ``factory`` that sleeps ``seconds`` before each step: a worker
    process busy for long (picklable, for `esper.rl.workers.EnvPool` workers)."""

    def __init__(self, factory: Callable[[], Any], seconds: float) -> None:
        self.env = factory()
        self.seconds = seconds

    def reset(self, **kwargs: Any) -> Any:
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> Any:
        time.sleep(self.seconds)
        return self.env.step(action)
