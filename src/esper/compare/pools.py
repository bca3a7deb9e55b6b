"""Where `compare` runs its tasks: `LocalPool` (processes on this machine) and `RayPool`
(tasks on a Ray cluster), side by side behind one `RunPool` protocol.

Both call `esper.compare.runs.run_task`, one CPU and one torch thread per run (or, on Ray,
a share of a GPU), so a run's numbers do not depend on where it ran; outcomes come back
as the runs finish.

Ray is an optional extra: this module imports it only through `esper.cluster.import_ray`
when a `RayPool` is made, so importing `esper.compare` never imports Ray.

``esper compare --ray``: `RayPool` runs every arm x seed as a Ray task. The driver's
``--out`` stays the cache, as for local runs, wherever the runs train:

* ``--out`` on a filesystem every node mounts at the same path (detected per task: the
  driver writes a token file there and the task looks for it): the task trains in place,
  checkpointing every epoch, so a task Ray retries, or a later compare, resumes the run
  from its last epoch.
* Otherwise the task trains in a scratch directory on its node and sends the run
  directory back when it ends (kilobytes: configuration, history, events, summary,
  checkpoints, plot); the driver writes it under ``--out``. An unfinished run the driver
  holds (from an interrupted compare, local or on Ray) goes out with its task and resumes
  there; a retry on the same node resumes from the scratch copy.

A finished run is never sent to Ray again: the driver finds it in ``--out`` first.

Failures: an error inside a run (missing data, a governor stop) comes back as a failed
outcome, as it does locally (the same run would fail the same way again); a task whose
worker process or node dies is retried by Ray up to ``max_retries`` times, and one that
keeps dying becomes a failed outcome too. Neither stops the other runs.

Data: each run loads its task's data on its node, from the same ``--data-dir`` path on
every node. The files are read from disk once per node and then come from the page
cache; an image-folder tree is decoded once (under a lock, see `esper.data.images`) into
a cache file next to the images, which every later run on that node (every run, on a
shared filesystem) reads instead of the images.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
import queue
import shutil
import signal
import socket
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import torch

from esper.cluster import RayUnavailableError, import_ray
from esper.compare.runs import RunOutcome, RunTask, cached_outcome, run_task
from esper.lifetime import die_with_parent
from esper.rundir import CHECKPOINT, LOCK

__all__ = [
    "TOKEN_FILE",
    "Files",
    "LocalPool",
    "RayPool",
    "RunPool",
    "read_run_files",
    "remote_run",
    "write_run_files",
]


class RunPool(Protocol):
    """Where `compare` runs its tasks: `LocalPool` (processes on this machine) or
    `RayPool` (tasks on a Ray cluster)."""

    def submit(self, task: RunTask) -> None:
        """Start ``task`` (or queue it); its outcome comes back from `next_done`."""

    def next_done(self) -> RunOutcome:
        """Block until a submitted task finishes; its outcome (failures included)."""

    def close(self) -> None:
        """Every task is done: release the workers."""

    def terminate(self) -> None:
        """Stop at once (Ctrl-C): unfinished runs keep their last checkpoint."""


# ---------------------------------------------------------------- local processes


class LocalPool:
    """Runs `RunTask`s in ``workers`` spawned processes, one torch thread each.

    ``workers=1`` runs every task in this process, one after another. Tasks can be
    submitted while others run; `next_done` blocks until one finishes. The workers die
    with the process that made the pool, even by ``kill -9`` (`esper.lifetime.die_with_parent`): a
    run they leave keeps its last checkpoint, and its lock is free for the rerun.
    """

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"--workers must be at least 1, got {workers}")
        self.workers = workers
        self._waiting: list[RunTask] = []
        self._done: queue.Queue[RunOutcome] = queue.Queue()
        self._running = 0
        self._pool: Any = None
        if workers > 1:
            # spawn, not fork: a forked child inherits torch's thread pools mid-state.
            context = multiprocessing.get_context("spawn")
            self._pool = context.Pool(workers, initializer=_worker_init, initargs=(os.getpid(),))

    def submit(self, task: RunTask) -> None:
        self._running += 1
        if self._pool is None:
            self._waiting.append(task)
        else:
            self._pool.apply_async(run_task, (task,), callback=self._done.put)

    def next_done(self) -> RunOutcome:
        if self._running == 0:
            raise RuntimeError("no task is running")
        self._running -= 1
        if self._pool is None:
            return run_task(self._waiting.pop(0))
        return self._done.get()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()

    def terminate(self) -> None:
        """Stop at once (Ctrl-C): every run keeps its last checkpoint and resumes later."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()


