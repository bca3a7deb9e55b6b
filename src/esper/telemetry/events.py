"""Telemetry levels and the typed events a run emits.

Events are frozen dataclasses: facts about the run, built by the training loop and handed
to a `esper.telemetry.Telemetry`. They are deterministic (no wall-clock time inside; a
sink may stamp ``"time"`` when it writes one) so two identical runs emit equal events,
except for the two wall times of `EpochCompleted`, the record of an epoch.

Each event class carries two class variables:

* ``level``: the lowest `TelemetryLevel` at which the event is emitted;
* ``kind``: its stable snake_case name, the ``"event"`` key of its serialised form.

Serialised form (`to_dict`, and one line of ``events.jsonl``)::

    {"event": "seed_germinated", "epoch": 12, "slot": "r0c1", ...}

* enums (`SeedStage`, `Gate`) by ``.name``, e.g. ``"BLENDING"``, ``"G2_START_BLENDING"``;
* tuples as lists; mappings as objects; nested records (`SlotSnapshot`,
  `esper.contracts.GradientStats`) as nested objects;
* finite floats as JSON numbers; non-finite floats as the strings ``"nan"``, ``"inf"``
  and ``"-inf"`` (strict JSON has no such numbers, and a diverged loss is a fact worth
  keeping, so they are not flattened to ``null``; ``null`` means "not measured").

`event_from_dict` inverts `to_dict` exactly for every typed field; a field with a default
may be missing (a file written before the field existed). ``RunStarted.config``
is free-form: it round-trips unchanged only if it holds JSON-native values (str, int,
float, bool, None, lists, str-keyed dicts); tuples come back as lists, enums as their
names and any other object as ``str(value)``.

Units follow `esper.lifecycle`: accuracies and contributions are percentage points
(0-100), epochs are 1-based and count whole training epochs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any, ClassVar, TypeAlias

from esper.contracts import GradientStats
from esper.lifecycle import Gate, SeedStage

__all__ = [
    "EVENT_TYPES",
    "EpochCompleted",
    "Event",
    "GateEvaluated",
    "GovernorRollback",
    "RunFinished",
    "RunStarted",
    "SeedCulled",
    "SeedFossilized",
    "SeedGerminated",
    "SeedGradients",
    "SeedStageChanged",
    "SlotSnapshot",
    "TelemetryLevel",
    "event_from_dict",
    "history_line",
    "parse_row",
]


class TelemetryLevel(IntEnum):
    """How much a run reports. Each level includes everything below it.

    OFF: nothing. LIFECYCLE: run start/end and every seed lifecycle event (germinate,
    stage change, fossilize, cull, governor rollback). NORMAL: plus one summary per epoch.
    DEBUG: plus gate evaluations and per-slot gradient statistics.
    """

    OFF = 0
    LIFECYCLE = 1
    NORMAL = 2
    DEBUG = 3

    @classmethod
    def parse(cls, text: str) -> TelemetryLevel:
        """The level named by ``text`` (case-insensitive, surrounding blanks ignored).

        Raises ValueError naming the valid levels. Numbers are not accepted: names only.
        """
        member = cls.__members__.get(text.strip().upper())
        if member is None:
            valid = ", ".join(name.lower() for name in cls.__members__)
            raise ValueError(f"unknown telemetry level {text!r}: expected one of {valid}")
        return member


# ---------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class SlotSnapshot:
    """One slot at the end of an epoch, as `EpochCompleted` reports it.

    ``blueprint`` is None for an empty slot. ``alpha`` is the blend weight the seed
    trained at (0 outside BLENDING/PROBATIONARY/FOSSILIZED). ``contribution`` and its
    paired standard error ``contribution_se`` (pp), and ``gradient_ratio`` (gate G2's
    measure), are None when not measured this epoch.
    """

    stage: SeedStage
    blueprint: str | None
    alpha: float
    contribution: float | None
    params: int
    """The seed's trainable parameters (0 for an empty slot)."""
    contribution_se: float | None = None
    gradient_ratio: float | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable form (see the module docstring for the encoding)."""
        return _fields_to_dict(self)


@dataclass(frozen=True, slots=True)
class _EventBase:
    """Shared behaviour of all events; not itself an event."""

    level: ClassVar[TelemetryLevel]
    kind: ClassVar[str]

    def to_dict(self) -> dict[str, object]:
        """``{"event": kind, **fields}``, JSON-serialisable with ``allow_nan=False``."""
        return {"event": self.kind, **_fields_to_dict(self)}


@dataclass(frozen=True, slots=True)
class RunStarted(_EventBase):
    """A run began. ``config`` is the resolved run configuration, free-form."""

    level: ClassVar[TelemetryLevel] = TelemetryLevel.LIFECYCLE
    kind: ClassVar[str] = "run_started"

    run_id: str
    task: str
    controller: str
    config: dict[str, object]


@dataclass(frozen=True, slots=True)
class EpochCompleted(_EventBase):
    """One finished epoch: the view of the runner's epoch record
    (`esper.training.ledger.EpochRecord`) that every output shares. A line of
    ``history.jsonl`` is this event's fields (without the ``"event"`` key); the console,
    TensorBoard, ``esper watch`` and ``esper report`` read it.

    ``action`` is the controller's op, slot and blueprint (e.g. ``"GERMINATE r0c1
    conv_light"``), ``outcome`` "applied" or why it was refused, ``reason`` why the
    controller chose it; ``reward`` the reward for reaching this epoch, which every run
    records whatever its controller. ``slots`` holds every slot, in slot order.
    ``seconds`` (wall time since the run started, across resumes) and ``epoch_seconds``
    are the only wall-clock fields of any event.
    """

    level: ClassVar[TelemetryLevel] = TelemetryLevel.NORMAL
    kind: ClassVar[str] = "epoch_completed"

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    action: str
    outcome: str
    reason: str
    reward: float
    rollback: str | None
    """Why the governor rolled this epoch back, if it did."""
    host_params: int
    seed_params: int
    """Trainable parameters of every live and fossilized seed at the end of the epoch."""
    seconds: float
    germinated: int
    fossilized: int
    culled: int
    """Seeds germinated, fossilized and culled so far (cumulative)."""
    slots: Mapping[str, SlotSnapshot]
    train_flops: float = 0.0
    """FLOPs of this epoch's training steps (forward and backward)."""
    eval_flops: float = 0.0
    """FLOPs of this epoch's evaluation, counterfactual passes included."""
    epoch_seconds: float = 0.0
    test_loss: float | None = None
    test_accuracy: float | None = None
    """The final model on the test split: on the last planned epoch only (None on
    others, and for data without a test split). ``val_*`` is the decision split."""

    @property
    def params(self) -> int:
        """Trainable parameters at the end of the epoch, host and seeds."""
        return self.host_params + self.seed_params


