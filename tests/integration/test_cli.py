"""The ``esper`` command end to end, in-process: run directories, resume, errors, help."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import esper
import esper.run
from esper.cli import main
from esper.config import RunConfig, from_dict
from esper.controller import CONTROLLERS
from esper.lifecycle import LIVE_STAGES, SeedStage
from esper.rundir import read_checkpoint
from esper.telemetry import (
    EpochCompleted,
    GateEvaluated,
    RunFinished,
    RunStarted,
    SeedFossilized,
    SeedGerminated,
    SeedGradients,
    read_events,
)
from esper.telemetry.report import read_history
from esper.training.tasks import TASKS
from tests.commands import error_line

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_FILES = (
    "config.json",
    "events.jsonl",
    "history.jsonl",
    "checkpoint.pt",
    "summary.json",
    "timeline.png",
)
# Heuristic thresholds that germinate on epoch 2, so short runs hold a live seed.
EARLY = {"heuristic": {"start_epoch": 2, "min_epochs_left": 0}}
RESUME_EPOCHS = 12


def _write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def _history(run_dir: Path) -> list[dict[str, Any]]:
    """history.jsonl rows without the wall-clock column."""
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("seconds")
        row.pop("epoch_seconds")
    return rows


def _summary(run_dir: Path) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads((run_dir / "summary.json").read_text())
    return summary


def _checkpoint(run_dir: Path) -> dict[str, Any]:
    """The latest checkpoint (verified, loaded with weights_only=True): epoch and state."""
    checkpoint = read_checkpoint(run_dir / "checkpoint.pt")
    return {"epoch": checkpoint.epoch, **checkpoint.state}


def _heuristic(out: Path, *flags: str) -> int:
    return main(["heuristic", "--out", str(out), "--quiet", *flags])


def _early_run(out: Path, config: Path, epochs: int = RESUME_EPOCHS) -> int:
    return _heuristic(out, "--epochs", str(epochs), "--config", str(config))


def _stop_at(
    monkeypatch: pytest.MonkeyPatch, epoch: int, *, before_checkpoint: bool = False
) -> None:
    """Interrupt the run at ``epoch``: after its checkpoint, or (a crash) just before it."""
    real: Callable[..., None] = esper.run._save_checkpoint

    def save(directory: Any, built: Any, history: Any) -> None:
        stop = built.runner.epoch == epoch
        if stop and before_checkpoint:
            raise KeyboardInterrupt
        real(directory, built, history)
        if stop:
            raise KeyboardInterrupt

    monkeypatch.setattr(esper.run, "_save_checkpoint", save)


@pytest.fixture(scope="module")
def early_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_json(tmp_path_factory.mktemp("config") / "early.json", EARLY)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, early_config: Path) -> Path:
    """Run A of the resume tests: RESUME_EPOCHS epochs in one go (named ``run`` like B)."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert _early_run(out, early_config) == 0
    return out


@pytest.fixture
def wide_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wide console, so a test of the message's content is not a test of line wrapping."""
    monkeypatch.setenv("COLUMNS", "1000")


# ---------------------------------------------------------------- a run directory


def test_a_short_run_leaves_a_complete_run_directory(tmp_path: Path) -> None:
    out = tmp_path / "run"
    torch.set_num_threads(2)  # what torch would start with on two cores
    assert _heuristic(out, "--epochs", "4") == 0
    for name in RUN_FILES:
        assert (out / name).is_file(), name

    config = from_dict(RunConfig, json.loads((out / "config.json").read_text()))
    digits = TASKS.get("digits")
    assert (config.task, config.controller) == ("digits", "heuristic")
    assert config.batch_size == digits.batch_size  # resolved from the task, not the default
    assert config.episode.epochs == 4
    assert config.episode.optim == digits.optim
    # --threads auto (the default) chose one thread for the tiny digits host, and saved
    # the count so that a resume computes in the same order.
    assert config.threads == 1 and torch.get_num_threads() == 1

    events = read_events(out / "events.jsonl")
    assert isinstance(events[0], RunStarted) and events[0].task == "digits"
    assert isinstance(events[-1], RunFinished) and events[-1].epochs == 4
    assert [e.epoch for e in events if isinstance(e, EpochCompleted)] == [1, 2, 3, 4]

    rows = read_history(out / "history.jsonl")
    assert [r.epoch for r in rows] == [1, 2, 3, 4]
    summary = _summary(out)
    assert (summary["epochs"], summary["epochs_planned"]) == (4, 4)
    assert summary["final_accuracy"] == rows[-1].val_accuracy
    assert (out / "timeline.png").read_bytes()[:8] == PNG_MAGIC
    assert _checkpoint(out)["epoch"] == 4


