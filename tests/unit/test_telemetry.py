"""Telemetry: level filtering, the JSONL round trip, sinks and console formatting."""

from __future__ import annotations

import io
import json
import math
from datetime import datetime
from pathlib import Path

import pytest
from rich.console import Console

from esper.contracts import GradientStats
from esper.lifecycle import Gate, SeedStage
from esper.telemetry import (
    EVENT_TYPES,
    ConsoleSink,
    EpochCompleted,
    Event,
    GateEvaluated,
    GovernorRollback,
    HistorySink,
    JsonlSink,
    MemorySink,
    RunFinished,
    RunStarted,
    SeedCulled,
    SeedFossilized,
    SeedGerminated,
    SeedGradients,
    SeedStageChanged,
    SinkError,
    SlotSnapshot,
    Telemetry,
    TelemetryLevel,
    event_from_dict,
    format_event,
    history_line,
    parse_row,
    read_events,
)


def one_of_each() -> list[Event]:
    """One instance of every event type, in EVENT_TYPES order."""
    return [
        RunStarted(
            run_id="run-1",
            task="cifar10",
            controller="heuristic",
            config={"epochs": 30, "lr": 0.01, "slots": ["r0c0", "r0c1"], "seed": None},
        ),
        EpochCompleted(
            epoch=12,
            train_loss=0.53,
            train_accuracy=81.25,
            val_loss=0.61,
            val_accuracy=79.5,
            action="GERMINATE r0c1 conv_light",
            outcome="applied",
            reason="most capacity per FLOP",
            reward=0.125,
            rollback=None,
            host_params=1000,
            seed_params=2336,
            seconds=12.5,
            germinated=1,
            fossilized=0,
            culled=0,
            slots={
                "r0c0": SlotSnapshot(SeedStage.DORMANT, None, 0.0, None, 0),
                "r0c1": SlotSnapshot(SeedStage.BLENDING, "conv_light", 0.4, 1.5, 2336, 0.5, 0.31),
            },
            train_flops=1e9,
            eval_flops=2e8,
            epoch_seconds=1.25,
        ),
        SeedGerminated(
            epoch=12, slot="r0c1", seed_id="s1", blueprint="conv_light", blend="linear", params=2336
        ),
        SeedStageChanged(
            epoch=20,
            slot="r0c1",
            seed_id="s1",
            from_stage=SeedStage.BLENDING,
            to_stage=SeedStage.PROBATIONARY,
            reason="all checks passed",
        ),
        SeedFossilized(
            epoch=25,
            slot="r0c1",
            seed_id="s1",
            blueprint="conv_light",
            contribution=3.1,
            params=2336,
        ),
        SeedCulled(
            epoch=30,
            slot="r0c2",
            seed_id="s2",
            blueprint="attention",
            reason="negative counterfactual (-0.50 pp)",
            automatic=True,
            contribution=-0.5,
        ),
        GateEvaluated(
            epoch=14,
            slot="r0c1",
            seed_id="s1",
            gate=Gate.G2_START_BLENDING,
            passed=False,
            checks_passed=("stage is TRAINING (is TRAINING)",),
            checks_failed=("trained 2/3 epochs", "gradient ratio 0.050 >= 0.1"),
        ),
        GovernorRollback(
            epoch=40,
            reason="val loss exploded",
            val_loss=math.inf,
            restored_epoch=38,
            culled_slots=("r0c1", "r0c2"),
        ),
        SeedGradients(
            epoch=12,
            slot="r0c1",
            gradients=GradientStats(
                batches=20,
                mean_norm=1.5e-3,
                max_norm=2e-2,
                min_norm=1e-7,
                vanishing_batches=3,
                exploding_batches=0,
                ratio=0.31,
            ),
        ),
        RunFinished(
            epochs=50,
            final_accuracy=82.1,
            best_accuracy=83.0,
            wall_seconds=12.3,
            seeds_germinated=3,
            seeds_fossilized=1,
            seeds_culled=2,
        ),
    ]


def test_sample_covers_every_event_type() -> None:
    assert [type(e) for e in one_of_each()] == list(EVENT_TYPES.values())
    assert all(kind == cls.kind for kind, cls in EVENT_TYPES.items())