@dataclass(frozen=True, slots=True)
class SeedGerminated(_EventBase):
    """A seed was planted in ``slot``. ``blend`` is the blend algorithm's value
    (e.g. ``"linear"``); ``params`` counts the seed's trainable parameters."""

    level: ClassVar[TelemetryLevel] = TelemetryLevel.LIFECYCLE
    kind: ClassVar[str] = "seed_germinated"

    epoch: int
    slot: str
    seed_id: str
    blueprint: str
    blend: str
    params: int


@dataclass(frozen=True, slots=True)
class SeedStageChanged(_EventBase):
    """A seed moved between lifecycle stages. ``reason`` is why, in words (a gate's
    summary, a cull reason, or ``""`` for a mechanical step such as CULLED -> EMBARGOED)."""

    level: ClassVar[TelemetryLevel] = TelemetryLevel.LIFECYCLE
    kind: ClassVar[str] = "seed_stage_changed"

    epoch: int
    slot: str
    seed_id: str
    from_stage: SeedStage
    to_stage: SeedStage
    reason: str


@dataclass(frozen=True, slots=True)
class SeedFossilized(_EventBase):
    """A seed was kept for good. ``contribution`` is the counterfactual (pp) that
    passed gate G5; ``params`` the parameters it adds to the host."""

    level: ClassVar[TelemetryLevel] = TelemetryLevel.LIFECYCLE
    kind: ClassVar[str] = "seed_fossilized"

    epoch: int
    slot: str
    seed_id: str
    blueprint: str
    contribution: float
    params: int