def _worker_init(parent: int) -> None:
    # Ctrl-C is the parent's to handle: it terminates the workers, whose runs then
    # resume from their last checkpoint on the next compare.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    die_with_parent(parent)


# ---------------------------------------------------------------- Ray

TOKEN_FILE = ".esper-ray-token"
"""In ``--out``: identifies this compare's directory, so a task can tell whether the
node it runs on sees the same directory (a shared filesystem)."""

Files = dict[str, bytes]
"""A run directory's files (it has no subdirectories), by name."""


def remote_run(
    task: RunTask, token: str, marker: str, files: Files, shared: bool | None
) -> tuple[RunOutcome, Files | None]:
    """Run ``task`` on a Ray worker (see the module docstring).

    Args:
        token: the contents of ``--out``'s token file, read by the driver.
        marker: the token file's path on the driver.
        files: the driver's unfinished copy of the run, if it has one ({} otherwise).
        shared: whether ``--out`` is mounted here (None: look for the token file).

    Returns:
        The outcome (its ``run_dir`` the driver's path), and the run directory's files to
        write under ``--out``, or None if the run was written there in place.
    """
    if shared is None:
        shared = _holds(Path(marker), token)
    if shared:
        return _on_node(run_task(task)), None
    where = Path(task.run_dir)
    scratch = Path(tempfile.gettempdir()) / "esper-ray" / token / where.parent.name / where.name
    _restore(scratch, files)
    outcome = run_task(replace(task, run_dir=str(scratch)))
    back = read_run_files(scratch) if scratch.is_dir() else {}
    if outcome.summary is not None:
        shutil.rmtree(scratch, ignore_errors=True)
        for parent in (scratch.parent, scratch.parent.parent):
            with contextlib.suppress(OSError):  # still holds other runs
                parent.rmdir()
    return _on_node(replace(outcome, run_dir=task.run_dir)), back


def _on_node(outcome: RunOutcome) -> RunOutcome:
    """A failure names the node it happened on (data missing on one node, say)."""
    if outcome.error is None:
        return outcome
    return replace(outcome, error=f"{outcome.error} (on {socket.gethostname()})")


def _holds(marker: Path, token: str) -> bool:
    try:
        return marker.read_text().strip() == token
    except OSError:
        return False


def read_run_files(run_dir: Path) -> Files:
    """A run directory's files, without its lock and temporary files."""
    return {
        path.name: path.read_bytes()
        for path in sorted(run_dir.iterdir())
        if path.is_file() and path.name != LOCK and not path.name.endswith(".tmp")
    }


def _history_length(files: Files) -> int:
    return files.get("history.jsonl", b"").count(b"\n")


def _restore(scratch: Path, files: Files) -> None:
    """Put the driver's unfinished copy of the run in ``scratch``, unless the copy already
    there (an earlier attempt on this node) has come at least as far."""
    if not files:
        return
    here = read_run_files(scratch) if (scratch / CHECKPOINT).is_file() else {}
    if here and _history_length(here) >= _history_length(files):
        return
    shutil.rmtree(scratch, ignore_errors=True)
    write_run_files(scratch, files)


