"""Telemetry: typed events about a run, filtered by level and written to sinks.

Build one `Telemetry` per run and pass it explicitly; telemetry only observes, nothing
in training reads from it::

    with Telemetry(TelemetryLevel.NORMAL, [JsonlSink(run_dir / "events.jsonl"),
                                           ConsoleSink()]) as telemetry:
        telemetry.emit(SeedGerminated(epoch=12, slot="r0c1", ...))

`read_events` turns an ``events.jsonl`` back into the same events. See
`esper.telemetry.events` for the serialised form.
"""

from esper.telemetry.events import (
    EVENT_TYPES,
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
    parse_row,
)
from esper.telemetry.sinks import (
    ConsoleSink,
    HistorySink,
    JsonlSink,
    LineFile,
    MemorySink,
    Sink,
    SinkError,
    Telemetry,
    format_event,
    read_events,
)

__all__ = [
    "EVENT_TYPES",
    "ConsoleSink",
    "EpochCompleted",
    "Event",
    "GateEvaluated",
    "GovernorRollback",
    "HistorySink",
    "JsonlSink",
    "LineFile",
    "MemorySink",
    "RunFinished",
    "RunStarted",
    "SeedCulled",
    "SeedFossilized",
    "SeedGerminated",
    "SeedGradients",
    "SeedStageChanged",
    "Sink",
    "SinkError",
    "SlotSnapshot",
    "Telemetry",
    "TelemetryLevel",
    "event_from_dict",
    "format_event",
    "history_line",
    "parse_row",
    "read_events",
]
