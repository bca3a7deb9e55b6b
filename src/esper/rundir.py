"""A run directory on disk: its marker, its lock, checkpoint generations, atomic rewrites.

`esper.run` decides what goes into a run; this module makes sure it lands safely::

    .esper-run          marker: "this directory is Esper's" (JSON: run id, created, kind:
                        a run, a PPO training or a compare; one never writes into another)
    .esper.lock         exclusive advisory lock (flock) held for the life of a run; holds
                        the holder's pid, host and command, for the error a second run gets
    checkpoint.pt       the latest checkpoint generation
    checkpoint.prev.pt  the generation before it (the fallback when the latest is damaged)

Every rewrite goes to a temporary file in the same directory, is flushed to disk, and
then replaces the old file with ``os.replace``: a crash leaves the old file or the new
one, never half of one. Orphaned temporary files are removed when the lock is taken.

A checkpoint is one ``torch.save`` file of tensors and plain data, read back with
``torch.load(weights_only=True)`` (loading never runs code). It carries a SHA-256 of its
own contents, the run's `Identity` (run id, command, task, configuration hash) and the
SHA-256 of the ``history.jsonl`` lines it was written after, so a damaged, foreign or
out-of-step checkpoint is refused, and the previous generation is used instead.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import shlex
import socket
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

__all__ = [
    "CHECKPOINT",
    "KINDS",
    "LOCK",
    "MARKER",
    "PREVIOUS_CHECKPOINT",
    "Checkpoint",
    "CheckpointError",
    "Identity",
    "RunDirectory",
    "RunError",
    "RunFailedError",
    "atomic_write",
    "config_digest",
    "is_run_directory",
    "lock_holder",
    "read_checkpoint",
    "read_lines",
    "save_atomic",
    "tree_digest",
]

MARKER = ".esper-run"
LOCK = ".esper.lock"
CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
_FORMAT = "esper-checkpoint"
_VERSION = 2
_TMP_PREFIXES = (".esper-", ".checkpoint-")  # the second: temporary files of older versions
_TMP_SUFFIX = ".tmp"


class RunError(RuntimeError):
    """A run that cannot start or continue; the message says what to do (exit status 2)."""

    exit_code = 2


class RunFailedError(RunError):
    """A run that started but had to stop (disk full, persistent fault): exit status 1."""

    exit_code = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message says why."""


# ---------------------------------------------------------------- atomic files


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not every filesystem lets a directory be opened.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_temporary(directory: Path, data: bytes, stem: str) -> Path:
    """Write ``data`` to a new temporary file in ``directory``, flushed to disk."""
    tmp = directory / f"{_TMP_PREFIXES[0]}{stem}-{uuid.uuid4().hex[:12]}{_TMP_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step: readers see the old or the new file."""
    tmp = _write_temporary(path.parent, data, path.name)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def save_atomic(path: Path, payload: Any) -> None:
    """``torch.save`` ``payload`` (tensors and plain data) to ``path`` in one step."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write(path, buffer.getvalue())


def read_lines(path: Path) -> list[bytes]:
    """The complete lines of ``path`` (each ending in a newline); a last line cut short
    by a crash or a full disk is left out. A missing file has no lines."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = data.splitlines(keepends=True)
    if lines and not lines[-1].endswith(b"\n"):
        lines.pop()
    return lines


# ---------------------------------------------------------------- identity and digests


@dataclass(frozen=True)
class Identity:
    """Which run a checkpoint belongs to."""

    run_id: str
    """Random id written into the run directory's marker when the run was created."""
    command: str
    """``heuristic``, ``baseline`` or ``ppo train``."""
    task: str
    config_sha256: str
    """`config_digest` of the resolved configuration (``config.json``)."""

    def mismatch(self, other: Identity) -> str | None:
        """Why a checkpoint of ``other`` cannot continue this run, or None."""
        if other.run_id != self.run_id:
            return f"it belongs to another run (run id {other.run_id}, this run is {self.run_id})"
        if other.command != self.command:
            return f"it was written by 'esper {other.command}', this run is 'esper {self.command}'"
        if other.task != self.task:
            return f"it is for task {other.task}, this run is for {self.task}"
        if other.config_sha256 != self.config_sha256:
            return "it was written with a different configuration than config.json"
        return None