@dataclass(frozen=True, slots=True)
class SeedCulled(_EventBase):
    """A live seed was removed. ``automatic`` is True when the lifecycle culled it
    (probation failure, governor) and False when a controller chose CULL;
    ``contribution`` is the last measured counterfactual (pp), if any."""

    level: ClassVar[TelemetryLevel] = TelemetryLevel.LIFECYCLE
    kind: ClassVar[str] = "seed_culled"

    epoch: int
    slot: str
    seed_id: str
    blueprint: str
    reason: str
    automatic: bool
    contribution: float | None


@dataclass(frozen=True, slots=True)
class GateEvaluated(_EventBase):
    """A quality gate was evaluated for a seed; mirrors `esper.lifecycle.GateResult`."""

    level: ClassVar[TelemetryLevel] = TelemetryLevel.DEBUG
    kind: ClassVar[str] = "gate_evaluated"

    epoch: int
    slot: str
    seed_id: str
    gate: Gate
    passed: bool
    checks_passed: tuple[str, ...]
    checks_failed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GovernorRollback(_EventBase):
    """The governor judged training unstable and restored an earlier checkpoint.

    ``val_loss`` is the loss that triggered it, ``restored_epoch`` the epoch whose end
    state was restored, ``culled_slots`` the slots whose live seeds were culled.
    """

    level: ClassVar[TelemetryLevel] = TelemetryLevel.LIFECYCLE
    kind: ClassVar[str] = "governor_rollback"

    epoch: int
    reason: str
    val_loss: float
    restored_epoch: int
    culled_slots: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SeedGradients(_EventBase):
    """A seed's gradient statistics over an epoch's batches (`GradientStats`: norms,
    vanishing and exploding batches, and the seed-to-host ratio gate G2 reads)."""

    level: ClassVar[TelemetryLevel] = TelemetryLevel.DEBUG
    kind: ClassVar[str] = "seed_gradients"

    epoch: int
    slot: str
    gradients: GradientStats


@dataclass(frozen=True, slots=True)
class RunFinished(_EventBase):
    """A run ended. ``epochs`` is the number trained; accuracies in pp; the seed counts
    are totals over the run."""

    level: ClassVar[TelemetryLevel] = TelemetryLevel.LIFECYCLE
    kind: ClassVar[str] = "run_finished"

    epochs: int
    final_accuracy: float
    best_accuracy: float
    wall_seconds: float
    seeds_germinated: int
    seeds_fossilized: int
    seeds_culled: int
    test_accuracy: float | None = None
    """The final model on the test split (None: the data has none, or the run stopped
    early); ``final_accuracy`` and ``best_accuracy`` are on the decision split."""


#: Any telemetry event.
Event: TypeAlias = (
    RunStarted
    | EpochCompleted
    | SeedGerminated
    | SeedStageChanged
    | SeedFossilized
    | SeedCulled
    | GateEvaluated
    | GovernorRollback
    | SeedGradients
    | RunFinished
)

#: Every event class by its ``kind``, in the order they typically occur.
EVENT_TYPES: Mapping[str, type[Event]] = types.MappingProxyType(
    {cls.kind: cls for cls in typing.get_args(Event)}
)

# Keys a sink may add to a serialised event; `event_from_dict` ignores them.
_SINK_KEYS = frozenset({"time"})


def event_from_dict(data: Mapping[str, object]) -> Event:
    """Rebuild an event from its `to_dict` form (a ``"time"`` key is ignored).

    Raises ValueError saying what is wrong: unknown ``"event"`` kind, missing or
    unexpected fields, or a value of the wrong type.
    """
    kind = data.get("event")
    if not isinstance(kind, str) or kind not in EVENT_TYPES:
        known = ", ".join(EVENT_TYPES)
        raise ValueError(f"unknown event kind {kind!r}: expected one of {known}")
    payload = {k: v for k, v in data.items() if k != "event" and k not in _SINK_KEYS}
    return typing.cast(Event, _record_from_dict(EVENT_TYPES[kind], payload, kind))


