"""Fault injection: each probe of an adversarial user, repeated against the real command.

Runs are short digits runs (8 epochs of 6 batches, a seed germinated on epoch 2). Where
a real process is needed (kill -9, two runs at once, signals, flock) the test forks the
test process, so the child starts without re-importing torch; only the start-up probe
spawns a fresh interpreter. Every resumed run must end exactly like the uninterrupted
reference: same history rows, checkpoint tensors, events and summary.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch

import esper
import esper.run
import esper.rundir
import esper.training.episode as episode_module
from esper.cli import main
from esper.config import EpisodeConfig, GovernorConfig, TrainingConfig
from esper.contracts import Decision
from esper.data import DataFormatError, load_cifar10, load_digits
from esper.lifecycle import LIVE_STAGES, FactoredAction, LifecycleConfig, LifecycleOp, SeedStage
from esper.model import MorphogeneticModel, build_host
from esper.rundir import (
    CHECKPOINT,
    LOCK,
    PREVIOUS_CHECKPOINT,
    RunDirectory,
    read_checkpoint,
)
from esper.telemetry import (
    EpochCompleted,
    GovernorRollback,
    MemorySink,
    RunFinished,
    RunStarted,
    SeedCulled,
    Telemetry,
    TelemetryLevel,
    read_events,
)
from esper.training.batches import SplitBatches
from esper.training.episode import NON_FINITE_SEED, EpisodeRunner, ScriptedController
from tests.commands import one_line
from tests.processes import fork, kill_on_replace, kill_self, wait_for

EPOCHS = 8
EARLY = {"heuristic": {"start_epoch": 2, "min_epochs_left": 0}}


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def early_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "early.json"
    path.write_text(json.dumps(EARLY))
    return path


def _argv(out: Path, config: Path, command: str = "heuristic") -> list[str]:
    flags = ["--epochs", str(EPOCHS), "--max-batches", "6", "--config", str(config)]
    return [command, "--out", str(out), "--quiet", *flags]


def _resume(out: Path, command: str = "heuristic") -> list[str]:
    return [command, "--resume", str(out), "--quiet"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, early_config: Path) -> Path:
    """The uninterrupted run every interrupted one must match (named ``run`` like them)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(_argv(out, early_config)) == 0
    return out


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    for row in rows:  # wall-clock columns differ between any two runs
        row.pop("seconds")
        row.pop("epoch_seconds", None)
    return rows


WALL_TIMES = ("seconds", "wall_seconds")
"""The fields of an epoch record that are the machine's, not the run's."""


def _assert_same_run(run_dir: Path, reference: Path) -> None:
    """Same history, checkpoint, events and summary as the uninterrupted reference."""
    assert _rows(run_dir) == _rows(reference)
    mine, theirs = read_checkpoint(run_dir / CHECKPOINT), read_checkpoint(reference / CHECKPOINT)
    assert mine.epoch == theirs.epoch == EPOCHS
    model, expected = mine.state["runner"]["model"], theirs.state["runner"]["model"]
    assert model.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(model[key], value), key
        else:
            assert model[key] == value, key
    records = [
        [{k: v for k, v in r.items() if k not in WALL_TIMES} for r in c.state["runner"]["records"]]
        for c in (mine, theirs)
    ]
    assert records[0] == records[1]
    assert mine.state["controller"] == theirs.state["controller"]
    events = read_events(run_dir / "events.jsonl")
    assert sum(isinstance(e, RunStarted) for e in events) == 1
    assert sum(isinstance(e, RunFinished) for e in events) == 1
    epochs = [e.epoch for e in events if isinstance(e, EpochCompleted)]
    assert epochs == list(range(1, EPOCHS + 1))
    summaries = [json.loads((d / "summary.json").read_text()) for d in (run_dir, reference)]
    for summary in summaries:
        summary.pop("wall_seconds")
    assert summaries[0] == summaries[1]
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Ctrl-C right after the checkpoint of ``epoch`` (in this process)."""
    real = esper.run._save_checkpoint

    def save(directory: Any, built: Any, history: Any) -> None:
        real(directory, built, history)
        if built.runner.epoch == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(esper.run, "_save_checkpoint", save)


def _interrupted(tmp_path: Path, config: Path, epoch: int = 5) -> Path:
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:
        _interrupt_at(patch, epoch)
        assert main(_argv(out, config)) == 130
    assert read_checkpoint(out / CHECKPOINT).epoch == epoch
    assert read_checkpoint(out / PREVIOUS_CHECKPOINT).epoch == epoch - 1
    return out


# ---------------------------------------------------------------- code execution


class _Payload:
    """Unpickling this creates ``marker``: proof that loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_a_malicious_checkpoint_never_runs_its_payload(
    tmp_path: Path,
    early_config: Path,
    reference: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = _interrupted(tmp_path, early_config)
    marker = tmp_path / "payload-ran"
    # A stealthy one: a well-formed checkpoint with the payload tucked into its state.
    genuine = torch.load(out / CHECKPOINT, weights_only=True)
    genuine["state"]["controller"]["penalties"] = _Payload(marker)
    torch.save(genuine, out / CHECKPOINT)
    capsys.readouterr()

    assert main(_resume(out)) == 0
    warning = one_line(capsys.readouterr().err)
    assert "skipped checkpoint.pt: unreadable" in warning and "checkpoint.prev.pt" in warning
    assert not marker.exists()
    _assert_same_run(out, reference)

    # Both generations malicious: refused, one line, payload never run.
    out = _interrupted(tmp_path / "again", early_config)
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        torch.save({"format": "esper-checkpoint", "state": _Payload(marker)}, out / name)
    capsys.readouterr()
    assert main(_resume(out)) == 2
    line = one_line(capsys.readouterr().err)
    assert "no usable checkpoint" in line and PREVIOUS_CHECKPOINT in line
    assert not marker.exists()


def _cifar_batch(n: int, seed: int) -> dict[bytes, Any]:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"batch",
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"{i}.png".encode() for i in range(n)],
    }