@pytest.mark.usefixtures("wide_columns")
def test_the_default_run_grows_and_keeps_a_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["heuristic", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    summary = _summary(out)
    assert summary["epochs"] == TASKS.get("digits").epochs
    assert summary["seeds_germinated"] >= 1 and summary["seeds_fossilized"] >= 1
    assert summary["added_params"] > 0
    events = read_events(out / "events.jsonl")
    assert any(isinstance(e, SeedGerminated) for e in events)
    assert any(isinstance(e, SeedFossilized) for e in events)
    last = read_history(out / "history.jsonl")[-1]
    assert any(s.stage is SeedStage.FOSSILIZED for s in last.slots.values())


# ---------------------------------------------------------------- resume


def _assert_same_run(resumed: Path, reference: Path) -> None:
    assert _history(resumed) == _history(reference)
    mine, theirs = _checkpoint(resumed), _checkpoint(reference)
    assert mine["epoch"] == theirs["epoch"] == RESUME_EPOCHS
    model, expected = mine["runner"]["model"], theirs["runner"]["model"]
    assert model.keys() == expected.keys()
    for key, value in expected.items():  # tensors, and each slot's lifecycle record
        if isinstance(value, torch.Tensor):
            assert torch.equal(model[key], value), key
        else:
            assert model[key] == value, key
    assert any(isinstance(v, dict) and v["state"]["stage"] for v in model.values())
    assert mine["controller"] == theirs["controller"]
    summary, expected_summary = _summary(resumed), _summary(reference)
    summary.pop("wall_seconds")
    expected_summary.pop("wall_seconds")
    assert summary == expected_summary
    events = read_events(resumed / "events.jsonl")
    assert sum(isinstance(e, RunStarted) for e in events) == 1
    assert isinstance(events[-1], RunFinished) and events[-1].epochs == RESUME_EPOCHS
    epochs = [e.epoch for e in events if isinstance(e, EpochCompleted)]
    assert epochs == list(range(1, RESUME_EPOCHS + 1))


def test_the_reference_run_carries_a_live_seed_across_the_interruption(
    uninterrupted: Path,
) -> None:
    rows = _history(uninterrupted)
    assert rows[1]["action"].startswith("GERMINATE")  # epoch 2
    live = {s.name for s in LIVE_STAGES}
    for epoch in (6, 9):  # where the resume tests stop
        assert any(slot["stage"] in live for slot in rows[epoch - 1]["slots"].values()), epoch


@pytest.mark.usefixtures("wide_columns")  # the hint is one line to copy
def test_resume_after_an_interruption_matches_an_uninterrupted_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    early_config: Path,
    uninterrupted: Path,
) -> None:
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _stop_at(patch, 6)
        assert _early_run(out, early_config) == 130
    assert f"--resume {out}" in capsys.readouterr().out
    assert len(_history(out)) == 6 and _checkpoint(out)["epoch"] == 6

    assert main(["heuristic", "--resume", str(out), "--quiet"]) == 0
    _assert_same_run(out, uninterrupted)


def test_resume_after_a_crash_between_history_and_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, early_config: Path, uninterrupted: Path
) -> None:
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _stop_at(patch, 9, before_checkpoint=True)
        assert _early_run(out, early_config) == 130
    assert len(_history(out)) == 9 and _checkpoint(out)["epoch"] == 8  # one row ahead

    assert main(["heuristic", "--resume", str(out), "--quiet"]) == 0
    _assert_same_run(out, uninterrupted)


