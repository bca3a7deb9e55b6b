"""What ``esper watch`` reads: complete lines only, a rewritten file read anew, damaged
lines skipped, and directories told apart."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from esper.config import to_dict
from esper.rl.training import resolve_train_config
from esper.watch.files import (
    Kind,
    LineTail,
    NotARunError,
    RecordTail,
    TrainingFiles,
    classify,
)


def test_only_complete_lines_are_read_and_each_once(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    tail = LineTail(path)
    assert tail.read() == (False, [])  # not there yet
    path.write_text("one\ntw")
    assert tail.read() == (False, ["one"]) and tail.partial
    assert tail.read() == (False, [])
    with path.open("a") as handle:
        handle.write("o\nthree\n")
    assert tail.read() == (False, ["two", "three"]) and not tail.partial


def test_a_replaced_or_truncated_file_is_read_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text("1\n2\n3\n")
    tail = LineTail(path)
    assert tail.read() == (False, ["1", "2", "3"])
    # A resume rewrites the history atomically, keeping the epochs of its checkpoint.
    (tmp_path / "new").write_text("1\n2\n")
    os.replace(tmp_path / "new", path)
    assert tail.read() == (True, ["1", "2"])
    path.write_text("")  # a restarted training truncates its file
    assert tail.read() == (True, [])
    path.write_text("a\n")
    assert tail.read() == (False, ["a"])
    path.unlink()
    assert tail.read() == (True, [])


def test_damaged_lines_are_counted_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "numbers.jsonl"
    path.write_text('{"n": 1}\nnot json\n{"n": 2}\n')
    tail = RecordTail(path, lambda line: int(json.loads(line)["n"]))
    assert tail.refresh()
    assert tail.records == [1, 2] and tail.unreadable == 1
    assert not tail.refresh()


def test_directories_are_told_apart(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    assert classify(run) is Kind.EMPTY
    (run / ".esper-run").write_text("{}")
    assert classify(run) is Kind.RUN
    training = tmp_path / "training"
    training.mkdir()
    (training / "config.json").write_text(json.dumps({"run": {}, "ppo": {}}))
    assert classify(training) is Kind.TRAINING
    compare = tmp_path / "compare"
    (compare / "runs" / "heuristic" / "seed-0").mkdir(parents=True)
    with pytest.raises(NotARunError, match=r"esper watch .*runs/heuristic/seed-0"):
        classify(compare)


def test_the_planned_updates_are_the_trainings(tmp_path: Path) -> None:
    config = resolve_train_config({}, {}, {"episodes": 10, "envs": 4})
    (tmp_path / "config.json").write_text(json.dumps(to_dict(config)))
    files = TrainingFiles(tmp_path)
    assert files.refresh()
    assert files.planned_updates == config.updates == 3
    assert files.task == "digits" and files.epochs == config.run.episode.epochs
