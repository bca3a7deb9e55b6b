"""What ``esper watch`` reads: the files a run or a PPO training writes, as they grow.

Read-only by design: no lock is taken, nothing is created or rewritten, so a watcher can
never disturb the run (or be refused by it). Each poll reads only the bytes appended
since the last one, keeps complete lines (a last line still being written waits for its
newline), and starts over when a file was replaced or truncated (a resumed run rewrites
its history atomically; a resumed training rewrites ``updates.jsonl``).

Torch-free: watching a run costs the run's machine no torch import.
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Generic, TypeVar

from esper.telemetry.events import EpochCompleted, Event, RunFinished, event_from_dict, parse_row
from esper.telemetry.updates import UPDATES_FILE, UpdateRow, parse_update

__all__ = [
    "RUN_MARKER",
    "Kind",
    "LineTail",
    "NotARunError",
    "RecordTail",
    "RunFiles",
    "TrainingFiles",
    "classify",
]

RUN_MARKER = ".esper-run"
"""`esper.rundir.MARKER`, not imported from there: `esper.rundir` loads torch."""
HISTORY = "history.jsonl"
EVENTS = "events.jsonl"
CONFIG = "config.json"


class NotARunError(ValueError):
    """The path is not something ``esper watch`` can show; one line that says what is."""


class Kind(Enum):
    """What a watched directory holds."""

    RUN = "run"
    """A run of ``esper heuristic``, ``baseline`` or ``ppo run`` (``history.jsonl``)."""
    TRAINING = "training"
    """An ``esper ppo train`` directory (``updates.jsonl``)."""
    EMPTY = "empty"
    """An empty directory: a run that has not written anything yet."""


def _config_keys(path: Path) -> set[str]:
    try:
        data = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return set(data) if isinstance(data, dict) else set()


def _example_run(compare_dir: Path) -> str:
    runs = sorted(p for p in compare_dir.glob("runs/*/seed-*") if p.is_dir())
    return str(runs[0]) if runs else f"{compare_dir}/runs/ARM/seed-N"


def classify(path: Path) -> Kind:
    """What ``path`` holds; `NotARunError` (one line naming what to watch instead) if
    it is no run, training or empty directory."""
    if not path.exists():
        raise NotARunError(
            f"{path} does not exist; watch a run directory, e.g. esper watch runs/<run>"
        )
    if not path.is_dir():
        raise NotARunError(f"{path} is a file; watch its run directory: esper watch {path.parent}")
    for name in (HISTORY, EVENTS, UPDATES_FILE):
        _check_readable(path / name)
    keys, kind = _config_keys(path), _marker_kind(path)
    if kind == "ppo-train" or (path / UPDATES_FILE).is_file() or {"ppo", "run"} <= keys:
        return Kind.TRAINING
    if kind == "compare" or (path / "compare.json").is_file() or (path / "runs").is_dir():
        raise NotARunError(
            f"{path} is an 'esper compare' directory; watch one of its runs, e.g. "
            f"esper watch {_example_run(path)} (or see its table: esper report {path})"
        )
    if kind is not None or (path / HISTORY).is_file() or "episode" in keys:
        return Kind.RUN
    try:
        empty = not any(path.iterdir())
    except OSError as error:
        raise NotARunError(f"cannot read {path} ({error.strerror})") from None
    if empty:
        return Kind.EMPTY
    raise NotARunError(
        f"{path} is not a run directory (no history.jsonl, updates.jsonl or {RUN_MARKER}); "
        "watch a directory written by esper heuristic, baseline, ppo run or ppo train"
    )


def _marker_kind(path: Path) -> str | None:
    """The kind of Esper directory the marker says (a run's when it says none), or None
    without a marker."""
    try:
        data = json.loads((path / RUN_MARKER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return "run"  # damaged: the run's own commands say what is wrong with it
    kind = data.get("kind", "run") if isinstance(data, dict) else "run"
    return str(kind)


def _check_readable(file: Path) -> None:
    """`NotARunError` if ``file`` is there but is no file the view can read: a directory,
    a link that leads nowhere or round in a loop, one it may not open."""
    try:
        status = file.stat()
    except FileNotFoundError:
        if file.is_symlink():
            raise NotARunError(
                f"{file} is a link to nothing; remove it or watch another run"
            ) from None
        return  # not written yet: the view waits for it
    except OSError as error:  # e.g. a loop of symbolic links
        raise NotARunError(f"cannot read {file} ({error.strerror})") from None
    if not stat.S_ISREG(status.st_mode):
        raise NotARunError(f"{file} is not a file (a directory?); it is not a run's: watch another")
    if not os.access(file, os.R_OK):
        raise NotARunError(f"cannot read {file} (permission denied)")


class LineTail:
    """The complete lines appended to a file since the last `read`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = False
        """Whether the file ends in a line still being written (no newline yet)."""
        self._offset = 0
        self._identity: tuple[int, int] | None = None

    def read(self) -> tuple[bool, list[str]]:
        """``(restarted, lines)``: the complete lines added since the last call. When the
        file was replaced, truncated or removed, ``restarted`` is True and ``lines`` are
        all of the file's complete lines (none if it is gone)."""
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            restarted = self._identity is not None
            self._identity, self._offset, self.partial = None, 0, False
            return restarted, []
        with handle:
            # The open file's own identity: a replace between a stat and the open
            # cannot mix up two files.
            status = os.fstat(handle.fileno())
            identity = (status.st_dev, status.st_ino)
            restarted = False
            if identity != self._identity or status.st_size < self._offset:
                restarted = self._identity is not None
                self._identity, self._offset = identity, 0
            handle.seek(self._offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        self.partial = end < len(data)
        return restarted, data[:end].decode("utf-8", errors="replace").splitlines()


_T = TypeVar("_T")


class RecordTail(Generic[_T]):
    """The records of a JSON-lines file, parsed as they are appended. A complete line
    that does not parse is counted in `unreadable` and skipped, never fatal."""

    def __init__(self, path: Path, parse: Callable[[str], _T]) -> None:
        self.records: list[_T] = []
        self.unreadable = 0
        self._tail = LineTail(path)
        self._parse = parse

    @property
    def path(self) -> Path:
        return self._tail.path

    @property
    def partial(self) -> bool:
        return self._tail.partial

    def refresh(self) -> bool:
        """Read what was appended; whether the records changed."""
        restarted, lines = self._tail.read()
        if restarted:
            self.records, self.unreadable = [], 0
        for line in lines:
            if not line.strip():
                continue
            try:
                self.records.append(self._parse(line))
            except (ValueError, KeyError, TypeError):
                self.unreadable += 1
        return restarted or bool(lines)

    def modified(self) -> float | None:
        """When the file was last written (seconds since the epoch), None if missing."""
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None


def _parse_event(line: str) -> Event:
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError("not an event")
    return event_from_dict(data)


def _read_config(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # not written yet (it is written atomically, so never half)
    return data if isinstance(data, dict) else None


def _get(data: dict[str, Any] | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


@dataclass
class RunFiles:
    """A run directory as it is written: its configuration, rows and events."""

    path: Path
    config: dict[str, Any] | None = None
    history: RecordTail[EpochCompleted] = field(init=False)
    events: RecordTail[Event] = field(init=False)

    def __post_init__(self) -> None:
        self.history = RecordTail(self.path / HISTORY, parse_row)
        self.events = RecordTail(self.path / EVENTS, _parse_event)

    def refresh(self) -> bool:
        """Read what the run wrote since the last call; whether anything changed."""
        changed = False
        if self.config is None:
            self.config = _read_config(self.path)
            changed = self.config is not None
        changed |= self.history.refresh()
        changed |= self.events.refresh()
        return changed

    @property
    def rows(self) -> list[EpochCompleted]:
        return self.history.records

    @property
    def planned_epochs(self) -> int | None:
        epochs = _get(self.config, "episode", "epochs")
        return epochs if isinstance(epochs, int) else None

    @property
    def task(self) -> str:
        return str(_get(self.config, "task") or "?")

    @property
    def controller(self) -> str:
        return str(_get(self.config, "controller") or "?")

    @property
    def seed(self) -> int | None:
        seed = _get(self.config, "episode", "seed")
        return seed if isinstance(seed, int) else None

    @property
    def slot_ids(self) -> list[str]:
        return sorted({sid for row in self.rows for sid in row.slots})

    @property
    def finished(self) -> bool:
        """All planned epochs are in the history, or the run said it finished."""
        if not self.rows:
            return False
        ended = any(
            isinstance(e, RunFinished) and e.epochs == self.rows[-1].epoch
            for e in self.events.records
        )
        planned = self.planned_epochs
        return ended or (planned is not None and self.rows[-1].epoch >= planned)


@dataclass
class TrainingFiles:
    """An ``esper ppo train`` directory as it is written: configuration and updates."""

    path: Path
    config: dict[str, Any] | None = None
    updates: RecordTail[UpdateRow] = field(init=False)

    def __post_init__(self) -> None:
        self.updates = RecordTail(self.path / UPDATES_FILE, parse_update)

    def refresh(self) -> bool:
        """Read what the training wrote since the last call; whether anything changed."""
        changed = False
        if self.config is None:
            self.config = _read_config(self.path)
            changed = self.config is not None
        return self.updates.refresh() or changed

    @property
    def rows(self) -> list[UpdateRow]:
        return self.updates.records

    @property
    def task(self) -> str:
        return str(_get(self.config, "run", "task") or "?")

    @property
    def envs(self) -> int | None:
        envs = _get(self.config, "envs")
        return envs if isinstance(envs, int) else None

    @property
    def epochs(self) -> int | None:
        epochs = _get(self.config, "run", "episode", "epochs")
        return epochs if isinstance(epochs, int) else None

    @property
    def planned_episodes(self) -> int | None:
        episodes = _get(self.config, "episodes")
        return episodes if isinstance(episodes, int) else None

    @property
    def planned_updates(self) -> int | None:
        """`esper.rl.training.PPOTrainConfig.updates`, from the saved configuration."""
        episodes, envs = self.planned_episodes, self.envs
        if episodes is None or not envs:
            return None
        return math.ceil(episodes / envs)

    @property
    def finished(self) -> bool:
        planned = self.planned_updates
        return bool(self.rows) and planned is not None and self.rows[-1].update >= planned