# ---------------------------------------------------------------- history lines


def history_line(row: EpochCompleted) -> str:
    """``row`` as one line of ``history.jsonl`` (no newline): its fields, JSON-encoded as
    events are (non-finite losses as ``"nan"``, ``"inf"``)."""
    fields = row.to_dict()
    del fields["event"]
    return json.dumps(fields)


def parse_row(line: str) -> EpochCompleted:
    """One line of ``history.jsonl``; ValueError (or KeyError, TypeError) if it is not a
    row. Lines written before a field existed read with its default."""
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    row = event_from_dict({**data, "event": EpochCompleted.kind})
    assert isinstance(row, EpochCompleted)
    return row


# ---------------------------------------------------------------- encoding

_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _fields_to_dict(record: object) -> dict[str, object]:
    assert dataclasses.is_dataclass(record) and not isinstance(record, type)
    return {f.name: _encode(getattr(record, f.name)) for f in dataclasses.fields(record)}


def _encode(value: object) -> object:
    """JSON-native form of a field value (see the module docstring)."""
    if isinstance(value, Enum):  # before str: `Gate` is a str enum
        return value.name
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        if math.isfinite(number):
            return number
        return "nan" if math.isnan(number) else ("inf" if number > 0 else "-inf")
    if isinstance(value, tuple | list):
        return [_encode(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _encode(item) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _fields_to_dict(value)
    return str(value)


# ---------------------------------------------------------------- decoding


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """Resolved field types of a record class (annotations are strings here)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _record_from_dict(cls: type[Any], payload: Mapping[str, object], where: str) -> Any:
    hints = _hints(cls)
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    # A field with a default may be missing: files written before it existed.
    missing = [f.name for f in fields if f.name not in payload and _required(f)]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
    unexpected = sorted(set(payload) - set(names))
    if unexpected:
        raise ValueError(f"{where}: unexpected field(s) {', '.join(unexpected)}")
    kwargs = {
        name: _decode(hints[name], payload[name], f"{where}.{name}")
        for name in names
        if name in payload
    }
    return cls(**kwargs)


def _required(field: dataclasses.Field[Any]) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _decode(hint: Any, value: object, where: str) -> object:
    origin = typing.get_origin(hint)
    if origin is types.UnionType or origin is typing.Union:
        if value is None and type(None) in typing.get_args(hint):
            return None
        (inner,) = (arg for arg in typing.get_args(hint) if arg is not type(None))
        return _decode(inner, value, where)
    if origin is tuple:
        item_hint = typing.get_args(hint)[0]
        items = _expect(value, list, where)
        return tuple(_decode(item_hint, item, f"{where}[{i}]") for i, item in enumerate(items))
    if origin in (dict, Mapping):
        mapping = _expect(value, dict, where)
        if not all(isinstance(key, str) for key in mapping):
            raise ValueError(f"{where}: keys must be strings")
        args = typing.get_args(hint)
        if len(args) == 2 and dataclasses.is_dataclass(args[1]):
            return {k: _decode(args[1], v, f"{where}[{k!r}]") for k, v in mapping.items()}
        return dict(mapping)
    if hint is bool:
        return _expect(value, bool, where)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str) and value in _NON_FINITE:
            return _NON_FINITE[value]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        return _expect(value, str, where)
    if isinstance(hint, type) and issubclass(hint, Enum):
        name = _expect(value, str, where)
        if name not in hint.__members__:
            valid = ", ".join(hint.__members__)
            raise ValueError(f"{where}: {name!r} is not a {hint.__name__} (one of {valid})")
        return hint[name]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _record_from_dict(hint, _expect(value, dict, where), where)
    raise TypeError(f"{where}: no decoder for field type {hint!r}")  # a bug in this module


_T = typing.TypeVar("_T")


def _expect(value: object, kind: type[_T], where: str) -> _T:
    if not isinstance(value, kind):
        raise ValueError(f"{where}: expected {kind.__name__}, got {value!r}")
    return value