def test_resuming_a_finished_run_does_not_finish_it_twice(
    tmp_path: Path, uninterrupted: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    main(["heuristic", "--resume", str(run), "--quiet"])
    assert _history(run) == _history(uninterrupted)
    events = read_events(run / "events.jsonl")
    assert sum(isinstance(e, RunFinished) for e in events) == 1


# ---------------------------------------------------------------- bad input


def _existing_run(tmp_path: Path) -> list[str]:
    run = tmp_path / "old"
    run.mkdir()
    _write_json(run / "config.json", {})
    return ["heuristic", "--out", str(run)]


def _unwritable_out(tmp_path: Path) -> list[str]:
    (tmp_path / "file").write_text("a regular file")
    return ["heuristic", "--out", str(tmp_path / "file" / "run")]


def _unknown_key(tmp_path: Path) -> list[str]:
    config = _write_json(tmp_path / "c.json", {"episode": {"epochs": 2}, "bogus_key": 1})
    return ["heuristic", "--config", str(config), "--out", str(tmp_path / "r")]


def _nested_unknown_key(tmp_path: Path) -> list[str]:
    config = _write_json(tmp_path / "c.json", {"heuristic": {"start_epochs": 1}})
    return ["heuristic", "--config", str(config), "--out", str(tmp_path / "r")]


def _invalid_json(tmp_path: Path) -> list[str]:
    (tmp_path / "c.json").write_text('{"episode": {"epochs": 2,}}')
    return ["heuristic", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "r")]


def _not_a_run(tmp_path: Path) -> list[str]:
    (tmp_path / "empty").mkdir()
    return ["heuristic", "--resume", str(tmp_path / "empty")]


BAD_INPUTS: dict[str, tuple[Callable[[Path], list[str]], list[str]]] = {
    "unknown task": (
        lambda p: ["heuristic", "--task", "imagenet", "--out", str(p / "r")],
        ["'imagenet'", *TASKS.names()],
    ),
    "bad slot id": (
        lambda p: ["heuristic", "--slots", "r0c0", "r7c7", "--out", str(p / "r")],
        ["'r7c7'", "r0c0, r0c1, r0c2"],
    ),
    "malformed slot id": (
        lambda p: ["baseline", "--slots", "first", "--out", str(p / "r")],
        ["'first'", "r0c0, r0c1, r0c2"],
    ),
    "cifar10 without --data-dir": (
        lambda p: ["heuristic", "--task", "cifar10", "--out", str(p / "r")],
        ["CIFAR-10", "--data-dir", "cifar-10-batches-py", "train/<class>"],
    ),
    "text without --text-file": (
        lambda p: ["heuristic", "--task", "text", "--out", str(p / "r")],
        ["--text-file"],
    ),
    "unknown config key": (_unknown_key, ["bogus_key", "valid keys", "episode", "heuristic"]),
    "unknown nested config key": (
        _nested_unknown_key,
        ["start_epochs", "valid keys", "start_epoch", "max_growth_params"],
    ),
    "invalid JSON": (_invalid_json, ["c.json", "not valid JSON"]),
    "unwritable --out": (_unwritable_out, ["cannot write", "writable --out"]),
    "existing run as --out": (_existing_run, ["already holds a run", "--resume"]),
    "--resume on a non-run": (_not_a_run, ["not a run directory", "config.json"]),
    "--resume with --task": (
        lambda p: ["heuristic", "--resume", str(p), "--task", "digits"],
        ["--resume", "drop --task"],
    ),
    "epochs below 1": (
        lambda p: ["baseline", "--epochs", "0", "--out", str(p / "r")],
        ["epochs", "at least 1"],
    ),
}


@pytest.mark.usefixtures("wide_columns")
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_naming_the_fix(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_argv, needles = BAD_INPUTS[case]
    assert main(make_argv(tmp_path)) == 2
    line = error_line(capsys)
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"


def test_a_long_error_message_stays_on_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["heuristic", "--task", "imagenet", "--out", str(tmp_path / "r")]) == 2
    line = error_line(capsys)
    assert line.endswith("tinystories")


def _unknown_blueprint(tmp_path: Path) -> list[str]:
    config = _write_json(tmp_path / "c.json", {"heuristic": {"blueprints": ["mlp"]}})
    return ["heuristic", "--config", str(config), "--out", str(tmp_path / "r"), "--epochs", "1"]


