"""Where events go: the `Telemetry` dispatcher, the `Sink` protocol and four sinks.

A run builds one `Telemetry` and passes it explicitly to whatever reports (there is no
global hub). Telemetry only observes: the training loop never reads anything back from
it, so a run trains identically at every `TelemetryLevel`.

* `JsonlSink`: the durable record, one JSON object per line (``events.jsonl``), read
  back with `read_events`;
* `HistorySink`: the run's result, one `EpochCompleted` per line (``history.jsonl``),
  at every level;
* `ConsoleSink`: one readable line per event on a rich console (`format_event`);
* `MemorySink`: keeps events in a list, for tests.

Sink errors are not swallowed: a sink that cannot write raises, naming its path.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Protocol, TextIO, TypeVar, assert_never

from rich.console import Console
from rich.text import Text

from esper.lifecycle import SeedStage
from esper.telemetry.events import (
    EpochCompleted,
    Event,
    GateEvaluated,
    GovernorRollback,
    RunFinished,
    RunStarted,
    SeedCulled,
    SeedFossilized,
    SeedGerminated,
    SeedGradients,
    SeedStageChanged,
    SlotSnapshot,
    TelemetryLevel,
    event_from_dict,
    history_line,
)

__all__ = [
    "ConsoleSink",
    "HistorySink",
    "JsonlSink",
    "LineFile",
    "MemorySink",
    "Sink",
    "SinkError",
    "Telemetry",
    "event_style",
    "format_event",
    "read_events",
]

_E = TypeVar("_E")


class Sink(Protocol):
    """Receives every event the `Telemetry` lets through. ``close`` must be idempotent.

    A sink may have a ``level`` attribute (a `TelemetryLevel`): it then receives the
    events up to that level whatever the run's, as the run's own record does
    (`HistorySink`: every epoch, even at ``--telemetry-level off``). Without one (or
    None), it receives the events up to the run's level.
    """

    def emit(self, event: Event) -> None: ...

    def close(self) -> None: ...


class SinkError(OSError):
    """A sink cannot write where it was told to; the message names the path and the fix."""


class Telemetry:
    """Forwards each event to every sink whose level it is at or below, in order: a
    sink's own ``level`` if it has one (see `Sink`), else ``level``, the run's.

    `Telemetry.off` (no sinks) drops everything; callers with costly measurements should
    check `enabled` before computing them. Closing closes every sink (all are attempted
    even if one fails; the first error is re-raised); emitting after close raises
    RuntimeError. Usable as a context manager.
    """

    def __init__(self, level: TelemetryLevel, sinks: Sequence[Sink] = ()) -> None:
        self._level = TelemetryLevel(level)
        self._sinks = tuple(sinks)
        self._levels = tuple(self._sink_level(sink) for sink in self._sinks)
        self._closed = False

    def _sink_level(self, sink: Sink) -> TelemetryLevel:
        own = getattr(sink, "level", None)
        return self._level if own is None else TelemetryLevel(own)

    @classmethod
    def off(cls) -> Telemetry:
        """A telemetry that emits nothing and has no sinks: the default for library code."""
        return cls(TelemetryLevel.OFF)

    @property
    def level(self) -> TelemetryLevel:
        return self._level

    @property
    def sinks(self) -> tuple[Sink, ...]:
        return self._sinks

    @property
    def closed(self) -> bool:
        return self._closed

    def enabled(self, level: TelemetryLevel) -> bool:
        """Whether events of ``level`` are emitted: at the run's level, or to a sink with a
        level of its own (never for OFF)."""
        return TelemetryLevel.OFF < level <= max(self._levels, default=self._level)

    def emit(self, event: Event) -> None:
        """Send ``event`` to every sink whose level it is at or below."""
        if self._closed:
            raise RuntimeError(f"telemetry is closed; cannot emit {event.kind}")
        if event.level is TelemetryLevel.OFF:
            return
        for sink, level in zip(self._sinks, self._levels, strict=True):
            if event.level <= level:
                sink.emit(event)

    def close(self) -> None:
        """Close every sink once; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        first_error: BaseException | None = None
        for sink in self._sinks:
            try:
                sink.close()
            except Exception as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ---------------------------------------------------------------- JSONL