def config_digest(config: Mapping[str, Any]) -> str:
    """SHA-256 of a configuration's plain data, independent of key order and spacing."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tree_digest(tree: Any) -> str:
    """SHA-256 of a tree of tensors and plain data, as ``torch.load`` gives it back.

    Covers every tensor's dtype, shape and bytes and every key and value, in order, so a
    flipped bit anywhere in the data changes it.
    """
    digest = hashlib.sha256()
    _feed(digest, tree)
    return digest.hexdigest()


def _feed(digest: Any, node: Any) -> None:
    if isinstance(node, torch.Tensor):
        tensor = node.detach().to("cpu").contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(node, Mapping):
        digest.update(f"D{len(node)}".encode())
        for key, value in node.items():
            _feed(digest, key)
            _feed(digest, value)
    elif isinstance(node, list | tuple):
        digest.update(f"L{len(node)}".encode())
        for value in node:
            _feed(digest, value)
    elif node is None or isinstance(node, bool | int | float | str | bytes):
        digest.update(f"{type(node).__name__}:{node!r};".encode())
    else:
        raise TypeError(f"a checkpoint holds tensors and plain data only, not {type(node)}")


# ---------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint: whose it is, after which epoch, and the state to load."""

    identity: Identity
    epoch: int
    history_sha256: str
    """SHA-256 of the first ``epoch`` lines of the run's record when it was written
    (``history.jsonl``; ``updates.jsonl`` of a PPO training, ``epoch`` counting updates)."""
    state: dict[str, Any]

    def to_file(self) -> bytes:
        body = {
            "format": _FORMAT,
            "version": _VERSION,
            "identity": asdict(self.identity),
            "epoch": self.epoch,
            "history_sha256": self.history_sha256,
            "state": self.state,
        }
        buffer = io.BytesIO()
        torch.save({**body, "sha256": tree_digest(body)}, buffer)
        return buffer.getvalue()