# ---------------------------------------------------------------- levels


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("off", TelemetryLevel.OFF),
        ("Lifecycle", TelemetryLevel.LIFECYCLE),
        ("NORMAL", TelemetryLevel.NORMAL),
        (" debug\n", TelemetryLevel.DEBUG),
    ],
)
def test_parse_accepts_names_case_insensitively(text: str, level: TelemetryLevel) -> None:
    assert TelemetryLevel.parse(text) is level


@pytest.mark.parametrize("text", ["verbose", "", "2", "DEBUG2"])
def test_parse_rejects_unknown_names_listing_valid_ones(text: str) -> None:
    with pytest.raises(ValueError, match="off, lifecycle, normal, debug"):
        TelemetryLevel.parse(text)


def emitted_at(level: TelemetryLevel) -> list[Event]:
    sink = MemorySink()
    with Telemetry(level, [sink]) as telemetry:
        for event in one_of_each():
            telemetry.emit(event)
    return sink.events


def test_off_emits_nothing() -> None:
    assert emitted_at(TelemetryLevel.OFF) == []


def test_lifecycle_drops_epoch_summaries_and_debug_events() -> None:
    kinds = {type(e) for e in emitted_at(TelemetryLevel.LIFECYCLE)}
    assert EpochCompleted not in kinds
    assert GateEvaluated not in kinds
    assert SeedGradients not in kinds
    assert {RunStarted, SeedGerminated, SeedCulled, GovernorRollback, RunFinished} <= kinds


def test_normal_adds_epoch_summaries_but_not_debug_events() -> None:
    kinds = {type(e) for e in emitted_at(TelemetryLevel.NORMAL)}
    assert EpochCompleted in kinds
    assert GateEvaluated not in kinds
    assert SeedGradients not in kinds


def test_a_sink_with_a_level_of_its_own_gets_its_events_whatever_the_runs() -> None:
    # The history is the run's record: every epoch reaches it even at level OFF, while
    # a sink without a level of its own follows the run's.
    class RecordSink(MemorySink):
        level = TelemetryLevel.NORMAL

    record, follows = RecordSink(), MemorySink()
    telemetry = Telemetry(TelemetryLevel.OFF, [record, follows])
    for event in one_of_each():
        telemetry.emit(event)
    assert follows.events == []
    assert {type(e) for e in record.events} == {
        type(e) for e in one_of_each() if e.level <= TelemetryLevel.NORMAL
    }
    assert telemetry.enabled(TelemetryLevel.NORMAL)
    assert not telemetry.enabled(TelemetryLevel.DEBUG)


def test_the_history_sink_writes_epochs_and_keeps_the_files_digest(tmp_path: Path) -> None:
    import hashlib

    epoch = next(e for e in one_of_each() if isinstance(e, EpochCompleted))
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"kept\n")
    sink = HistorySink(path, [b"kept\n"])
    with Telemetry(TelemetryLevel.OFF, [sink]) as telemetry:
        for event in one_of_each():
            telemetry.emit(event)
    assert path.read_text().splitlines() == ["kept", history_line(epoch)]
    assert sink.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert parse_row(history_line(epoch)) == epoch


def test_a_history_line_written_before_a_field_existed_still_reads() -> None:
    # Rows of older runs have no gradient ratio, FLOPs or epoch time; they read with
    # the fields' defaults (and a NaN loss written as a string).
    old = {
        "epoch": 3, "train_loss": "nan", "train_accuracy": 10.0, "val_loss": 2.0,
        "val_accuracy": 12.0, "action": "WAIT", "outcome": "applied", "reason": "",
        "reward": 0.0, "rollback": None, "host_params": 496, "seed_params": 0,
        "seconds": 1.0, "germinated": 0, "fossilized": 0, "culled": 0,
        "slots": {"r0c0": {"stage": "DORMANT", "blueprint": None, "alpha": 0.0,
                           "contribution": None, "params": 0}},
    }  # fmt: skip
    row = parse_row(json.dumps(old))
    assert math.isnan(row.train_loss) and row.train_flops == 0.0
    assert row.slots["r0c0"] == SlotSnapshot(SeedStage.DORMANT, None, 0.0, None, 0)


