"""``--tensorboard``: the run's and the training's own numbers, read back from the event
files with TensorBoard's reader, across a resume too; a missing package is one line."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import esper.run
from esper.cli import main
from esper.lifecycle import SeedStage
from esper.telemetry.report import read_history
from esper.telemetry.updates import read_updates

SHORT = ["--task", "digits", "--max-batches", "3", "--threads", "1", "--quiet"]
EARLY = {"heuristic": {"start_epoch": 2, "min_epochs_left": 0}}


def _board(directory: Path) -> EventAccumulator:
    board = EventAccumulator(str(directory / "tensorboard"))
    board.Reload()
    return board


def _scalars(board: EventAccumulator, tag: str) -> dict[int, float]:
    return {event.step: event.value for event in board.Scalars(tag)}


def _texts(board: EventAccumulator, tag: str) -> str:
    return " ".join(
        value.decode()
        for event in board.Tensors(f"{tag}/text_summary")
        for value in event.tensor_proto.string_val
    )


@pytest.fixture(scope="module")
def early(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "early.json"
    path.write_text(json.dumps(EARLY))
    return path


def _stop_after_checkpoint(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    real: Callable[..., None] = esper.run._save_checkpoint

    def save(directory: Any, built: Any, history: Any) -> None:
        real(directory, built, history)
        if built.runner.epoch == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(esper.run, "_save_checkpoint", save)


def test_a_run_writes_its_history_and_events_for_tensorboard(tmp_path: Path, early: Path) -> None:
    run = tmp_path / "run"
    flags = ["--epochs", "6", "--config", str(early), "--telemetry-level", "debug"]
    assert main(["heuristic", *SHORT, *flags, "--tensorboard", "--out", str(run)]) == 0
    rows = read_history(run / "history.jsonl")
    board = _board(run)
    assert _scalars(board, "accuracy/validation") == pytest.approx(
        {r.epoch: r.val_accuracy for r in rows}
    )
    assert _scalars(board, "loss/train") == pytest.approx({r.epoch: r.train_loss for r in rows})
    assert _scalars(board, "params/total") == {r.epoch: r.params for r in rows}
    assert _scalars(board, "compute/train_flops")[6] == pytest.approx(
        sum(r.train_flops for r in rows)
    )
    live = {sid for r in rows for sid, s in r.slots.items() if s.stage is not SeedStage.DORMANT}
    assert live, "the early heuristic grows a seed"
    for slot in live:
        assert _scalars(board, f"slots/{slot}/alpha") == {
            r.epoch: pytest.approx(r.slots[slot].alpha) for r in rows
        }
    tags = board.Tags()["scalars"]
    assert any(tag.startswith("gradients/") for tag in tags)  # debug telemetry
    lifecycle = _texts(board, "lifecycle")
    assert "germinate" in lifecycle and "gate G" in lifecycle
    assert "finished after 6 epochs" in _texts(board, "run")


@pytest.mark.parametrize("from_the_start", [True, False], ids=["throughout", "on-resume"])
def test_a_resumed_run_shows_exactly_its_history(
    tmp_path: Path, early: Path, monkeypatch: pytest.MonkeyPatch, from_the_start: bool
) -> None:
    # Stopped right after epoch 3's checkpoint, before the epoch reached TensorBoard
    # (or with no TensorBoard at all): the resumed run replays what its files hold.
    run = tmp_path / "run"
    _stop_after_checkpoint(monkeypatch, 3)
    flags = ["--epochs", "6", "--config", str(early)]
    flags += ["--tensorboard"] if from_the_start else []
    assert main(["baseline", *SHORT, *flags, "--out", str(run)]) == 130
    monkeypatch.undo()
    assert main(["baseline", "--resume", str(run), "--quiet", "--tensorboard"]) == 0
    rows = read_history(run / "history.jsonl")
    board = _board(run)
    assert sorted(_scalars(board, "accuracy/validation")) == [1, 2, 3, 4, 5, 6]
    assert _scalars(board, "accuracy/validation") == pytest.approx(
        {r.epoch: r.val_accuracy for r in rows}
    )
    totals = _scalars(board, "compute/eval_flops")
    assert totals[6] == pytest.approx(sum(r.eval_flops for r in rows))  # across the resume


def test_ppo_train_and_run_write_for_tensorboard(tmp_path: Path) -> None:
    out = tmp_path / "train"
    flags = ["--epochs", "6", "--episodes", "4", "--envs", "2", "--tensorboard"]
    assert main(["ppo", "train", *SHORT[:4], "--quiet", *flags, "--out", str(out)]) == 0
    updates = read_updates(out / "updates.jsonl")
    board = _board(out)
    names = ("mean_return", "mean_final_accuracy", "approx_kl", "approx_kl_last", "entropy")
    for name in (*names, "clip_fraction"):
        assert _scalars(board, f"ppo/{name}") == pytest.approx(
            {u.episodes: getattr(u, name) for u in updates}
        ), name
    run = tmp_path / "run"
    once = ["ppo", "run", "--policy", str(out), *SHORT, "--epochs", "3", "--tensorboard"]
    assert main([*once, "--out", str(run)]) == 0
    assert sorted(_scalars(_board(run), "accuracy/validation")) == [1, 2, 3]


def test_without_tensorboard_it_says_what_to_install_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    for command in (["heuristic", "--threads", "1"], ["ppo", "train"]):
        out = tmp_path / command[0]
        assert main([*command, *SHORT[:4], "--tensorboard", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "pip install 'esper[tensorboard]'" in err[0], err
        assert not out.exists()