def write_run_files(run_dir: Path, files: Files) -> None:
    """Replace ``run_dir`` by a directory holding ``files`` (written beside it first, so
    an interruption leaves the old directory or the new one)."""
    for name in files:
        if Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"not a file name of a run directory: {name!r}")
    incoming = run_dir.with_name(f".{run_dir.name}.incoming")
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.mkdir(parents=True)
    for name, data in files.items():
        (incoming / name).write_bytes(data)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    incoming.rename(run_dir)


class RayPool:
    """Runs `RunTask`s as Ray tasks; the same interface as `LocalPool`.

    Needs a Ray connection (`esper.cluster.connected`).

    Args:
        out: the compare's ``--out`` (the cache; see the module docstring).
        gpus_per_run: GPUs each run asks Ray for (a fraction shares a GPU); 0: CPU only.
        max_retries: times Ray reruns a task whose worker or node died.
        shared: whether every node sees ``out`` at the same path; None: each task checks.
    """

    def __init__(
        self,
        out: Path,
        gpus_per_run: float = 0.0,
        max_retries: int = 3,
        shared: bool | None = None,
    ) -> None:
        if not gpus_per_run >= 0:
            raise ValueError(f"--gpus-per-run must be at least 0, got {gpus_per_run}")
        if max_retries < 0:
            raise ValueError(f"--max-retries must be at least 0, got {max_retries}")
        self._ray = import_ray()
        if not self._ray.is_initialized():
            raise RayUnavailableError("RayPool needs a Ray connection: esper.cluster.connected")
        gpus = float(self._ray.cluster_resources().get("GPU", 0))
        if gpus_per_run > gpus:
            raise RayUnavailableError(
                f"--gpus-per-run {gpus_per_run:g} asks for more GPUs than the Ray cluster has "
                f"({gpus:g}); leave it out to train on CPUs"
            )
        self.max_retries = max_retries
        self._shared = shared
        out.mkdir(parents=True, exist_ok=True)
        self._marker = out.resolve() / TOKEN_FILE
        if not self._marker.is_file():
            self._marker.write_text(uuid.uuid4().hex + "\n")
        self._token = self._marker.read_text().strip()
        self._run = self._ray.remote(remote_run).options(
            num_cpus=1, num_gpus=gpus_per_run, max_retries=max_retries
        )
        self._pending: dict[Any, RunTask] = {}
        self._ready: collections.deque[RunOutcome] = collections.deque()

    def submit(self, task: RunTask) -> None:
        cached = cached_outcome(task)
        if cached is not None:
            self._ready.append(cached)
            return
        run_dir = Path(task.run_dir)
        files = read_run_files(run_dir) if (run_dir / CHECKPOINT).is_file() else {}
        ref = self._run.remote(task, self._token, str(self._marker), files, self._shared)
        self._pending[ref] = task

    def next_done(self) -> RunOutcome:
        if self._ready:
            return self._ready.popleft()
        if not self._pending:
            raise RuntimeError("no task is running")
        (ref,), _ = self._ray.wait(list(self._pending), num_returns=1)
        task = self._pending.pop(ref)
        try:
            outcome, files = self._ray.get(ref)
        except self._ray.exceptions.RayError as error:
            return RunOutcome(task.arm, task.seed, task.run_dir, None, error=self._why(error))
        if files:
            write_run_files(Path(task.run_dir), files)
        return outcome  # type: ignore[no-any-return]

    def _why(self, error: Exception) -> str:
        cause = getattr(error, "cause", None)
        if isinstance(cause, BaseException):  # an exception raised in the task itself
            return f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        return f"the Ray task failed {self.max_retries + 1} time(s): {first}"

    def close(self) -> None:
        self._pending.clear()

    def terminate(self) -> None:
        """Cancel every unfinished task: a run in place keeps its last checkpoint and
        resumes on the next compare; a run in a node's scratch directory resumes there
        when its task lands on the same node, else starts again."""
        for ref in self._pending:
            with contextlib.suppress(Exception):  # already finished or gone
                self._ray.cancel(ref, force=True)
        self._pending.clear()