class JsonlSink:
    """Appends each event as one JSON object per line to ``path``.

    The object is the event's `to_dict` with a ``"time"`` key (ISO-8601 UTC, millisecond
    precision) added after ``"event"``. Each line is flushed to the OS as it is written,
    so a killed process loses nothing already emitted (no fsync: a power cut may).
    Parent directories are created; an existing file is appended to. Raises `SinkError`
    at construction if the path cannot be opened for writing.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file: TextIO | None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            raise SinkError(_unwritable(self.path, exc)) from exc

    def emit(self, event: Event) -> None:
        if self._file is None:
            raise RuntimeError(f"JsonlSink for {self.path} is closed")
        fields = event.to_dict()
        record = {"event": fields.pop("event"), "time": _utc_now(), **fields}
        line = json.dumps(record, allow_nan=False, ensure_ascii=False)
        try:
            self._file.write(line + "\n")
            self._file.flush()
        except OSError as exc:
            raise SinkError(_unwritable(self.path, exc)) from exc

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# ---------------------------------------------------------------- history


class LineFile:
    """An append-only file of lines that keeps the SHA-256 of everything it holds
    (``lines``: what it held already), which a checkpoint records to say which lines it
    follows (``history.jsonl``, ``updates.jsonl``)."""

    def __init__(self, path: Path, lines: Sequence[bytes] = ()) -> None:
        self.path = path
        self._digest = hashlib.sha256(b"".join(lines))

    def append(self, line: str) -> None:
        """Append ``line`` and its newline, flushed to the OS."""
        data = (line + "\n").encode("utf-8")
        with self.path.open("ab") as handle:
            handle.write(data)
        self._digest.update(data)

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the whole file as it stands."""
        return self._digest.hexdigest()