BAD_VALUES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "CNN task with a transformer blueprint": (_unknown_blueprint, "conv_light"),
    "--batch-size 0": (
        lambda p: ["heuristic", "--batch-size", "0", "--out", str(p / "r"), "--epochs", "1"],
        "batch",
    ),
    "--max-batches 0": (
        lambda p: ["heuristic", "--max-batches", "0", "--out", str(p / "r"), "--epochs", "1"],
        "max_batches must be at least 1",
    ),
    "--max-val-batches 0": (
        lambda p: ["heuristic", "--max-val-batches", "0", "--out", str(p / "r"), "--epochs", "1"],
        "max_val_batches must be at least 1",
    ),
    "duplicate --slots": (
        lambda p: ["heuristic", "--slots", "r0c0", "r0c0", "--out", str(p / "r")],
        "r0c0",
    ),
}


@pytest.mark.usefixtures("wide_columns")
@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_more_bad_input_exits_2_without_a_traceback(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_argv, needle = BAD_VALUES[case]
    assert main(make_argv(tmp_path)) == 2
    assert needle in error_line(capsys)


@pytest.mark.usefixtures("wide_columns")
def test_a_failed_start_does_not_block_the_corrected_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["heuristic", "--task", "text", "--out", str(out), "--quiet"]) == 2
    error_line(capsys)
    text = tmp_path / "corpus.txt"
    text.write_text("to be, or not to be, that is the question. " * 60)
    argv = ["--task", "text", "--text-file", str(text), "--epochs", "1", "--max-batches", "1"]
    assert main(["heuristic", "--out", str(out), "--quiet", *argv]) == 0


# ---------------------------------------------------------------- help


COMMON_FLAGS = (
    "--task",
    "--epochs",
    "--max-batches",
    "--max-val-batches",
    "--seed",
    "--slots",
    "--max-seeds",
    "--device",
    "--compile",
    "--telemetry-level",
    "--out",
    "--config",
    "--resume",
)


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_lists_commands_and_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys)
    for command in ("heuristic", "baseline", "report"):
        assert re.search(rf"^\s+{command}\s", text, re.MULTILINE), command
    for task in TASKS.names():
        assert re.search(rf"^\s+{task}\s", text, re.MULTILINE), task