def _write_cifar(directory: Path, protocol: int, poisoned: Any = None) -> None:
    directory.mkdir(parents=True)
    batches = {f"data_batch_{i}": _cifar_batch(4, i) for i in range(1, 6)}
    batches["test_batch"] = _cifar_batch(4, 9)
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072}
    for name, content in [*batches.items(), ("batches.meta", meta)]:
        if poisoned is not None and name == "data_batch_3":
            content = {**content, b"labels": poisoned}
        (directory / name).write_bytes(pickle.dumps(content, protocol=protocol))


@pytest.mark.parametrize("protocol", [2, 5])
def test_the_cifar_reader_loads_genuine_pickles(tmp_path: Path, protocol: int) -> None:
    _write_cifar(tmp_path / "cifar-10-batches-py", protocol)  # 2: Python 2's cPickle form
    split = load_cifar10(tmp_path)
    sizes = [len(cast(Sized, part)) for part in (split.train, split.val, split.test)]
    assert sum(sizes[:2]) == 20 and sizes[1] > 0 and sizes[2] == 4


def test_a_malicious_cifar_pickle_never_runs_its_payload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "payload-ran"
    data = tmp_path / "data"
    _write_cifar(data / "cifar-10-batches-py", 4, poisoned=_Payload(marker))
    with pytest.raises(DataFormatError, match="refusing to load pathlib"):
        load_cifar10(data)
    argv = ["heuristic", "--task", "cifar10", "--data-dir", str(data), "--epochs", "1"]
    assert main([*argv, "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "not a CIFAR-10 python pickle" in one_line(capsys.readouterr().err)
    assert not marker.exists()


# ---------------------------------------------------------------- damaged checkpoints


def _flip_a_weight_bit(path: Path) -> None:
    """Change one bit of one weight and save the file again, keeping its checksum."""
    raw = torch.load(path, weights_only=True)
    weight = next(v for v in raw["state"]["runner"]["model"].values() if v.is_floating_point())
    weight.view(torch.int32).view(-1)[0] ^= 1
    torch.save(raw, path)


def _foreign(path: Path, tmp_path: Path, config: Path, command: str) -> None:
    """Replace ``path`` with the checkpoint of another run (same task and settings)."""
    other = tmp_path / "other"
    argv = _argv(other, config, command)
    argv[argv.index("--epochs") + 1] = "5"
    assert main(argv) == 0
    path.write_bytes((other / CHECKPOINT).read_bytes())


DAMAGE: dict[str, tuple[Callable[[Path, Path, Path], object], str]] = {
    "truncated": (lambda p, t, c: p.write_bytes(p.read_bytes()[:1000]), "unreadable"),
    "empty": (lambda p, t, c: p.write_bytes(b""), "unreadable"),
    "garbage": (lambda p, t, c: p.write_bytes(os.urandom(5000)), "unreadable"),
    "a flipped weight bit": (lambda p, t, c: _flip_a_weight_bit(p), "checksum mismatch"),
    "another run's": (lambda p, t, c: _foreign(p, t, c, "heuristic"), "belongs to another run"),
    "a baseline run's": (lambda p, t, c: _foreign(p, t, c, "baseline"), "another run"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(
    damage: str,
    tmp_path: Path,
    early_config: Path,
    reference: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = _interrupted(tmp_path, early_config)
    spoil, reason = DAMAGE[damage]
    spoil(out / CHECKPOINT, tmp_path, early_config)
    capsys.readouterr()
    assert main(_resume(out)) == 0
    warning = one_line(capsys.readouterr().err)
    assert f"skipped {CHECKPOINT}: " in warning and reason in warning
    assert f"continuing from {PREVIOUS_CHECKPOINT} (epoch 4)" in warning
    _assert_same_run(out, reference)


def test_raw_bit_flips_anywhere_never_change_the_result(
    tmp_path: Path, early_config: Path, reference: Path
) -> None:
    # A flipped byte lands in the zip structure (unreadable), in a tensor or key
    # (checksum), or in padding that nothing reads: either way the result is the same.
    out = _interrupted(tmp_path, early_config)
    pristine = {name: (out / name).read_bytes() for name in (CHECKPOINT, "history.jsonl")}
    size = len(pristine[CHECKPOINT])
    for offset in (100, size // 3, size // 2, 2 * size // 3, size - 100):
        run_dir = tmp_path / f"flip{offset}" / "run"
        shutil.copytree(out, run_dir)
        data = bytearray(pristine[CHECKPOINT])
        data[offset] ^= 0x10
        (run_dir / CHECKPOINT).write_bytes(bytes(data))
        assert main(_resume(run_dir)) == 0, offset
        _assert_same_run(run_dir, reference)


def test_both_generations_damaged_is_refused_in_one_line(
    tmp_path: Path, early_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _interrupted(tmp_path, early_config)
    (out / CHECKPOINT).write_bytes(b"")
    _flip_a_weight_bit(out / PREVIOUS_CHECKPOINT)
    history = (out / "history.jsonl").read_bytes()
    capsys.readouterr()
    assert main(_resume(out)) == 2
    line = one_line(capsys.readouterr().err)
    assert f"{CHECKPOINT}: unreadable" in line and f"{PREVIOUS_CHECKPOINT}: checksum" in line
    assert (out / "history.jsonl").read_bytes() == history  # nothing was rewritten


@pytest.mark.parametrize("edit", ["history.jsonl", "config.json"])
def test_a_checkpoint_that_disagrees_with_the_run_is_refused(
    edit: str, tmp_path: Path, early_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _interrupted(tmp_path, early_config)
    path = out / edit
    if edit == "history.jsonl":
        path.write_text(path.read_text().replace('"epoch": 2,', '"epoch": 2, "x": 1,', 1))
        needle = "history.jsonl's first"
    else:
        config = json.loads(path.read_text())
        config["episode"]["optim"]["host_lr"] = 0.5
        path.write_text(json.dumps(config))
        needle = "different configuration"
    files = {name: (out / name).read_bytes() for name in ("history.jsonl", "events.jsonl")}
    capsys.readouterr()
    assert main(_resume(out)) == 2
    assert needle in one_line(capsys.readouterr().err)
    assert {name: (out / name).read_bytes() for name in files} == files  # nothing rewritten


# ---------------------------------------------------------------- one directory, one run


def _pause_after_epoch(epoch: int, ready: Path, go: Path) -> Callable[[], None]:
    """A patch for a child: after the checkpoint of ``epoch``, wait for ``go``."""

    def patch() -> None:
        real = esper.run._save_checkpoint

        def save(directory: Any, built: Any, history: Any) -> None:
            real(directory, built, history)
            if built.runner.epoch == epoch:
                ready.touch()
                wait_for(go.exists)

        setattr(esper.run, "_save_checkpoint", save)  # noqa: B010

    return patch


@pytest.mark.parametrize("start", ["new runs", "resumes"])
def test_two_runs_on_one_directory_the_second_exits_2_naming_the_first(
    start: str, tmp_path: Path, early_config: Path, reference: Path
) -> None:
    if start == "resumes":
        out = _interrupted(tmp_path, early_config, epoch=3)
        argv = _resume(out)
    else:
        out = tmp_path / "run"
        argv = _argv(out, early_config)
    ready, go = tmp_path / "ready", tmp_path / "go"
    first = fork(argv, tmp_path / "first", _pause_after_epoch(4, ready, go))
    try:
        wait_for(ready.exists)  # the first run holds the lock, mid-run
        second = fork(argv, tmp_path / "second")
        assert second.wait() == 2
        line = one_line(second.stderr)
        assert f"{out} is in use by another Esper run (pid {first.pid} on " in line
        assert "pick another --out" in line
    finally:
        go.touch()
    assert first.wait() == 0, first.stderr
    _assert_same_run(out, reference)  # every epoch once, nothing doubled


# ---------------------------------------------------------------- kill -9, then resume


def _kill_in_epoch(epoch: int, after_batches: int = 2) -> Callable[[], None]:
    """Patch: SIGKILL in the middle of training epoch ``epoch`` (counted in this process)."""

    def patch() -> None:
        real = getattr(episode_module, "train_one_epoch")  # noqa: B009 - not re-exported
        calls = [0]

        def train(model: Any, loader: Iterable[Any], *args: Any, **kwargs: Any) -> Any:
            calls[0] += 1

            def batches() -> Iterator[Any]:
                for index, batch in enumerate(loader):
                    if calls[0] == epoch and index == after_batches:
                        kill_self()
                    yield batch

            return real(model, batches(), *args, **kwargs)

        setattr(episode_module, "train_one_epoch", train)  # noqa: B010

    return patch


def _kill_before_checkpoint(epoch: int) -> Callable[[], None]:
    """Patch: SIGKILL after the history row of ``epoch``, before its checkpoint."""

    def patch() -> None:
        real = esper.run._save_checkpoint

        def save(directory: Any, built: Any, history: Any) -> None:
            if built.runner.epoch == epoch:
                kill_self()
            real(directory, built, history)

        setattr(esper.run, "_save_checkpoint", save)  # noqa: B010

    return patch


KILL_POINTS: dict[str, Callable[[], None]] = {
    "during epoch 1 (no checkpoint yet)": _kill_in_epoch(1),
    "during epoch 5 (a seed is training)": _kill_in_epoch(5),
    "between the history row and the checkpoint": _kill_before_checkpoint(6),
    "with the new checkpoint written, not yet renamed": kill_on_replace(CHECKPOINT, 4),
    "while keeping the previous generation": kill_on_replace(PREVIOUS_CHECKPOINT, 3),
    "after the last checkpoint, before the summary": kill_on_replace("summary.json"),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_then_resume_gives_the_uninterrupted_result(
    point: str, tmp_path: Path, early_config: Path, reference: Path
) -> None:
    out = tmp_path / "run"
    child = fork(_argv(out, early_config), tmp_path / "child", KILL_POINTS[point])
    assert child.wait() == -signal.SIGKILL, child.stderr
    holder = json.loads((out / LOCK).read_text())
    assert holder["pid"] == child.pid  # a stale lock: its process is gone
    if not (out / CHECKPOINT).exists() or read_checkpoint(out / CHECKPOINT).epoch < EPOCHS:
        assert main(_resume(out)) == 0
    else:  # every epoch was saved: nothing to resume, the report is rebuilt instead
        assert main(_resume(out)) == 2
        assert main(["report", str(out)]) == 0
    _assert_same_run(out, reference)
    assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()  # taken over


@pytest.mark.parametrize("after", [False, True], ids=["before its rename", "after its rename"])
def test_kill_9_during_the_history_rewrite_of_a_resume(
    after: bool, tmp_path: Path, early_config: Path, reference: Path
) -> None:
    out = tmp_path / "run"
    crash = fork(_argv(out, early_config), tmp_path / "crash", _kill_before_checkpoint(6))
    assert crash.wait() == -signal.SIGKILL
    assert len(_rows(out)) == 6 and read_checkpoint(out / CHECKPOINT).epoch == 5
    rewrite = fork(
        _resume(out), tmp_path / "rewrite", kill_on_replace("history.jsonl", 1, after=after)
    )
    assert rewrite.wait() == -signal.SIGKILL
    assert len(_rows(out)) == (5 if after else 6)  # the old file or the new one, whole
    assert main(_resume(out)) == 0
    _assert_same_run(out, reference)


def test_sigterm_stops_like_ctrl_c_and_the_run_resumes(
    tmp_path: Path, early_config: Path, reference: Path
) -> None:
    out = tmp_path / "run"

    def terminate_after_epoch_3() -> None:
        real = esper.run._save_checkpoint

        def save(directory: Any, built: Any, history: Any) -> None:
            real(directory, built, history)
            if built.runner.epoch == 3:
                os.kill(os.getpid(), signal.SIGTERM)

        setattr(esper.run, "_save_checkpoint", save)  # noqa: B010

    child = fork(_argv(out, early_config), tmp_path / "child", terminate_after_epoch_3)
    assert child.wait() == 128 + signal.SIGTERM
    assert f"interrupted; continue with: esper heuristic --resume {out}" in child.stdout
    assert "Traceback" not in child.stderr
    assert main(_resume(out)) == 0
    _assert_same_run(out, reference)


def _wait_for_startup_handlers(pid: int, timeout: float = 60.0) -> None:
    """Until the process catches SIGTERM (Linux: /proc/PID/status SigCgt), which esper's
    CLI arranges before its slow imports; a fixed sleep races a loaded machine."""
    deadline = time.monotonic() + timeout
    bit = 1 << (signal.SIGTERM - 1)
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
        if int(caught.split()[1], 16) & bit:
            return
        time.sleep(0.01)
    raise AssertionError("the CLI never installed its start-up signal handlers")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_start_up_imports_is_one_line(tmp_path: Path, signum: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(esper.__file__).parents[1])}
    argv = [sys.executable, "-m", "esper.cli", "heuristic", "--epochs", "1"]
    process = subprocess.Popen(
        [*argv, "--out", str(tmp_path / "run")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_startup_handlers(process.pid)  # then torch takes seconds to import
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum
    assert "Traceback" not in stdout + stderr
    assert len(stderr.strip().splitlines()) <= 1, stderr


def test_orphaned_temporary_files_are_removed(tmp_path: Path, early_config: Path) -> None:
    out = _interrupted(tmp_path, early_config, epoch=EPOCHS - 1)
    for name in (".checkpoint-abc123.tmp", ".esper-checkpoint.pt-0123.tmp"):
        (out / name).write_bytes(b"left by a killed run")
    assert main(_resume(out)) == 0
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- a full disk


def test_a_full_disk_stops_in_one_line_with_the_last_checkpoint_intact(
    tmp_path: Path,
    early_config: Path,
    reference: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "run"
    real = esper.rundir._write_temporary
    checkpoints = [0]

    def write(directory: Path, data: bytes, stem: str) -> Path:
        checkpoints[0] += stem == CHECKPOINT
        if checkpoints[0] >= 4:  # the disk fills while epoch 4's checkpoint is written
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(directory, data, stem)

    with monkeypatch.context() as patch:
        patch.setattr(esper.rundir, "_write_temporary", write)
        assert main(_argv(out, early_config)) == 1
    line = one_line(capsys.readouterr().err)
    assert f"cannot write to {out} (the disk is full)" in line
    assert "its checkpoint of epoch 3 is intact" in line
    assert f"esper heuristic --resume {out}" in line
    assert read_checkpoint(out / CHECKPOINT).epoch == 3
    assert main(_resume(out)) == 0
    _assert_same_run(out, reference)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs of its own (mounting needs root, as in CI), so it can be filled."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(disk: Path) -> Path:
    """Write zeros to ``disk`` until it is full; returns the filler file."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as handle:
        block = bytes(4096)
        try:
            while True:
                handle.write(block)
        except OSError as error:
            assert error.errno == errno.ENOSPC
    return filler


def test_a_really_full_disk_then_room_made_resumes_exactly(
    small_disk: Path, tmp_path: Path, early_config: Path, reference: Path
) -> None:
    out = small_disk / "run"
    ready, go = tmp_path / "ready", tmp_path / "go"
    child = fork(_argv(out, early_config), tmp_path / "child", _pause_after_epoch(3, ready, go))
    try:
        wait_for(ready.exists)
        filler = _fill(small_disk)  # the disk fills up while the run is on epoch 4
    finally:
        go.touch()
    assert child.wait() == 1
    line = one_line(child.stderr)
    assert f"cannot write to {out} (the disk is full); its checkpoint of epoch 3" in line
    assert f"esper heuristic --resume {out}" in line
    assert read_checkpoint(out / CHECKPOINT).epoch == 3
    filler.unlink()
    assert main(_resume(out)) == 0
    _assert_same_run(out, reference)


# ---------------------------------------------------------------- the governor


def _poison_host_from(epoch: int) -> Callable[..., Any]:
    real = getattr(episode_module, "train_one_epoch")  # noqa: B009 - not re-exported
    calls = [0]

    def train(model: MorphogeneticModel, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        metrics = real(model, *args, **kwargs)
        if calls[0] >= epoch:
            with torch.no_grad():
                next(iter(model.get_host_parameters())).fill_(float("nan"))
        return metrics

    return train


def test_a_persistent_fault_stops_after_k_rollbacks_with_the_last_checkpoint_intact(
    tmp_path: Path,
    early_config: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "run"
    monkeypatch.setattr(episode_module, "train_one_epoch", _poison_host_from(3))
    assert main(_argv(out, early_config)) == 1
    line = one_line(capsys.readouterr().err)
    limit = GovernorConfig().max_consecutive_rollbacks
    assert (
        f"rolled back {limit} epochs in a row (epoch {2 + limit}: validation loss is nan)" in line
    )
    assert f"checkpoint of epoch {1 + limit} is intact" in line and "esper report" in line
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == list(range(1, 2 + limit))
    assert [bool(r["rollback"]) for r in rows] == [False, False] + [True] * (limit - 1)
    checkpoint = read_checkpoint(out / CHECKPOINT)
    assert checkpoint.epoch == 1 + limit
    weights = checkpoint.state["runner"]["model"].values()
    assert all(torch.isfinite(w).all() for w in weights if isinstance(w, torch.Tensor))
    # Seeds germinated after the end of epoch 2 vanished with each rollback: culled.
    for row in rows:
        live = sum(s["stage"] in LIVE for s in row["slots"].values())
        assert row["germinated"] == row["fossilized"] + row["culled"] + live, row["epoch"]
    assert rows[-1]["culled"] >= 2
    assert main(["report", str(out)]) == 0


def _runner(lifecycle: LifecycleConfig, telemetry: Telemetry, epochs: int) -> EpisodeRunner:
    torch.manual_seed(0)
    model = MorphogeneticModel(build_host("cnn_digits"), lifecycle=lifecycle)
    data = SplitBatches(load_digits(), batch_size=64, seed=0)
    config = EpisodeConfig(
        epochs=epochs, training=TrainingConfig(max_batches=4), lifecycle=lifecycle
    )
    return EpisodeRunner(model, data, config, telemetry)


class _Saboteur:
    """Plays ``schedule``; at each epoch in ``poison`` fills a parameter with NaN."""

    def __init__(
        self,
        runner: EpisodeRunner,
        schedule: dict[int, FactoredAction],
        poison: dict[int, Callable[[EpisodeRunner], torch.Tensor]],
    ) -> None:
        self.runner, self.scripted, self.poison = runner, ScriptedController(schedule), poison

    def decide(self, signals: Any, slots: Any) -> Decision:
        target = self.poison.get(signals.epoch)
        if target is not None:
            with torch.no_grad():
                target(self.runner).fill_(float("nan"))
        return self.scripted.decide(signals, slots)


def _host_weight(runner: EpisodeRunner) -> torch.Tensor:
    return runner.model.get_host_parameters()[0]


def _seed_weight(runner: EpisodeRunner) -> torch.Tensor:
    return runner.model.get_seed_parameters("r0c0")[0]


def _counts_add_up(runner: EpisodeRunner) -> bool:
    live = sum(1 for s in runner.model.slots() if s.state.live)
    return runner.germinated == runner.fossilized + runner.culled + live


FAST = LifecycleConfig(
    min_training_epochs=1, min_gradient_ratio=0.0, blending_steps=1, min_blending_epochs=1
)
GERMINATE = FactoredAction(LifecycleOp.GERMINATE, "r0c0", "conv_light")
LIVE = {stage.name for stage in LIVE_STAGES}


def _play(runner: EpisodeRunner, controller: _Saboteur) -> None:
    while not runner.done:
        observation = runner.observe()
        runner.apply(controller.decide(observation.signals, observation.slots))
        assert _counts_add_up(runner), runner.epoch


def test_a_seed_younger_than_the_snapshot_is_counted_as_culled() -> None:
    # The snapshot of epoch 2 is taken before epoch 2's decision germinates the seed;
    # the host is poisoned at the same decision, so epoch 3 restores a model in which
    # the seed never existed. It must still be counted, as culled.
    sink = MemorySink()
    runner = _runner(FAST, Telemetry(TelemetryLevel.LIFECYCLE, [sink]), epochs=5)
    _play(runner, _Saboteur(runner, {2: GERMINATE}, {2: _host_weight}))
    (rollback,) = sink.of_type(GovernorRollback)
    assert (rollback.epoch, rollback.restored_epoch, rollback.culled_slots) == (3, 2, ("r0c0",))
    (culled,) = sink.of_type(SeedCulled)
    assert (culled.epoch, culled.reason, culled.automatic) == (3, "governor rollback", True)
    assert (runner.germinated, runner.fossilized, runner.culled) == (1, 0, 1)
    assert runner.records[2].stages["r0c0"] is SeedStage.DORMANT  # as in the snapshot


class _Fossilizer(_Saboteur):
    """Also marks the seed as clearly helpful at ``epoch``, so FOSSILIZE passes G5."""

    def decide(self, signals: Any, slots: Any) -> Decision:
        if signals.epoch == 5:
            self.runner.model.slot("r0c0").record(contribution=5.0)
        return super().decide(signals, slots)


def test_a_fossil_undone_by_a_rollback_is_counted_as_culled_once() -> None:
    # The seed is on probation in epoch 5's snapshot, fossilized by epoch 5's decision,
    # and the host poisoned by it: epoch 6 restores the seed on probation and culls it.
    sink = MemorySink()
    runner = _runner(FAST, Telemetry(TelemetryLevel.LIFECYCLE, [sink]), epochs=7)
    fossilize = FactoredAction(LifecycleOp.FOSSILIZE, "r0c0")
    controller = _Fossilizer(runner, {2: GERMINATE, 5: fossilize}, {5: _host_weight})
    _play(runner, controller)
    assert runner.records[4].outcome == "applied"
    assert runner.records[4].stages["r0c0"] is SeedStage.FOSSILIZED
    (rollback,) = sink.of_type(GovernorRollback)
    assert (rollback.epoch, rollback.restored_epoch, rollback.culled_slots) == (6, 5, ("r0c0",))
    assert len(sink.of_type(SeedCulled)) == 1
    assert (runner.germinated, runner.fossilized, runner.culled) == (1, 0, 1)


def test_a_nan_training_seed_is_culled_alone_and_the_host_is_untouched() -> None:
    sink = MemorySink()
    grown = _runner(LifecycleConfig(), Telemetry(TelemetryLevel.LIFECYCLE, [sink]), epochs=5)
    bare = _runner(LifecycleConfig(), Telemetry.off(), epochs=5)
    controller = _Saboteur(grown, {1: GERMINATE}, {2: _seed_weight})
    waiting = ScriptedController({})
    for epoch in range(1, 6):
        observed = grown.observe()
        if epoch == 2:
            assert grown.model.slot("r0c0").stage is SeedStage.TRAINING
        grown.apply(controller.decide(observed.signals, observed.slots))
        bare_observed = bare.observe()
        bare.apply(waiting.decide(bare_observed.signals, bare_observed.slots))
        # The host never saw the seed: its weights and validation loss are bit-identical.
        assert observed.signals.val_loss == bare_observed.signals.val_loss, epoch
        for mine, theirs in zip(
            grown.model.get_host_parameters(), bare.model.get_host_parameters(), strict=True
        ):
            assert torch.equal(mine, theirs), epoch
    (culled,) = sink.of_type(SeedCulled)
    assert (culled.epoch, culled.reason, culled.automatic) == (3, NON_FINITE_SEED, True)
    assert sink.of_type(GovernorRollback) == []
    assert all(r.rollback is None for r in grown.records)
    assert (grown.germinated, grown.culled) == (1, 1)


# ---------------------------------------------------------------- bad input: one line


def _existing_directory(tmp_path: Path) -> list[str]:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"precious")
    return ["heuristic", "--out", str(tmp_path / "photos")]


def _baseline_resumed_as_heuristic(tmp_path: Path) -> list[str]:
    argv = ["baseline", "--out", str(tmp_path / "b"), "--epochs", "2", "--max-batches", "1"]
    assert main([*argv, "--quiet"]) == 0
    return ["heuristic", "--resume", str(tmp_path / "b")]


def _config(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "c.json").write_text(text)
    return ["heuristic", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "r")]


BAD_INPUT: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "--width-multiplier inf": (
        lambda p: ["baseline", "--width-multiplier", "inf", "--out", str(p / "r")],
        "width_multiplier must be a finite number, got inf",
    ),
    "--width-multiplier nan": (
        lambda p: ["baseline", "--width-multiplier", "nan", "--out", str(p / "r")],
        "width_multiplier must be a finite number, got nan",
    ),
    "--seed 99999999999999999999999": (
        lambda p: ["heuristic", "--seed", "99999999999999999999999", "--out", str(p / "r")],
        "seed must be in 0..4294967295",
    ),
    "--seed abc": (
        lambda p: ["heuristic", "--seed", "abc", "--out", str(p / "r")],
        "invalid int value: 'abc' (see: esper heuristic --help)",
    ),
    '--out ""': (lambda p: ["heuristic", "--out", ""], "--out is empty"),
    "--out on a directory that is not a run": (
        _existing_directory,
        "is not empty and is not an Esper run directory (it holds holiday.jpg)",
    ),
    "--resume of a baseline run with esper heuristic": (
        _baseline_resumed_as_heuristic,
        "is an 'esper baseline' run; continue it with: esper baseline --resume",
    ),
    "a NaN learning rate": (
        lambda p: _config(p, '{"episode": {"optim": {"seed_lr": NaN}}}'),
        "optim.seed_lr must be a finite number, got nan",
    ),
    "an infinite clip norm": (
        lambda p: _config(p, '{"episode": {"training": {"max_grad_norm": Infinity}}}'),
        "training.max_grad_norm must be a finite number, got inf",
    ),
    "a NaN governor threshold": (
        lambda p: _config(p, '{"episode": {"governor": {"collapse_drop": NaN}}}'),
        "governor.collapse_drop must be a finite number, got nan",
    ),
    "a NaN gate threshold": (
        lambda p: _config(p, '{"episode": {"lifecycle": {"min_gradient_ratio": NaN}}}'),
        "lifecycle.min_gradient_ratio must be a finite number",
    ),
    "an overflowing heuristic threshold": (
        lambda p: _config(p, '{"heuristic": {"penalty_threshold": 1e999}}'),
        "heuristic.penalty_threshold must be a finite number, got inf",
    ),
    "zero rollbacks allowed": (
        lambda p: _config(p, '{"episode": {"governor": {"max_consecutive_rollbacks": 0}}}'),
        "max_consecutive_rollbacks must be at least 1",
    ),
    "a negative learning rate": (
        lambda p: _config(p, '{"episode": {"optim": {"host_lr": -0.1}}}'),
        "host_lr must be >= 0, got -0.1",
    ),
    "a momentum of 1 or more": (
        lambda p: _config(p, '{"episode": {"optim": {"momentum": 1.5}}}'),
        "momentum must be in [0, 1), got 1.5",
    ),
    "a negative weight decay": (
        lambda p: _config(p, '{"episode": {"optim": {"weight_decay": -1}}}'),
        "weight_decay must be >= 0, got -1.0",
    ),
    "a decision split of all the training data": (
        lambda p: _config(p, '{"decision_fraction": 1.0}'),
        "decision_fraction must be in (0, 1), got 1.0",
    ),
    "a growth kind that does not exist": (
        lambda p: _config(p, '{"heuristic": {"growth": "sideways"}}'),
        "growth",
    ),
    "a non-UTF-8 config file": (
        lambda p: _config(p, "") and _bytes(p / "c.json", b"\xff\xfe{}"),
        "is not UTF-8 text",
    ),
    "--slots naming the same slot twice": (
        lambda p: ["heuristic", "--slots", "r0c1", "r0c1", "--out", str(p / "r")],
        "slots lists a slot twice",
    ),
}


def _bytes(path: Path, data: bytes) -> list[str]:
    path.write_bytes(data)
    return ["heuristic", "--config", str(path), "--out", str(path.parent / "r")]


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    case: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")
    monkeypatch.chdir(tmp_path)
    make_argv, needle = BAD_INPUT[case]
    argv = make_argv(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    capsys.readouterr()
    try:
        code: object = main(argv)
    except SystemExit as exit_:  # argparse's own checks (a malformed number)
        code = exit_.code
    assert code == 2
    assert needle in one_line(capsys.readouterr().err)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_report_ignores_a_half_written_last_line(
    tmp_path: Path, early_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _interrupted(tmp_path, early_config, epoch=4)
    with (out / "history.jsonl").open("a") as history:
        history.write('{"epoch": 5, "train_loss": 0.3')  # the crash cut the line here
    assert main(["report", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["epochs"] == 4
    # A damaged line in the middle is an error, in one line.
    lines = (out / "history.jsonl").read_text().splitlines()
    lines[1] = lines[1][:40]
    (out / "history.jsonl").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    assert "history.jsonl:2: not a history row" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\xff\xfe{}", "is not UTF-8 text"),
        (b"[" * 100_000, "is not valid JSON"),
        (b'{"task": "digits", "episode": {"epochs": "many"}}', "expected int, got 'many'"),
    ],
    ids=["not-utf8", "deep", "wrong-type"],
)
def test_report_on_a_damaged_config_is_one_line(
    tmp_path: Path,
    early_config: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes,
    expected: str,
) -> None:
    out = _interrupted(tmp_path, early_config, epoch=2)
    (out / "config.json").write_bytes(content)
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    assert expected in one_line(capsys.readouterr().err)


def test_a_directory_is_created_only_through_its_lock(tmp_path: Path) -> None:
    # Esper's own directory, created by a run that failed before it wrote its config,
    # may be reused; the lock is exclusive while held, even within one process.
    with RunDirectory.create(tmp_path / "run") as directory:
        assert (tmp_path / "run" / ".esper-run").is_file()
        with pytest.raises(esper.rundir.RunError, match=f"pid {os.getpid()}"):
            RunDirectory.create(tmp_path / "run")
        run_id = directory.run_id
    with RunDirectory.create(tmp_path / "run") as again:
        assert again.run_id == run_id


def test_the_readme_guarantees_are_the_ones_tested_here() -> None:
    root = Path(__file__).resolve().parents[2]
    assert "(docs/guarantees.md)" in (root / "README.md").read_text()
    page = (root / "docs" / "guarantees.md").read_text()
    table = page.split("<!-- guarantees -->")[1].split("<!-- /guarantees -->")[0]
    named = re.findall(r"`(test_\w+)`", table)
    # Every test the table names is one of tests/integration/, against the real command.
    here = {
        node.name
        for module in Path(__file__).parent.glob("test_*.py")
        for node in ast.walk(ast.parse(module.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }
    assert named and set(named) <= here, set(named) - here
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`test_" in line]
    assert all(re.search(r"`test_\w+`", row) for row in rows)
    assert "max_consecutive_rollbacks" in page


def test_one_kind_of_esper_directory_never_writes_into_another(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A run's --out on a compare's directory (or the reverse) is refused in one line.
    with RunDirectory.create(tmp_path / "compare", kind="compare"):
        pass
    assert main(["heuristic", "--epochs", "1", "--out", str(tmp_path / "compare")]) == 2
    assert "'ppo eval' directory, not a run" in one_line(capsys.readouterr().err)
    assert sorted(p.name for p in (tmp_path / "compare").iterdir()) == [".esper-run", ".esper.lock"]
    with RunDirectory.create(tmp_path / "run"):
        pass
    with pytest.raises(esper.rundir.RunError, match=r"is a run .* not an 'esper ppo train'"):
        RunDirectory.create(tmp_path / "run", kind="ppo-train")
    with RunDirectory.create(tmp_path / "compare", kind="compare"):
        pass  # its own kind: continues


# ---------------------------------------------------------------- esper ppo run


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small trained policy (its training directory)."""
    out = tmp_path_factory.mktemp("policy") / "train"
    flags = ["--task", "digits", "--epochs", "4", "--max-batches", "2", "--episodes", "2"]
    assert main(["ppo", "train", *flags, "--envs", "2", "--out", str(out), "--quiet"]) == 0
    return out


def _ppo_run(out: Path, policy: Path) -> list[str]:
    # Sampling: the controller's random stream must be checkpointed and resumed too.
    flags = ["--epochs", "6", "--max-batches", "3", "--policy", str(policy), "--sample"]
    return ["ppo", "run", "--out", str(out), "--quiet", *flags]


def test_ppo_run_keeps_the_promises_of_a_run(tmp_path: Path, policy: Path) -> None:
    # The learned controller's runs are runs: kill -9 mid-run, then --resume, ends with
    # the history, weights and policy state of an uninterrupted run; a second run on a
    # live directory exits 2 naming the first; its resume under another command is refused.
    reference = tmp_path / "reference"
    assert main(_ppo_run(reference, policy)) == 0
    out = tmp_path / "run"
    child = fork(_ppo_run(out, policy), tmp_path / "child", _kill_in_epoch(4))
    assert child.wait() == -signal.SIGKILL, child.stderr
    assert read_checkpoint(out / CHECKPOINT).epoch == 3
    ready, go = tmp_path / "ready", tmp_path / "go"
    resume = ["ppo", "run", "--resume", str(out), "--quiet"]
    resumed = fork(resume, tmp_path / "resumed", _pause_after_epoch(5, ready, go))
    try:
        wait_for(ready.exists)
        second = fork(resume, tmp_path / "second")
        assert second.wait() == 2
        assert f"in use by another Esper run (pid {resumed.pid} on " in one_line(second.stderr)
    finally:
        go.touch()
    assert resumed.wait() == 0, resumed.stderr
    assert _rows(out) == _rows(reference)
    mine, theirs = read_checkpoint(out / CHECKPOINT), read_checkpoint(reference / CHECKPOINT)
    model = mine.state["runner"]["model"]
    for key, value in theirs.state["runner"]["model"].items():
        same = torch.equal(model[key], value) if isinstance(value, torch.Tensor) else None
        assert same if same is not None else model[key] == value, key
    states = [c.state["controller"]["state"] for c in (mine, theirs)]
    assert all(torch.equal(a, b) for a, b in zip(*states, strict=True))
    assert main(_resume(out, "heuristic")) == 2  # a 'ppo run' run: resumed by its command