class HistorySink:
    """Appends every `EpochCompleted` to ``history.jsonl`` (`history_line`, a
    `LineFile`), whatever the run's telemetry level (``level`` is NORMAL: it is the run's
    record, not telemetry). Other events are ignored.
    """

    level = TelemetryLevel.NORMAL

    def __init__(self, path: Path, lines: Sequence[bytes] = ()) -> None:
        self.file = LineFile(path, lines)

    def emit(self, event: Event) -> None:
        if isinstance(event, EpochCompleted):
            self.file.append(history_line(event))

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of ``history.jsonl`` as it stands."""
        return self.file.digest

    def close(self) -> None:
        """Nothing stays open between two epochs."""


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _unwritable(path: Path, exc: OSError) -> str:
    """One line: what failed, why, and what to do."""
    reason = exc.strerror or type(exc).__name__
    blocker = next((p for p in path.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        reason = f"{blocker} is a file, not a directory"
    elif path.is_dir():
        reason = "it is a directory"
    return (
        f"cannot write telemetry events to {path}: {reason}; "
        f"choose another path or make {path.parent} writable"
    )


def read_events(path: str | os.PathLike[str]) -> list[Event]:
    """The events of a `JsonlSink` file, in order (``"time"`` keys are dropped).

    Blank lines are skipped. A malformed line raises ValueError naming the file and its
    1-based line number; a truncated last line (a run killed mid-write) says so.
    """
    file = Path(path)
    text = file.read_text(encoding="utf-8")
    lines = text.split("\n")
    events: list[Event] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
            events.append(event_from_dict(data))
        except ValueError as exc:
            hint = " (truncated last line: was the run killed?)" if number == len(lines) else ""
            raise ValueError(f"{file}:{number}: malformed telemetry event{hint}: {exc}") from exc
    return events


# ---------------------------------------------------------------- console


class ConsoleSink:
    """Prints one line per event (`format_event`) on a rich console.

    ``console`` defaults to a new stdout console; pass a progress bar's console so lines
    print above the bar. With ``show_epochs=False`` `EpochCompleted` is skipped (when a
    progress bar already shows per-epoch numbers). Lines are never hard-wrapped (the
    terminal folds them), so a log file holds exactly one line per event. The console is
    not closed.
    """

    def __init__(self, console: Console | None = None, *, show_epochs: bool = True) -> None:
        self.console = console if console is not None else Console()
        self.show_epochs = show_epochs

    def emit(self, event: Event) -> None:
        if isinstance(event, EpochCompleted) and not self.show_epochs:
            return
        self.console.print(Text(format_event(event), style=event_style(event)), soft_wrap=True)

    def close(self) -> None:
        """Nothing to release: the console belongs to the caller."""


def event_style(event: Event) -> str:
    """The rich style an event is shown in (rollbacks red, culls yellow, ...)."""
    if isinstance(event, GovernorRollback):
        return "bold red"
    if isinstance(event, SeedCulled):
        return "yellow"
    if isinstance(event, SeedFossilized):
        return "green"
    if isinstance(event, SeedGerminated):
        return "cyan"
    if isinstance(event, RunStarted | RunFinished):
        return "bold"
    if isinstance(event, GateEvaluated | SeedGradients):
        return "dim"
    return ""


def format_event(event: Event) -> str:
    """One plain-text line stating the event's key facts, e.g.
    ``epoch 12  germinate r0c1 conv_light (2,336 params, linear blend)``."""
    match event:
        case RunStarted():
            return f"run {event.run_id}  task {event.task}  controller {event.controller}"
        case EpochCompleted():
            line = (
                f"epoch {event.epoch}  "
                f"train loss {event.train_loss:.4f} acc {event.train_accuracy:.2f}%  "
                f"val loss {event.val_loss:.4f} acc {event.val_accuracy:.2f}%  "
                f"{event.action}  reward {event.reward:+.3f}"
            )
            seeds = [
                _snapshot(sid, s)
                for sid, s in event.slots.items()
                if s.stage is not SeedStage.DORMANT
            ]
            return f"{line}  seeds {', '.join(seeds)}" if seeds else line
        case SeedGerminated():
            return (
                f"epoch {event.epoch}  germinate {event.slot} {event.blueprint} "
                f"({event.params:,} params, {event.blend} blend)"
            )
        case SeedStageChanged():
            line = (
                f"epoch {event.epoch}  {event.slot} "
                f"{event.from_stage.name} -> {event.to_stage.name}"
            )
            return f"{line}  ({event.reason})" if event.reason else line
        case SeedFossilized():
            return (
                f"epoch {event.epoch}  fossilized {event.slot} {event.blueprint}  "
                f"{event.contribution:+.1f} pp  ({event.params:,} params)"
            )
        case SeedCulled():
            who = "automatic" if event.automatic else "controller"
            pp = "" if event.contribution is None else f"  {event.contribution:+.1f} pp"
            return (
                f"epoch {event.epoch}  culled {event.slot} {event.blueprint}{pp}  "
                f"({who}: {event.reason})"
            )
        case GateEvaluated():
            verdict = "passed" if event.passed else "failed: " + "; ".join(event.checks_failed)
            return f"epoch {event.epoch}  gate {event.gate.value} {event.slot} {verdict}"
        case GovernorRollback():
            culled = f", culled {', '.join(event.culled_slots)}" if event.culled_slots else ""
            return (
                f"epoch {event.epoch}  ROLLBACK {event.reason}  val loss {event.val_loss:.4g}"
                f" -> restored epoch {event.restored_epoch}{culled}"
            )
        case SeedGradients():
            g = event.gradients
            return (
                f"epoch {event.epoch}  grads {event.slot}  mean {g.mean_norm:.2e} "
                f"min {g.min_norm:.2e} max {g.max_norm:.2e}  ratio {g.ratio:.3f}  "
                f"vanishing {g.vanishing_batches} exploding {g.exploding_batches}"
            )
        case RunFinished():
            test = "" if event.test_accuracy is None else f"test acc {event.test_accuracy:.2f}%  "
            return (
                f"finished after {event.epochs} epochs  {test}final val acc "
                f"{event.final_accuracy:.2f}%  best {event.best_accuracy:.2f}%  "
                f"seeds germinated {event.seeds_germinated}, "
                f"fossilized {event.seeds_fossilized}, culled {event.seeds_culled}  "
                f"({event.wall_seconds:.1f} s)"
            )
        case _:
            assert_never(event)


def _snapshot(slot_id: str, snap: SlotSnapshot) -> str:
    parts = [f"alpha {snap.alpha:.2f}"]
    if snap.contribution is not None:
        parts.append(f"{snap.contribution:+.1f} pp")
    return f"{slot_id} {snap.stage.name} ({', '.join(parts)})"


# ---------------------------------------------------------------- memory


class MemorySink:
    """Keeps every event it receives in `events`, in order; `closed` records close()."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.closed = False

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def close(self) -> None:
        self.closed = True

    def of_type(self, kind: type[_E]) -> list[_E]:
        """The received events of class ``kind``, in order."""
        return [event for event in self.events if isinstance(event, kind)]
