"""Fault injection for ``esper ppo train``: the probes of an adversarial user, against the
real command, as `tests/integration/test_faults.py` makes them against ``esper heuristic``.

Trainings are 3 PPO updates of 2 digits episodes of 3 epochs (1 batch each); where a
real process is needed (kill -9, two trainings at once, signals) the test forks itself
(`tests.processes`). Every resumed training must end exactly like the uninterrupted
reference: the same policy, bit for bit, the same checkpoint state and the same rows of
``updates.jsonl`` (apart from wall times). The training curve is not drawn here (it is
redrawn from ``updates.jsonl`` by each update and by ``esper report``, and would take
most of the time).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import esper.rl.ppo
import esper.rl.training
from esper.cli import main
from esper.cli.ppo import PROVENANCE_FILE, RESUME_REFUSES
from esper.rl.agent import POLICY_FILE
from esper.rl.training import (
    CLONE_FILE,
    CLONED_POLICY_FILE,
    MAX_TRAINING_SEED,
    UPDATES_FILE,
    Training,
)
from esper.rl.workers import EnvPool
from esper.rundir import (
    CHECKPOINT,
    LOCK,
    PREVIOUS_CHECKPOINT,
    Checkpoint,
    RunDirectory,
    read_checkpoint,
    tree_digest,
)
from tests.commands import one_line, policy_weights
from tests.processes import (
    SleepingEnv,
    fork,
    kill_on_replace,
    kill_self,
    running,
    wait_for,
)

UPDATES = 3
FLAGS = ["--task", "digits", "--epochs", "3", "--max-batches", "1", "--envs", "2"]
WALL_TIMES = ("rollout_seconds", "update_seconds")
"""The fields of an update row that are the machine's, not the training's."""


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module", autouse=True)
def no_training_curve() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(esper.rl.training, "plot_training", lambda rows, path, task: None)
        yield


@pytest.fixture(scope="module")
def clone_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "clone.json"
    path.write_text(json.dumps({"clone_epochs": 10}))
    return path


def _argv(out: Path, *flags: str) -> list[str]:
    episodes = ["--episodes", str(2 * UPDATES)]
    return ["ppo", "train", *FLAGS, *episodes, "--quiet", "--out", str(out), *flags]


def _cloning(config: Path) -> list[str]:
    return ["--demonstrations", "2", "--config", str(config)]


def _resume(out: Path) -> list[str]:
    return ["ppo", "train", "--resume", str(out), "--quiet"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted training every interrupted one must match."""
    out = tmp_path_factory.mktemp("reference") / "train"
    assert main(_argv(out)) == 0
    return out


@pytest.fixture(scope="module")
def cloned_reference(tmp_path_factory: pytest.TempPathFactory, clone_config: Path) -> Path:
    """The same, cloning the heuristic first."""
    out = tmp_path_factory.mktemp("cloned") / "train"
    assert main(_argv(out, *_cloning(clone_config))) == 0
    return out


def _saving(
    updates: int, action: Callable[[], None], *, before: bool = False
) -> Callable[..., None]:
    """`Training.save` that calls ``action`` when the checkpoint of ``updates`` updates
    is written (right after it, or ``before`` it)."""
    real = Training.save

    def save(training: Training, trainer: Any) -> None:
        hit = trainer.updates == updates
        if hit and before:
            action()
        real(training, trainer)
        if hit and not before:
            action()

    return save


def _at_save(
    updates: int, action: Callable[[], None], *, before: bool = False
) -> Callable[[], None]:
    """A patch for a child: `_saving`."""
    return lambda: setattr(Training, "save", _saving(updates, action, before=before))