def read_checkpoint(path: Path) -> Checkpoint:
    """Load and verify one checkpoint file; `CheckpointError` says what is wrong with it.

    Only tensors and plain data are unpickled (``weights_only=True``), on the CPU.
    """
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError("missing") from None
    except Exception as error:  # truncated, garbage, or a pickle that wants to run code
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        detail = f" ({first[:160]})" if first else ""
        raise CheckpointError(
            f"unreadable: not a checkpoint, truncated, or holding more than tensors and "
            f"plain data{detail}"
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != _FORMAT:
        raise CheckpointError("not an Esper checkpoint (written by another program or version)")
    if raw.get("version") != _VERSION:
        raise CheckpointError(f"checkpoint format {raw.get('version')}, expected {_VERSION}")
    claimed = raw.pop("sha256", None)
    try:
        actual = tree_digest(raw)
    except TypeError as error:
        raise CheckpointError(str(error)) from None
    if claimed != actual:
        raise CheckpointError("checksum mismatch: the file was modified or damaged")
    if not isinstance(raw.get("state"), dict):
        raise CheckpointError("incomplete checkpoint (no state)")
    try:
        return Checkpoint(
            identity=Identity(**raw["identity"]),
            epoch=int(raw["epoch"]),
            history_sha256=str(raw["history_sha256"]),
            state=raw["state"],
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"incomplete checkpoint ({error})") from None


# ---------------------------------------------------------------- the directory


def is_run_directory(path: Path) -> bool:
    """``path`` carries the marker of an Esper run directory."""
    return (path / MARKER).is_file()


def _in_use(path: Path) -> str | None:
    """Who holds the lock of the run directory ``path``, or None if nobody does."""
    try:
        fd = os.open(path / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _describe_holder(path / LOCK)
    finally:
        os.close(fd)  # also drops the probe's own shared lock
    return None


def lock_holder(path: Path) -> str | None:
    """Who holds the lock of the Esper directory ``path`` (pid, host, command), or None
    if nobody does; a probe that takes no lock and writes nothing."""
    return _in_use(path)


def _busy(path: Path, holder: str) -> RunError:
    return RunError(
        f"{path} is in use by another Esper run ({holder}); "
        "wait for it to finish or pick another --out"
    )


def _describe_holder(lock_path: Path) -> str:
    try:
        holder = json.loads(lock_path.read_text(encoding="utf-8"))
        return (
            f"pid {holder['pid']} on {holder['host']}, running '{holder['command']}' "
            f"since {holder['since']}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not recorded itself yet)"


KINDS: Mapping[str, str] = {
    "run": "a run ('esper heuristic', 'baseline' or 'ppo run')",
    "ppo-train": "an 'esper ppo train' directory",
    "compare": "an 'esper compare' or 'ppo eval' directory",
}
"""What an Esper directory can be, as its marker says; one kind never writes into another's."""


@dataclass(frozen=True)
class _Marker:
    run_id: str
    created: str
    kind: str = "run"
    """One of `KINDS` (markers written before kinds existed are runs')."""


class RunDirectory:
    """An Esper run directory, held under an exclusive lock until `close`.

    Use `create` for a new run and `open` to continue one; both are context managers.
    The lock is an advisory ``flock``: the kernel drops it when its process dies, so a
    run killed with ``kill -9`` leaves no lock behind that blocks the next one.
    """

    def __init__(self, path: Path, marker: _Marker, lock_fd: int) -> None:
        self.path = path
        self.run_id = marker.run_id
        self.saved_epoch = 0
        """Epoch of the newest checkpoint on disk that this run loaded or wrote."""
        self._lock_fd: int | None = lock_fd

    # ------------------------------------------------------------ opening

    @classmethod
    def check_new(cls, path: Path, kind: str = "run") -> None:
        """Raise `RunError` unless a new directory of ``kind`` may be created at ``path``:
        it does not exist, is empty, or is an Esper directory of that kind that never got
        a configuration (a compare's holds its runs and continues)."""
        if path.exists() and not path.is_dir():
            raise RunError(f"{path} exists and is not a directory; pick another --out")
        if not path.is_dir():
            return
        holder = _in_use(path)
        if holder is not None:
            raise _busy(path, holder)
        cls._check_contents(path, kind)

    @classmethod
    def _check_contents(cls, path: Path, kind: str) -> None:
        if is_run_directory(path):
            cls._check_kind(path, cls._read_marker(path), kind)
        if kind != "compare" and (path / "config.json").exists():
            raise RunError(
                f"{path} already holds a run; continue it with --resume {path} "
                "or pick another --out"
            )
        if is_run_directory(path):
            return
        # A lock file alone: another Esper run is creating this directory right now.
        others = [p.name for p in path.iterdir() if p.name != LOCK]
        if others:
            raise RunError(
                f"{path} is not empty and is not an Esper run directory (it holds "
                f"{', '.join(sorted(others)[:3])}{', ...' if len(others) > 3 else ''}); "
                "Esper writes only into new, empty or its own directories: pick another --out"
            )

    @staticmethod
    def _check_kind(path: Path, marker: _Marker, kind: str) -> None:
        if marker.kind != kind:
            what = KINDS.get(marker.kind, f"an Esper directory of kind {marker.kind!r}")
            raise RunError(f"{path} is {what}, not {KINDS[kind]}; pick another --out")

    @classmethod
    def create(cls, path: Path, command: str | None = None, kind: str = "run") -> RunDirectory:
        """Lock ``path`` for a new directory of ``kind`` (`KINDS`), creating it and its
        marker if needed."""
        cls.check_new(path, kind)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunError(
                f"cannot write the run directory {path} ({error.strerror}); choose a writable --out"
            ) from None
        lock_fd = cls._lock(path, command)
        try:
            cls._check_contents(path, kind)  # again, under the lock: another may have won a race
            marker = cls._read_marker(path) if is_run_directory(path) else None
            if marker is None:
                created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                marker = _Marker(uuid.uuid4().hex, created, kind)
                atomic_write(path / MARKER, (json.dumps(asdict(marker)) + "\n").encode())
        except BaseException:
            os.close(lock_fd)
            raise
        run_dir = cls(path, marker, lock_fd)
        run_dir.remove_temporary_files()
        return run_dir

    @classmethod
    def open(cls, path: Path, command: str | None = None, kind: str = "run") -> RunDirectory:
        """Lock the existing directory ``path`` of ``kind`` to continue what it holds."""
        if not path.is_dir():
            raise RunError(f"{path} is not a run directory (no such directory)")
        if not is_run_directory(path):
            if (path / "config.json").is_file():
                raise RunError(
                    f"{path} has no {MARKER} marker: it was written by an older Esper whose "
                    "checkpoints cannot be loaded safely; start the run again with --out"
                )
            raise RunError(f"{path} is not a run directory (no config.json)")
        holder = _in_use(path)
        if holder is not None:
            raise _busy(path, holder)
        lock_fd = cls._lock(path, command)
        try:
            marker = cls._read_marker(path)
            cls._check_kind(path, marker, kind)
        except BaseException:
            os.close(lock_fd)
            raise
        run_dir = cls(path, marker, lock_fd)
        run_dir.remove_temporary_files()
        return run_dir

    @staticmethod
    def _read_marker(path: Path) -> _Marker:
        try:
            data = json.loads((path / MARKER).read_text(encoding="utf-8"))
            return _Marker(str(data["run_id"]), str(data["created"]), str(data.get("kind", "run")))
        except (OSError, ValueError, KeyError, TypeError):
            raise RunError(
                f"{path / MARKER} is damaged; this directory's run cannot be continued"
            ) from None

    @staticmethod
    def _lock(path: Path, command: str | None) -> int:
        lock_path = path / LOCK
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise RunError(
                f"cannot write the run directory {path} ({error.strerror}); choose a writable --out"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise _busy(path, _describe_holder(lock_path)) from None
        # Ours now: a stale record of a dead holder is simply overwritten.
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command or shlex.join(["esper", *sys.argv[1:]]),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        return fd

    def close(self) -> None:
        """Release the lock (the lock file stays; its record is stale from now on)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def remove_temporary_files(self) -> None:
        """Delete temporary files that a killed run left behind (we hold the lock)."""
        for entry in self.path.iterdir():
            if entry.name.startswith(_TMP_PREFIXES) and entry.name.endswith(_TMP_SUFFIX):
                entry.unlink(missing_ok=True)

    # ------------------------------------------------------------ checkpoints

    def identity(self, command: str, task: str, config: Mapping[str, Any]) -> Identity:
        return Identity(self.run_id, command, task, config_digest(config))

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Write ``checkpoint`` as the latest generation; the latest becomes the previous.

        At every instant ``checkpoint.pt`` is a complete checkpoint (the old or the new
        one): the previous generation is made with a hard link, not by moving it away.
        """
        data = checkpoint.to_file()
        latest = self.path / CHECKPOINT
        tmp = _write_temporary(self.path, data, CHECKPOINT)
        try:
            if latest.exists():
                link = self.path / f"{_TMP_PREFIXES[0]}previous-{uuid.uuid4().hex[:12]}.tmp"
                try:
                    os.link(latest, link)
                except OSError:  # no hard links here: copy instead
                    link.write_bytes(latest.read_bytes())
                os.replace(link, self.path / PREVIOUS_CHECKPOINT)
                # rename() does nothing when both names are already links to one file
                # (after a crash between the two renames): the link must still go.
                link.unlink(missing_ok=True)
            os.replace(tmp, latest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.saved_epoch = checkpoint.epoch
        _fsync_directory(self.path)

    def load_checkpoint(
        self,
        identity: Identity,
        history: Sequence[bytes],
        warn: Callable[[str], None],
        record: str = "history.jsonl",
        unit: str = "epoch",
    ) -> Checkpoint | None:
        """The newest checkpoint generation that is intact, this run's, and in step with
        ``history`` (the complete lines of the run's record, the file ``record``, one line
        per ``unit``: ``history.jsonl`` of epochs, or ``updates.jsonl`` of PPO updates);
        None if there is none yet.

        A rejected generation is named in a warning when an older one is used instead;
        if checkpoint files exist but none can be used, `RunError` lists why.
        """
        names = (CHECKPOINT, PREVIOUS_CHECKPOINT)
        if not any((self.path / name).exists() for name in names):
            return None
        rejected = []
        for name in names:
            try:
                checkpoint = read_checkpoint(self.path / name)
            except CheckpointError as error:
                rejected.append(f"{name}: {error}")
                continue
            problem = identity.mismatch(checkpoint.identity) or _history_mismatch(
                checkpoint, history, record, unit
            )
            if problem is not None:
                rejected.append(f"{name}: {problem}")
                continue
            for reason in rejected:
                warn(f"skipped {reason}; continuing from {name} ({unit} {checkpoint.epoch})")
            self.saved_epoch = checkpoint.epoch
            return checkpoint
        raise RunError(
            f"no usable checkpoint in {self.path} ({'; '.join(rejected)}); "
            f"remove the checkpoint files to restart the run from {unit} 1"
        )


def _history_mismatch(
    checkpoint: Checkpoint, history: Sequence[bytes], record: str, unit: str
) -> str | None:
    epoch = checkpoint.epoch
    if len(history) < epoch:
        return f"it is at {unit} {epoch} but {record} holds only {len(history)} {unit}s"
    if hashlib.sha256(b"".join(history[:epoch])).hexdigest() != checkpoint.history_sha256:
        return f"{record}'s first {epoch} {unit}s differ from the ones it was written after"
    return None
