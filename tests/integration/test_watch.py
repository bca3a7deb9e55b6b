"""``esper watch`` driven the way a person uses it: Textual's pilot presses the keys while
the test writes the run's files, and every check reads what the screen shows."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import html
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

import esper
import esper.cli.watch
from esper.cli import main
from esper.config import RunConfig, to_dict
from esper.lifecycle import Gate, SeedStage
from esper.rl.training import resolve_train_config
from esper.rundir import MARKER
from esper.telemetry import (
    GateEvaluated,
    JsonlSink,
    SeedFossilized,
    SeedGerminated,
    SeedStageChanged,
)
from esper.telemetry.events import EpochCompleted, Event, SlotSnapshot, history_line
from esper.telemetry.updates import UpdateRow
from esper.watch.app import WatchApp, band_cells
from esper.watch.files import RUN_MARKER
from tests.commands import error_line

POLL = 0.05  # seconds between the app's reads of the files
SIZE = (140, 44)


# ---------------------------------------------------------------- reading the screen


def screen_text(app: WatchApp) -> str:
    """The characters on the screen, line by line, from the SVG screenshot Textual
    exports (its text elements sit at x = column x character width)."""
    svg = app.export_screenshot()
    pattern = (
        r'<text class="[^"]*" x="([\d.]+)" y="[\d.]+" textLength="([\d.]+)" '
        r'clip-path="url\(#terminal-\d+-line-(\d+)\)">(.*?)</text>'
    )
    width, height = app.size
    grid = [[" "] * width for _ in range(height)]
    for x, length, line, raw in re.findall(pattern, svg):
        text = html.unescape(raw).replace("\xa0", " ")
        column = round(float(x) / (float(length) / len(text))) if text else 0
        row = grid[int(line)]
        row[column : column + len(text)] = list(text)
    return "\n".join("".join(row).rstrip() for row in grid)


async def wait_for(pilot: Pilot[int], text: str, timeout: float = 20.0) -> str:
    """Let the app run until ``text`` is on the screen; returns the screen."""
    app = pilot.app
    assert isinstance(app, WatchApp)
    deadline = time.monotonic() + timeout  # a safety net, not a measurement
    screen = ""
    while time.monotonic() < deadline:
        screen = screen_text(app)
        if text in screen:
            return screen
        await pilot.pause(POLL)
    raise AssertionError(f"{text!r} never appeared; the screen shows:\n{screen}")


async def polls(pilot: Pilot[int], count: int = 4) -> str:
    """Let the app poll the files ``count`` times; returns the screen."""
    await pilot.pause(POLL * count)
    app = pilot.app
    assert isinstance(app, WatchApp)
    return screen_text(app)


def watch(path: Path, scenario: Callable[[Pilot[int]], Awaitable[None]]) -> WatchApp:
    """Run the live view on ``path`` in a headless terminal while ``scenario`` acts."""
    app = WatchApp(path, interval=POLL)

    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await scenario(pilot)

    asyncio.run(run())
    return app


# ---------------------------------------------------------------- a run being written

SLOTS = ("r0c0", "r0c1")
STAGES: dict[int, dict[str, tuple[str, float, float | None]]] = {
    # epoch: slot -> (stage, alpha, contribution)
    2: {"r0c1": ("TRAINING", 0.0, None)},
    3: {"r0c1": ("BLENDING", 0.5, 0.8)},
    4: {"r0c1": ("PROBATIONARY", 1.0, 1.6)},
    5: {"r0c1": ("FOSSILIZED", 1.0, 1.7), "r0c0": ("TRAINING", 0.0, None)},
    6: {"r0c1": ("FOSSILIZED", 1.0, None), "r0c0": ("BLENDING", 0.4, 0.2)},
}
ACTIONS = {2: "GERMINATE r0c1 conv_light", 4: "FOSSILIZE r0c1", 5: "GERMINATE r0c0 conv_heavy"}


def _row(epoch: int) -> EpochCompleted:
    stages = STAGES.get(epoch, STAGES[6] if epoch > 6 else {})
    slots = {}
    for slot in SLOTS:
        stage, alpha, contribution = stages.get(slot, ("DORMANT", 0.0, None))
        blueprint = (
            None if stage == "DORMANT" else ("conv_light" if slot == "r0c1" else "conv_heavy")
        )
        params = 0 if blueprint is None else 42
        slots[slot] = SlotSnapshot(SeedStage[stage], blueprint, alpha, contribution, params, 0.3)
    return EpochCompleted(
        epoch=epoch,
        train_loss=2.0 / epoch,
        train_accuracy=50.0 + 4 * epoch,
        val_loss=2.1 / epoch,
        val_accuracy=48.0 + 4 * epoch,
        action=ACTIONS.get(epoch, "WAIT"),
        outcome="applied",
        reason="accuracy plateaued" if epoch in ACTIONS else "host not yet stable",
        reward=0.0,
        rollback=None,
        host_params=496,
        seed_params=sum(s.params for s in slots.values()),
        seconds=2.0 * epoch,
        germinated=1 if epoch < 5 else 2,
        fossilized=1 if epoch >= 5 else 0,
        culled=0,
        slots=slots,
        train_flops=3e9,
        eval_flops=5e8,
        epoch_seconds=2.0,
    )


def _events(epoch: int) -> list[Event]:
    events: dict[int, list[Event]] = {
        2: [
            SeedGerminated(2, "r0c1", "seed1", "conv_light", "linear", 42),
            SeedStageChanged(
                2, "r0c1", "seed1", SeedStage.GERMINATED, SeedStage.TRAINING, "all checks passed"
            ),
        ],
        3: [
            GateEvaluated(
                3,
                "r0c1",
                "seed1",
                Gate.G2_START_BLENDING,
                False,
                (),
                ("gradient ratio 0.04 < 0.10",),
            ),
        ],
        5: [
            SeedFossilized(5, "r0c1", "seed1", "conv_light", 1.7, 42),
            SeedGerminated(5, "r0c0", "seed2", "conv_heavy", "linear", 308),
        ],
    }
    return events.get(epoch, [])


def start_run(path: Path, epochs: int = 10) -> None:
    """What a run writes before its first epoch: marker, configuration, empty history."""
    path.mkdir(parents=True, exist_ok=True)
    (path / RUN_MARKER).write_text(json.dumps({"run_id": "test", "created": "now"}) + "\n")
    config = RunConfig()
    config = dataclasses.replace(config, episode=dataclasses.replace(config.episode, epochs=epochs))
    (path / "config.json").write_text(json.dumps(to_dict(config), indent=2) + "\n")
    (path / "history.jsonl").write_text("")


def write_events(path: Path, epoch: int) -> None:
    sink = JsonlSink(path / "events.jsonl")
    for event in _events(epoch):
        sink.emit(event)
    sink.close()


def write_epochs(path: Path, *epochs: int) -> None:
    """Append whole epochs as the run does: events first, then the history row."""
    for epoch in epochs:
        write_events(path, epoch)
        with (path / "history.jsonl").open("a") as handle:
            handle.write(history_line(_row(epoch)) + "\n")


def test_the_marker_name_is_the_run_directorys() -> None:
    assert RUN_MARKER == MARKER  # kept apart only because esper.rundir imports torch


def test_it_follows_a_run_as_it_is_written_and_waits_for_a_half_written_line(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    start_run(run)

    async def scenario(pilot: Pilot[int]) -> None:
        await wait_for(pilot, "waiting for the first epoch of heuristic on digits")
        write_epochs(run, 1, 2)
        screen = await wait_for(pilot, "epoch 2/10")
        assert "epoch 2: GERMINATE r0c1 conv_light because accuracy plateaued" in screen
        assert "epoch 2  germinate r0c1 conv_light (42 params, linear blend)" in screen
        assert "GERMINATED -> TRAINING  (all checks passed)" in screen
        assert re.search(r"r0c1\s*│.*│ training conv_light", screen), screen
        assert "6 GFLOPs" in screen  # compute so far: two epochs of 3 GFLOPs
        # Half of epoch 3's row: the view keeps showing epoch 2 and says a line is coming.
        line = history_line(_row(3)) + "\n"
        with (run / "history.jsonl").open("a") as handle:
            handle.write(line[:40])
        screen = await wait_for(pilot, "a line is being written")
        assert "epoch 2/10" in screen and "epoch 3/10" not in screen
        write_events(run, 3)
        with (run / "history.jsonl").open("a") as handle:
            handle.write(line[40:])
        screen = await wait_for(pilot, "epoch 3/10")
        assert "a line is being written" not in screen
        assert "gate G2 r0c1 failed: gradient ratio 0.04 < 0.10" in screen, screen
        assert re.search(r"r0c1\s*│.*│ blending conv_light α0\.50 \+0\.8±0\.3 pp", screen), screen
        write_epochs(run, *range(4, 11))
        screen = await wait_for(pilot, "finished")
        assert "epoch 10/10" in screen and "fossilized r0c1 conv_light  +1.7 pp" in screen

    watch(run, scenario)


def test_keys_pause_pick_a_slot_and_quit(tmp_path: Path) -> None:
    run = tmp_path / "run"
    start_run(run)
    write_epochs(run, 1, 2, 3, 4, 5)

    async def scenario(pilot: Pilot[int]) -> None:
        await wait_for(pilot, "epoch 5/10")
        await pilot.press("p")
        await wait_for(pilot, "PAUSED")
        write_epochs(run, 6)
        screen = await polls(pilot)
        assert "epoch 5/10" in screen and "epoch 6/10" not in screen  # paused: not read
        await pilot.press("p")
        screen = await wait_for(pilot, "epoch 6/10")
        assert "PAUSED" not in screen
        # Pick r0c0: its band is marked and only its events are listed.
        assert "germinate r0c1" in screen and "germinate r0c0" in screen
        await pilot.press("right")
        screen = await wait_for(pilot, "slots: r0c0 picked")
        assert "▶r0c0" in screen and "r0c0 only" in screen
        assert "germinate r0c0 conv_heavy" in screen and "germinate r0c1" not in screen
        await pilot.press("right")
        screen = await wait_for(pilot, "slots: r0c1 picked")
        assert "germinate r0c1 conv_light" in screen and "germinate r0c0" not in screen
        await pilot.press("1")
        await wait_for(pilot, "slots: r0c0 picked")
        await pilot.press("0")
        screen = await polls(pilot, 1)
        assert "picked" not in screen and "germinate r0c1" in screen
        await pilot.press("q")

    app = watch(run, scenario)
    assert app.return_value == 0


def test_an_empty_directory_waits_until_the_run_starts(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()

    async def scenario(pilot: Pilot[int]) -> None:
        await wait_for(pilot, "is empty (a run that is starting?)")
        start_run(run)
        await wait_for(pilot, "waiting for the first epoch of heuristic on digits")
        write_epochs(run, 1)
        await wait_for(pilot, "epoch 1/10")

    watch(run, scenario)


def test_watching_takes_no_lock_and_writes_nothing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    start_run(run)
    write_epochs(run, 1, 2, 3)
    # The run holds its lock the whole time, as a real run does.
    lock = os.open(run / ".esper.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def snapshot() -> dict[str, tuple[int, int]]:
        return {
            str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in run.rglob("*")
        }

    before = snapshot()

    async def scenario(pilot: Pilot[int]) -> None:
        await wait_for(pilot, "epoch 3/10")
        await pilot.press("right")
        await polls(pilot)

    try:
        watch(run, scenario)
    finally:
        os.close(lock)
    assert snapshot() == before


# ---------------------------------------------------------------- a PPO training


def _update(update: int) -> UpdateRow:
    return UpdateRow(
        update=update,
        episodes=4 * update,
        mean_return=-1.0 + 0.25 * update,
        mean_final_accuracy=90.0 + update,
        mean_added_params=40.0,
        mean_seeds_kept=0.5,
        illegal_fraction=0.0,
        learning_rate=1e-3,
        policy_loss=-0.01,
        value_loss=0.5,
        entropy=1.9 - 0.1 * update,
        approx_kl=0.0123 * update,
        clip_fraction=0.05 * update,
        ratio_min=0.8,
        ratio_max=1.2,
        explained_variance=0.3,
        rollout_seconds=10.0,
        update_seconds=0.5,
    )


def test_it_shows_a_ppo_training_per_update(tmp_path: Path) -> None:
    out = tmp_path / "train"
    out.mkdir()
    config = resolve_train_config({}, {}, {"episodes": 16, "envs": 4})
    (out / "config.json").write_text(json.dumps(to_dict(config), indent=2) + "\n")
    (out / "updates.jsonl").write_text("")

    def append(update: int) -> None:
        with (out / "updates.jsonl").open("a") as handle:
            handle.write(_update(update).to_json() + "\n")

    async def scenario(pilot: Pilot[int]) -> None:
        await wait_for(pilot, "waiting for the first update of PPO on digits")
        append(1)
        append(2)
        screen = await wait_for(pilot, "update 2/4")
        for title in (
            "mean return",
            "mean final accuracy",
            "approx KL",
            "clip fraction",
            "entropy",
        ):
            assert title in screen, title
        assert re.search(r"approx KL\s+0\.0246", screen), screen
        assert re.search(r"clip fraction\s+0\.100", screen), screen
        assert re.search(r"entropy\s+1\.700", screen), screen
        assert "8/16 episodes" in screen
        assert "next slot" not in screen  # a training has no slots to pick
        append(3)
        append(4)
        await wait_for(pilot, "finished")

    watch(out, scenario)


# ---------------------------------------------------------------- a real run


def test_it_watches_a_real_run_without_disturbing_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = tmp_path / "early.json"
    config.write_text(json.dumps({"heuristic": {"start_epoch": 2, "min_epochs_left": 0}}))
    command = [sys.executable, "-m", "esper.cli", "heuristic", "--task", "digits"]
    flags = ["--epochs", "6", "--max-batches", "3", "--threads", "1", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(Path(esper.__file__).parents[1])}
    process = subprocess.Popen(
        [*command, *flags, "--config", str(config), "--out", str(run)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:

        async def scenario(pilot: Pilot[int]) -> None:
            screen = await wait_for(pilot, "finished", timeout=120)
            assert "heuristic on digits" in screen and "epoch 6/6" in screen
            assert "germinate r0c" in screen  # the early heuristic grew a seed

        watch(run, scenario)
        assert process.wait(timeout=60) == 0, process.stderr
    finally:
        process.kill()
        process.wait()


# ---------------------------------------------------------------- what it refuses


@pytest.fixture
def wide_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")


def _marked(path: Path, kind: str) -> None:
    """An Esper directory of ``kind`` that has written nothing else yet."""
    path.mkdir()
    marker = {"run_id": "test", "created": "now", "kind": kind}
    (path / RUN_MARKER).write_text(json.dumps(marker) + "\n")


def _history_replaced(path: Path, by: str) -> None:
    """A run whose history.jsonl is a directory, a link in a loop, or a link to nothing."""
    start_run(path)
    history = path / "history.jsonl"
    history.unlink()
    if by == "directory":
        history.mkdir()
    elif by == "loop":
        history.symlink_to(path / "other.jsonl")
        (path / "other.jsonl").symlink_to(history)
    else:
        history.symlink_to(path / "gone.jsonl")


@pytest.mark.usefixtures("wide_columns")
@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_text("x"), "is a file"),
        (lambda p: (p.mkdir(), (p / "notes.txt").write_text("x")), "is not a run directory"),
        (
            lambda p: (p.mkdir(), (p / "compare.json").write_text("{}")),
            "is an 'esper compare' directory",
        ),
        (lambda p: _marked(p, "compare"), "is an 'esper compare' directory"),
        (lambda p: _history_replaced(p, "directory"), "history.jsonl is not a file"),
        (lambda p: _history_replaced(p, "loop"), "Too many levels of symbolic links"),
        (lambda p: _history_replaced(p, "dead link"), "history.jsonl is a link to nothing"),
    ],
    ids=[
        *("missing", "file", "other", "compare", "marked-compare"),
        *("history-a-directory", "link-loop", "dead-link"),
    ],
)
def test_what_is_not_a_run_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Callable[[Path], Any], expected: str
) -> None:
    path = tmp_path / "thing"
    make(path)
    assert main(["watch", str(path)]) == 2
    assert expected in error_line(capsys)


@pytest.mark.usefixtures("wide_columns")
def test_without_the_extra_it_says_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    start_run(tmp_path / "run")
    monkeypatch.setattr(esper.cli.watch, "MISSING", "textual")
    assert main(["watch", str(tmp_path / "run")]) == 2
    assert "pip install 'esper[watch]'" in error_line(capsys)


def test_watching_imports_no_torch() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(esper.__file__).parents[1])}
    probe = (
        "import sys, esper.cli.watch, esper.watch.app\n"
        "from esper.cli import main\n"
        "main(['watch', '/nonexistent'])\n"
        "print('torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"


def test_bands_fit_any_width() -> None:
    assert band_cells(5, 30) == [e for e in range(1, 6) for _ in range(4)]
    assert band_cells(100, 30)[-1] == 100 and len(band_cells(100, 30)) == 30
    cells = band_cells(1000, 7)
    assert cells == sorted(cells) and len(cells) == 7