def _interrupt() -> None:
    raise KeyboardInterrupt


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training stopped (Ctrl-C) after update 2: checkpoints of updates 2 and 1. Tests
    damage copies of it."""
    out = tmp_path_factory.mktemp("interrupted") / "train"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Training, "save", _saving(2, _interrupt))
        assert main(_argv(out)) == 130
    assert read_checkpoint(out / CHECKPOINT).epoch == 2
    assert read_checkpoint(out / PREVIOUS_CHECKPOINT).epoch == 1
    return out


def _copy(training: Path, tmp_path: Path) -> Path:
    out = tmp_path / "train"
    shutil.copytree(training, out)
    return out


def _rows(out: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (out / UPDATES_FILE).read_text().splitlines()]
    for row in rows:
        for name in WALL_TIMES:
            row.pop(name)
    return rows


def _assert_same_weights(mine: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert mine.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.equal(mine[key], value), key


def _assert_same_training(out: Path, reference: Path) -> None:
    """Same rows, policy and checkpoint state as ``reference``; no temporary files."""
    assert _rows(out) == _rows(reference)
    assert [row["update"] for row in _rows(out)] == list(range(1, UPDATES + 1))
    _assert_same_weights(policy_weights(out), policy_weights(reference))
    mine, theirs = read_checkpoint(out / CHECKPOINT), read_checkpoint(reference / CHECKPOINT)
    assert mine.epoch == theirs.epoch == UPDATES
    assert tree_digest(mine.state) == tree_digest(theirs.state)  # optimizer, random stream
    if (reference / CLONED_POLICY_FILE).exists():
        cloned = [policy_weights(d / CLONED_POLICY_FILE) for d in (out, reference)]
        _assert_same_weights(*cloned)
        records = [json.loads((d / CLONE_FILE).read_text()) for d in (out, reference)]
        for record in records:
            record.pop("seconds")
        assert records[0] == records[1]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def _files(directory: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file under ``directory`` and its bytes (but those named in ``skip``)."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name not in skip
    }


# ---------------------------------------------------------------- one writer per directory


def test_a_second_training_or_a_resume_of_a_live_one_exits_2_naming_the_first(
    tmp_path: Path, reference: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "train"
    ready, go = tmp_path / "ready", tmp_path / "go"

    def pause() -> None:
        ready.touch()
        wait_for(go.exists)

    first = fork(_argv(out), tmp_path / "first", _at_save(1, pause))
    try:
        wait_for(ready.exists)  # the first training holds the lock, after update 1
        files = _files(out)
        for argv in (_argv(out, "--seed", "1"), _resume(out)):
            capsys.readouterr()
            assert main(argv) == 2
            line = one_line(capsys.readouterr().err)
            assert f"{out} is in use by another Esper run (pid {first.pid} on " in line
            assert "running 'esper ppo train" in line and "pick another --out" in line
        assert _files(out) == files  # neither wrote anything
    finally:
        go.touch()
    assert first.wait() == 0, first.stderr
    _assert_same_training(out, reference)  # every update once, all of one training
    assert (out / "config.json").read_bytes() == (reference / "config.json").read_bytes()
    assert "--seed" not in json.loads((out / PROVENANCE_FILE).read_text())["command"]


def _user_directory(tmp_path: Path) -> list[str]:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "policy.pt").write_bytes(b"precious")
    return _argv(tmp_path / "photos")


def _a_file(tmp_path: Path) -> list[str]:
    (tmp_path / "notes.txt").write_text("precious")
    return _argv(tmp_path / "notes.txt")


def _under_a_file(tmp_path: Path) -> list[str]:
    (tmp_path / "notes.txt").write_text("precious")
    return _argv(tmp_path / "notes.txt" / "train")


def _a_compare_directory(tmp_path: Path) -> list[str]:
    with RunDirectory.create(tmp_path / "compare", kind="compare"):
        pass
    return _argv(tmp_path / "compare")


def _never_started(tmp_path: Path) -> list[str]:
    with RunDirectory.create(tmp_path / "train", kind="ppo-train"):
        pass  # it stopped before it wrote its config.json (the data could not be read)
    return _resume(tmp_path / "train")


def _a_training(tmp_path: Path, reference: Path) -> list[str]:
    return _argv(_copy(reference, tmp_path))


BAD_OUT: dict[str, tuple[Callable[[Path, Path], list[str]], str]] = {
    "a user's non-empty directory": (
        lambda p, r: _user_directory(p),
        "is not empty and is not an Esper run directory (it holds policy.pt)",
    ),
    "/": (lambda p, r: _argv(Path("/")), "/ is not empty and is not an Esper run directory"),
    "a file": (lambda p, r: _a_file(p), "notes.txt exists and is not a directory"),
    "a path under a file": (lambda p, r: _under_a_file(p), "choose a writable --out"),
    "another kind's directory": (
        lambda p, r: _a_compare_directory(p),
        "is an 'esper compare' or 'ppo eval' directory, not an 'esper ppo train' directory",
    ),
    "a directory that holds a training": (_a_training, "already holds a run; continue it with"),
    '--out ""': (lambda p, r: ["ppo", "train", "--out", ""], "--out is empty"),
    "--resume of a training that never started": (
        lambda p, r: _never_started(p),
        "holds no training yet (it stopped before it started); start it again with --out",
    ),
    "--seed 99999999999999999999": (
        lambda p, r: _argv(p / "train", "--seed", "99999999999999999999"),
        f"seed must be in 0..{MAX_TRAINING_SEED} (training episodes run on seeds",
    ),
    "--seed -1": (lambda p, r: _argv(p / "train", "--seed", "-1"), "seed must be in 0.."),
}


@pytest.mark.parametrize("case", list(BAD_OUT))
def test_an_unusable_out_or_seed_exits_2_in_one_line_and_writes_nothing(
    case: str,
    tmp_path: Path,
    reference: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")
    monkeypatch.chdir(tmp_path)
    make_argv, needle = BAD_OUT[case]
    argv = make_argv(tmp_path, reference)
    before, root = _files(tmp_path), sorted(os.listdir("/"))
    capsys.readouterr()
    assert main(argv) == 2
    assert needle in one_line(capsys.readouterr().err)
    assert _files(tmp_path) == before
    assert sorted(os.listdir("/")) == root


@pytest.mark.parametrize("flag", RESUME_REFUSES)
def test_resume_refuses_each_flag_it_would_ignore(
    flag: str, interrupted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    option = f"--{flag.replace('_', '-')}"
    value = {"task": "digits", "config": "c.json", "out": "elsewhere"}.get(flag, "1")
    before = _files(interrupted)
    capsys.readouterr()
    assert main([*_resume(interrupted), option, value]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"--resume continues a training with its saved configuration; drop {option}" in line
    assert _files(interrupted) == before


# ---------------------------------------------------------------- damaged checkpoints


def _flip_a_weight_bit(path: Path) -> None:
    """Change one bit of one policy weight and save the file again, checksum and all."""
    raw = torch.load(path, weights_only=True)
    weight = next(v for v in raw["state"]["policy"].values() if v.is_floating_point())
    weight.view(torch.int32).view(-1)[0] ^= 1
    torch.save(raw, path)


@pytest.fixture(scope="module")
def longer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another training on the same settings, one update longer."""
    out = tmp_path_factory.mktemp("longer") / "train"
    assert main([*_argv(out), "--episodes", str(2 * UPDATES + 2)]) == 0
    return out