def test_debug_emits_everything_in_order() -> None:
    assert emitted_at(TelemetryLevel.DEBUG) == one_of_each()


def test_enabled_matches_filtering() -> None:
    telemetry = Telemetry(TelemetryLevel.NORMAL)
    assert telemetry.enabled(TelemetryLevel.LIFECYCLE)
    assert telemetry.enabled(TelemetryLevel.NORMAL)
    assert not telemetry.enabled(TelemetryLevel.DEBUG)
    assert not telemetry.enabled(TelemetryLevel.OFF)
    assert not Telemetry.off().enabled(TelemetryLevel.LIFECYCLE)


def test_close_is_idempotent_and_closes_sinks_once() -> None:
    closes: list[str] = []

    class CountingSink(MemorySink):
        def close(self) -> None:
            closes.append("x")

    telemetry = Telemetry(TelemetryLevel.DEBUG, [CountingSink()])
    telemetry.close()
    telemetry.close()
    assert closes == ["x"]
    assert telemetry.closed
    with pytest.raises(RuntimeError, match="closed"):
        telemetry.emit(one_of_each()[0])


def test_close_attempts_every_sink_even_if_one_fails() -> None:
    class BrokenSink(MemorySink):
        def close(self) -> None:
            raise OSError("disk gone")

    good = MemorySink()
    telemetry = Telemetry(TelemetryLevel.DEBUG, [BrokenSink(), good])
    with pytest.raises(OSError, match="disk gone"):
        telemetry.close()
    assert good.closed


# ---------------------------------------------------------------- serialisation


@pytest.mark.parametrize("event", one_of_each(), ids=lambda e: type(e).kind)
def test_to_dict_is_strict_json_and_round_trips(event: Event) -> None:
    data = event.to_dict()
    assert data["event"] == event.kind
    text = json.dumps(data, allow_nan=False)
    assert event_from_dict(json.loads(text)) == event


def test_encoding_of_enums_tuples_and_non_finite_floats() -> None:
    rollback = GovernorRollback(
        epoch=3, reason="nan", val_loss=math.inf, restored_epoch=2, culled_slots=("r0c0",)
    )
    assert rollback.to_dict()["val_loss"] == "inf"
    assert rollback.to_dict()["culled_slots"] == ["r0c0"]
    changed = one_of_each()[3].to_dict()
    assert (changed["from_stage"], changed["to_stage"]) == ("BLENDING", "PROBATIONARY")
    assert one_of_each()[6].to_dict()["gate"] == "G2_START_BLENDING"
    stats = SeedGradients(1, "r0c0", GradientStats(4, math.nan, -math.inf, 0.0, 0, 0, 0.0))
    back = event_from_dict(json.loads(json.dumps(stats.to_dict(), allow_nan=False)))
    assert isinstance(back, SeedGradients)
    assert math.isnan(back.gradients.mean_norm)
    assert back.gradients.max_norm == -math.inf


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"event": "seed_sprouted"}, "unknown event kind 'seed_sprouted'"),
        ({"params": "many"}, r"seed_germinated\.params: expected an integer"),
        ({"epoch": True}, r"seed_germinated\.epoch: expected an integer"),
        ({"extra": 1}, "unexpected field"),
    ],
)
def test_event_from_dict_rejects_bad_input(change: dict[str, object], message: str) -> None:
    data = {**one_of_each()[2].to_dict(), **change}
    with pytest.raises(ValueError, match=message):
        event_from_dict(data)


def test_event_from_dict_names_missing_fields_and_bad_enum_names() -> None:
    data = one_of_each()[3].to_dict()
    del data["reason"]
    with pytest.raises(ValueError, match="missing field"):
        event_from_dict(data)
    data = {**one_of_each()[3].to_dict(), "to_stage": "SPROUTING"}
    with pytest.raises(ValueError, match="not a SeedStage"):
        event_from_dict(data)


# ---------------------------------------------------------------- JSONL


def test_jsonl_round_trip_of_every_event(tmp_path: Path) -> None:
    path = tmp_path / "run" / "events.jsonl"  # parent created by the sink
    with Telemetry(TelemetryLevel.DEBUG, [JsonlSink(path)]) as telemetry:
        for event in one_of_each():
            telemetry.emit(event)
    assert read_events(path) == one_of_each()
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert list(first)[:2] == ["event", "time"]
    assert datetime.fromisoformat(first["time"]).utcoffset() is not None