@pytest.mark.parametrize("command", [" ".join(s.command) for _, s in CONTROLLERS.items()])
def test_every_controller_has_a_command_with_every_common_flag(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # One registration in esper.controller gives a controller its command.
    text = _help(capsys, *command.split())
    for flag in (*COMMON_FLAGS, "--width-multiplier"):
        assert flag in text, flag
    needs_policy = any(s.needs_policy for _, s in CONTROLLERS.items() if s.command_line == command)
    assert ("--policy" in text) == needs_policy


@pytest.mark.parametrize(
    "argv",
    [["compare"], ["ppo", "train"], ["ppo", "eval"], ["ppo", "run"], ["watch"], ["report"]],
)
def test_help_texts_print_as_written(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, *argv)
    assert "%%" not in text and "%(" not in text


def test_report_help_names_the_run_directory(capsys: pytest.CaptureFixture[str]) -> None:
    assert "RUN_DIR" in _help(capsys, "report")


# What the command line must not load before it knows which command runs.
HEAVY = ("torch", "numpy", "matplotlib", "sklearn", "scipy", "gymnasium", "PIL")
_PROBE = """
import sys
from esper.cli import main
try:
    main(sys.argv[2:])
except SystemExit:
    pass
print(sorted({name.split(".")[0] for name in sys.modules} & set(sys.argv[1].split(","))))
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["heuristic", "--help"],
        ["compare", "--help"],
        ["ppo", "train", "--help"],
        ["watch", "--help"],
        ["heuristic", "--epochs", "many"],  # an argument error
        ["baseline", "--threads", "0"],
        ["fly"],  # an unknown command
    ],
)
def test_help_and_argument_errors_import_no_torch(argv: list[str]) -> None:
    # Start-up time without a clock: what the answer needed, not how long it took.
    env = {**os.environ, "PYTHONPATH": str(Path(esper.__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(HEAVY), *argv],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


def test_the_commands_import_no_compiler_and_no_unneeded_libraries() -> None:
    # Dynamo (--compile), scikit-learn (the digits data) and scipy (compare's intervals)
    # each cost up to a second to import; they load only where they are used.
    env = {**os.environ, "PYTHONPATH": str(Path(esper.__file__).parents[1])}
    probe = (
        "import sys, esper.cli.commands\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')"
        " or m == 'torch._dynamo'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout


def test_openmp_threads_wait_without_spinning() -> None:
    # The command sets OMP_WAIT_POLICY before torch loads its OpenMP runtime; GNU
    # OpenMP (torch's on Linux) then shows a spin count of 0 in its verbose settings.
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(esper.__file__).parents[1]),
        "OMP_DISPLAY_ENV": "VERBOSE",
    }
    env.pop("OMP_WAIT_POLICY", None)
    probe = "import esper.cli, torch; torch.ones(1)"
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    if "GOMP_SPINCOUNT" not in done.stderr:
        pytest.skip("torch's OpenMP runtime is not GNU OpenMP here")
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in done.stderr
    assert "GOMP_SPINCOUNT = '0'" in done.stderr


# ---------------------------------------------------------------- baseline


def test_baseline_never_germinates(tmp_path: Path, early_config: Path) -> None:
    # EARLY would make the heuristic germinate on epoch 2; the baseline ignores it.
    out = tmp_path / "run"
    flags = ["--epochs", "3", "--config", str(early_config)]
    assert main(["baseline", "--out", str(out), "--quiet", *flags]) == 0
    config = from_dict(RunConfig, json.loads((out / "config.json").read_text()))
    assert config.controller == "baseline"
    summary = _summary(out)
    assert (summary["seeds_germinated"], summary["added_params"]) == (0, 0)
    rows = read_history(out / "history.jsonl")
    assert [r.action for r in rows] == ["WAIT"] * 3
    assert all(s.stage is SeedStage.DORMANT for r in rows for s in r.slots.values())
    assert not any(isinstance(e, SeedGerminated) for e in read_events(out / "events.jsonl"))


def test_baseline_width_multiplier_grows_the_host(tmp_path: Path) -> None:
    params = {}
    for width in ("1", "2"):
        out = tmp_path / f"x{width}"
        argv = ["--epochs", "1", "--max-batches", "2", "--width-multiplier", width]
        assert main(["baseline", "--out", str(out), "--quiet", *argv]) == 0
        params[width] = _summary(out)["host_params"]
        assert json.loads((out / "config.json").read_text())["width_multiplier"] == float(width)
    assert params["2"] > params["1"] > 0


# ---------------------------------------------------------------- report


def test_report_rebuilds_summary_and_timeline(uninterrupted: Path, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(uninterrupted, run)
    expected = _summary(run)
    (run / "summary.json").unlink()
    (run / "timeline.png").unlink()
    assert main(["report", str(run)]) == 0
    assert _summary(run) == {**expected, "run": "copy"}
    assert (run / "timeline.png").read_bytes()[:8] == PNG_MAGIC


def test_report_works_on_an_interrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, early_config: Path
) -> None:
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _stop_at(patch, 3)
        assert _early_run(out, early_config, epochs=6) == 130
    assert not (out / "summary.json").exists()
    assert main(["report", str(out)]) == 0
    summary = _summary(out)
    assert (summary["epochs"], summary["epochs_planned"]) == (3, 6)
    assert summary["seeds_germinated"] == 2  # one per epoch from epoch 2
    assert (out / "timeline.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.usefixtures("wide_columns")
def test_report_on_a_non_run_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run directory" in error_line(capsys)


# ---------------------------------------------------------------- telemetry levels


@pytest.mark.parametrize("level", ["off", "lifecycle", "normal", "debug"])
def test_telemetry_level_filters_events_but_never_history(
    level: str, tmp_path: Path, early_config: Path
) -> None:
    out = tmp_path / "run"
    flags = ["--epochs", "3", "--max-batches", "4", "--config", str(early_config)]
    assert _heuristic(out, "--telemetry-level", level, *flags) == 0
    rows = read_history(out / "history.jsonl")
    assert [r.epoch for r in rows] == [1, 2, 3]
    assert rows[1].action.startswith("GERMINATE")  # a seed exists, so gates are evaluated
    kinds = {type(e) for e in read_events(out / "events.jsonl")}
    if level == "off":
        assert kinds == set()
        return
    assert {RunStarted, RunFinished, SeedGerminated} <= kinds
    assert (EpochCompleted in kinds) == (level in ("normal", "debug"))
    assert (GateEvaluated in kinds) == (level == "debug")
    assert (SeedGradients in kinds) == (level == "debug")