DAMAGE: dict[str, tuple[Callable[[Path, dict[str, Path]], object], str]] = {
    "truncated": (lambda p, o: p.write_bytes(p.read_bytes()[:1000]), "unreadable"),
    "empty": (lambda p, o: p.write_bytes(b""), "unreadable"),
    "garbage": (lambda p, o: p.write_bytes(os.urandom(5000)), "unreadable"),
    "a flipped weight bit": (lambda p, o: _flip_a_weight_bit(p), "checksum mismatch"),
    "another training's": (
        lambda p, o: shutil.copy(o["cloned"] / CHECKPOINT, p),
        "it belongs to another run",
    ),
    "a longer training's": (
        lambda p, o: shutil.copy(o["longer"] / CHECKPOINT, p),
        "it belongs to another run",
    ),
}
"""Damage to the latest checkpoint: how (given the other trainings' directories), and
the reason the warning gives."""


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_or_foreign_latest_checkpoint_falls_back_to_the_previous_one(
    damage: str,
    tmp_path: Path,
    interrupted: Path,
    cloned_reference: Path,
    longer: Path,
    reference: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = _copy(interrupted, tmp_path)
    spoil, reason = DAMAGE[damage]
    spoil(out / CHECKPOINT, {"cloned": cloned_reference, "longer": longer})
    capsys.readouterr()
    assert main(_resume(out)) == 0
    warning = one_line(capsys.readouterr().err)
    assert f"skipped {CHECKPOINT}: " in warning and reason in warning
    assert f"continuing from {PREVIOUS_CHECKPOINT} (update 1)" in warning
    _assert_same_training(out, reference)


def test_raw_bit_flips_anywhere_never_change_the_policy(
    tmp_path: Path, interrupted: Path, reference: Path
) -> None:
    # A flipped byte lands in a tensor or key (checksum), in the zip structure
    # (unreadable), or in padding that nothing reads: the policy is the same either way.
    pristine = (interrupted / CHECKPOINT).read_bytes()
    for offset in (len(pristine) // 2, len(pristine) - 100):
        out = _copy(interrupted, tmp_path / str(offset))
        data = bytearray(pristine)
        data[offset] ^= 0x10
        (out / CHECKPOINT).write_bytes(bytes(data))
        assert main(_resume(out)) == 0, offset
        _assert_same_training(out, reference)


def _edit_config(out: Path) -> None:
    config = json.loads((out / "config.json").read_text())
    config["ppo"]["learning_rate"] = 0.5
    (out / "config.json").write_text(json.dumps(config, indent=2))


def _edit_a_row(out: Path) -> None:
    lines = (out / UPDATES_FILE).read_text().splitlines(keepends=True)
    row = json.loads(lines[0])
    row["mean_return"] = 1.0  # a valid row, not the one the checkpoints follow
    lines[0] = json.dumps(row) + "\n"
    (out / UPDATES_FILE).write_text("".join(lines))


def _damage_a_line(out: Path) -> None:
    lines = (out / UPDATES_FILE).read_text().splitlines(keepends=True)
    lines[0] = lines[0][:40] + "\n"
    (out / UPDATES_FILE).write_text("".join(lines))


def _beyond_the_plan(out: Path) -> None:
    """A checkpoint of this training (its identity, the rows it follows) at update 4."""
    checkpoint = read_checkpoint(out / CHECKPOINT)
    lines = (out / UPDATES_FILE).read_bytes().splitlines(keepends=True)
    lines += lines[:2]
    (out / UPDATES_FILE).write_bytes(b"".join(lines))
    with RunDirectory.open(out, kind="ppo-train") as directory:
        digest = hashlib.sha256(b"".join(lines)).hexdigest()
        crafted = Checkpoint(checkpoint.identity, UPDATES + 1, digest, checkpoint.state)
        directory.save_checkpoint(crafted)


def _both_damaged(out: Path) -> None:
    (out / CHECKPOINT).write_bytes(b"")
    _flip_a_weight_bit(out / PREVIOUS_CHECKPOINT)


REFUSED: dict[str, tuple[Callable[[Path], object], str]] = {
    "both generations damaged": (
        _both_damaged,
        f"no usable checkpoint in {{out}} ({CHECKPOINT}: unreadable",
    ),
    "an edited config.json": (_edit_config, "written with a different configuration"),
    "an edited row of updates.jsonl": (
        _edit_a_row,
        "updates.jsonl's first 2 updates differ from the ones it was written after",
    ),
    "an emptied updates.jsonl": (
        lambda out: (out / UPDATES_FILE).write_bytes(b""),
        "it is at update 2 but updates.jsonl holds only 0 updates",
    ),
    "a missing updates.jsonl": (
        lambda out: (out / UPDATES_FILE).unlink(),
        "it is at update 2 but updates.jsonl holds only 0 updates",
    ),
    "a damaged line of updates.jsonl": (
        _damage_a_line,
        "{out}/updates.jsonl is damaged (line 1: not an update row (",
    ),
    "a checkpoint beyond the planned updates": (
        _beyond_the_plan,
        "is at update 4, beyond the 3 updates of its config.json",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_training_that_cannot_continue_is_refused_in_one_line_and_nothing_is_rewritten(
    case: str, tmp_path: Path, interrupted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _copy(interrupted, tmp_path)
    spoil, needle = REFUSED[case]
    spoil(out)
    files = _files(out, skip=(LOCK,))  # the lock file names whoever holds the lock
    capsys.readouterr()
    assert main(_resume(out)) == 2
    assert needle.format(out=out) in one_line(capsys.readouterr().err)
    assert _files(out, skip=(LOCK,)) == files


def test_updates_jsonl_is_read_strictly_by_report_and_resume(
    tmp_path: Path, interrupted: Path, reference: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A last line without its newline (a crash cut it short) is no update: left out.
    out = _copy(interrupted, tmp_path)
    with (out / UPDATES_FILE).open("a") as updates:
        updates.write('{"update": 3, "episodes": 6, "mean_ret')
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert "2 of 3" in capsys.readouterr().out
    assert main(_resume(out)) == 0
    _assert_same_training(out, reference)
    # A damaged line anywhere else is one line, exit 2, for `esper report` too.
    _damage_a_line(out)
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    assert "updates.jsonl is damaged (line 1: not an update row" in one_line(
        capsys.readouterr().err
    )


# ---------------------------------------------------------------- signals and kill -9


def _terminate_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_stops_the_training_with_143_and_it_resumes(
    tmp_path: Path, reference: Path
) -> None:
    out = tmp_path / "train"
    child = fork(_argv(out), tmp_path / "child", _at_save(1, _terminate_self))
    assert child.wait() == 128 + signal.SIGTERM
    assert f"interrupted; continue with: esper ppo train --resume {out}" in child.stdout
    assert "Traceback" not in child.stderr
    assert main(_resume(out)) == 0
    _assert_same_training(out, reference)


def _kill_at_call(module: Any, name: str, nth: int) -> Callable[[], None]:
    """Patch: SIGKILL at the ``nth`` call of ``module.name``."""

    def patch() -> None:
        real = getattr(module, name)
        calls = [0]

        def call(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] == nth:
                kill_self()
            return real(*args, **kwargs)

        setattr(module, name, call)

    return patch


def _kill_at_step(nth: int) -> Callable[[], None]:
    """Patch: SIGKILL when the ``nth`` step is asked of any environment."""

    def patch() -> None:
        real, calls = EnvPool.send, [0]

        def send(pool: EnvPool, env: int, command: str, argument: Any) -> None:
            calls[0] += command == "step"
            if calls[0] == nth:
                kill_self()
            real(pool, env, command, argument)

        setattr(EnvPool, "send", send)  # noqa: B010

    return patch


KILL_POINTS: dict[str, tuple[Callable[[], None], bool]] = {
    "learning update 1 (before any update is saved)": (
        _kill_at_call(esper.rl.ppo, "ppo_update", 1),
        False,
    ),
    # Each update steps 2 environments 2 times: the 5th step is update 2's first.
    "mid-rollout of update 2": (_kill_at_step(5), False),
    "between update 2's row and its checkpoint": (
        _at_save(2, kill_self, before=True),
        False,
    ),
    "with checkpoint 2 written, not yet renamed": (kill_on_replace(CHECKPOINT, 3), False),
    "while keeping the previous generation": (kill_on_replace(PREVIOUS_CHECKPOINT, 2), False),
    "after the last checkpoint": (_kill_at_call(esper.rl.training, "plot_training", 3), False),
    "during cloning": (_kill_at_call(esper.rl.training, "clone_update", 1), True),
    "cloned, before cloning's checkpoint": (kill_on_replace(POLICY_FILE, 1, after=True), True),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_then_resume_gives_the_uninterrupted_policy(
    point: str,
    tmp_path: Path,
    clone_config: Path,
    reference: Path,
    cloned_reference: Path,
) -> None:
    patch, cloning = KILL_POINTS[point]
    out = tmp_path / "train"
    flags = _cloning(clone_config) if cloning else []
    child = fork(_argv(out, *flags), tmp_path / "child", patch)
    assert child.wait() == -signal.SIGKILL, child.stderr
    assert json.loads((out / LOCK).read_text())["pid"] == child.pid  # stale: it is gone
    if read_checkpoint(out / CHECKPOINT).epoch < UPDATES:
        assert main(_resume(out)) == 0
    else:  # every update was saved: nothing to resume, `esper report` redraws the rest
        assert main(_resume(out)) == 2
        assert main(["report", str(out)]) == 0
    _assert_same_training(out, cloned_reference if cloning else reference)
    assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()  # taken over


def test_workers_die_with_a_training_killed_mid_step(tmp_path: Path) -> None:
    out, pids = tmp_path / "train", tmp_path / "workers.json"

    def patch() -> None:
        # Environments whose steps take a minute, and a kill -9 a second into the first.
        real_factory, real_send = esper.rl.training._factory, EnvPool.send

        def factory(config: Any) -> Any:
            return functools.partial(SleepingEnv, real_factory(config), 60.0)

        def send(pool: EnvPool, env: int, command: str, argument: Any) -> None:
            if command == "step" and not pids.exists():
                pids.write_text(json.dumps([p.pid for p in pool._processes]))
                threading.Timer(1.0, kill_self).start()
            real_send(pool, env, command, argument)

        setattr(esper.rl.training, "_factory", factory)  # noqa: B010
        setattr(EnvPool, "send", send)  # noqa: B010

    child = fork(_argv(out, "--workers", "2"), tmp_path / "child", patch)
    assert child.wait() == -signal.SIGKILL, child.stderr
    workers = json.loads(pids.read_text())
    assert len(workers) == 2
    wait_for(lambda: not any(running(pid) for pid in workers), timeout=10.0)