def test_jsonl_flushes_every_event_before_close(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(path)
    try:
        sink.emit(one_of_each()[0])
        assert read_events(path) == one_of_each()[:1]
        sink.emit(one_of_each()[2])
        assert read_events(path) == [one_of_each()[0], one_of_each()[2]]
    finally:
        sink.close()
    sink.close()  # idempotent


def test_jsonl_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    for event in one_of_each()[:2]:
        sink = JsonlSink(path)
        sink.emit(event)
        sink.close()
    assert read_events(path) == one_of_each()[:2]


def test_jsonl_unwritable_path_gives_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("", encoding="utf-8")
    target = blocker / "run" / "events.jsonl"
    with pytest.raises(SinkError) as info:
        JsonlSink(target)
    message = str(info.value)
    assert "\n" not in message
    assert str(target) in message
    assert "is a file, not a directory" in message
    assert "choose another path" in message


def test_read_events_names_the_malformed_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    good = json.dumps(one_of_each()[0].to_dict())
    path.write_text(f"{good}\n\n{good}\n{{not json\n{good}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"events\.jsonl:4: malformed"):
        read_events(path)
    path.write_text(f'{good}\n["a list"]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r":2: .*expected a JSON object"):
        read_events(path)


def test_read_events_flags_a_truncated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    good = json.dumps(one_of_each()[0].to_dict())
    path.write_text(f"{good}\n{good[:20]}", encoding="utf-8")
    with pytest.raises(ValueError, match=r":2: .*truncated last line"):
        read_events(path)


# ---------------------------------------------------------------- console


def console_output(events: list[Event], *, show_epochs: bool = True) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=80, color_system=None)  # narrower than lines
    with Telemetry(TelemetryLevel.DEBUG, [ConsoleSink(console, show_epochs=show_epochs)]) as t:
        for event in events:
            t.emit(event)
    return buffer.getvalue()


def test_console_prints_one_line_per_event() -> None:
    assert len(console_output(one_of_each()).splitlines()) == len(one_of_each())


@pytest.mark.parametrize(
    ("index", "facts"),
    [
        (0, ["run-1", "cifar10", "heuristic"]),
        (1, ["epoch 12", "79.50", "GERMINATE r0c1 conv_light", "r0c1 BLENDING"]),
        (2, ["epoch 12", "germinate r0c1 conv_light", "2,336 params", "linear"]),
        (3, ["epoch 20", "r0c1 BLENDING -> PROBATIONARY"]),
        (4, ["epoch 25", "fossilized r0c1 conv_light", "+3.1 pp"]),
        (5, ["epoch 30", "culled r0c2 attention", "negative counterfactual", "automatic"]),
        (6, ["epoch 14", "G2", "r0c1", "failed", "trained 2/3 epochs"]),
        (7, ["epoch 40", "ROLLBACK", "val loss exploded", "restored epoch 38", "r0c1, r0c2"]),
        (8, ["epoch 12", "r0c1", "ratio 0.310", "vanishing 3"]),
        (9, ["50 epochs", "82.10", "83.00", "fossilized 1", "culled 2"]),
    ],
)
def test_console_lines_state_the_key_facts(index: int, facts: list[str]) -> None:
    event = one_of_each()[index]
    line = format_event(event)
    assert "\n" not in line
    for fact in facts:
        assert fact in line
    assert console_output([event]).strip() == line


def test_console_can_skip_epoch_lines() -> None:
    events = one_of_each()
    output = console_output(events, show_epochs=False)
    assert len(output.splitlines()) == len(events) - 1
    assert "GERMINATE r0c1 conv_light" not in output


def test_console_prints_rollbacks_in_red_and_escapes_nothing() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=300, color_system="truecolor", force_terminal=True)
    rollback = GovernorRollback(
        epoch=5, reason="loss [nan]", val_loss=math.nan, restored_epoch=4, culled_slots=()
    )
    ConsoleSink(console).emit(rollback)
    output = buffer.getvalue()
    assert "\x1b[1;31m" in output  # bold red
    assert "loss [nan]" in output  # reasons are text, not rich markup
