"""``esper compare`` and ``esper ppo eval`` keep the guarantees of ``esper heuristic``
(docs/guarantees.md), each checked against the real command: one compare per --out, a
rerun with other settings refused, results that a failed rerun never overwrites, workers
that die with a killed compare, policies keyed on their contents and checked first, an
unusable --out, absurd requests and SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import esper.cli.compare
import esper.run
from esper.cli import main
from esper.compare import PARTIAL_RESULTS, RESULTS, LocalPool
from esper.config import MAX_SEED
from esper.controller.registry import policy_digest
from esper.rl.agent import POLICY_FILE, PolicyMeta, save_policy
from esper.rl.env import MorphogenesisEnv, env_config
from esper.rundir import LOCK, RunDirectory, lock_holder, read_checkpoint, read_lines
from tests.commands import FAST_COMPARE, GROWS_EARLY, compare, error_line, interrupt_at_save
from tests.processes import fork, running, wait_for

EPOCHS = 12  # FAST_COMPARE's
STATIC = ["--arms", "static", "--seeds", "2", "--workers", "1"]


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete compare of the static host on seeds 0 and 1 (copy it to change it)."""
    out = tmp_path_factory.mktemp("finished") / "compare"
    assert compare(out, *STATIC) == 0
    return out


def _copy(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "compare"
    shutil.copytree(finished, out)
    return out


def _write_policy(directory: Path, seed: int) -> Path:
    """An untrained policy for digits (weights drawn with ``seed``) as ``directory``'s
    policy.pt: what the commands load is the file, trained or not."""
    probe = MorphogenesisEnv(config=env_config(task="digits", epochs=EPOCHS, max_batches=3))
    meta = PolicyMeta("digits", tuple(probe.slot_ids), tuple(probe.blueprints), hidden=16)
    torch.manual_seed(seed)
    directory.mkdir(parents=True, exist_ok=True)
    save_policy(directory / POLICY_FILE, meta.build(), meta)
    return directory


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_policy(tmp_path_factory.mktemp("policy") / "train", seed=1)


def _files(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` but the lock files (whose holder record each lock rewrites)."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != LOCK
    }


def _count_saves(patch: pytest.MonkeyPatch) -> list[str]:
    """The run directory of every checkpoint this process saves from now on: one per
    epoch trained."""
    saved: list[str] = []
    real = esper.run._save_checkpoint

    def save(directory: Any, built: Any, history: Any) -> None:
        real(directory, built, history)
        saved.append(str(directory.path))

    patch.setattr(esper.run, "_save_checkpoint", save)
    return saved


def _epochs(run_dir: Path) -> list[int]:
    """The epochs in ``run_dir``'s history (complete lines only: it may be training)."""
    return [json.loads(line)["epoch"] for line in read_lines(run_dir / "history.jsonl")]


def _after_saves(count: int, action: Callable[[], None]) -> Callable[[], None]:
    """A patch for a child: ``action()`` right after its ``count``-th checkpoint."""

    def patch() -> None:
        real = esper.run._save_checkpoint
        saved = [0]

        def save(directory: Any, built: Any, history: Any) -> None:
            real(directory, built, history)
            saved[0] += 1
            if saved[0] == count:
                action()

        setattr(esper.run, "_save_checkpoint", save)  # noqa: B010

    return patch


# ---------------------------------------------------------------- one writer per --out


def test_two_compares_on_one_out_the_second_exits_2_naming_the_first(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # (``finished``: a compare in this process first, so the fork starts warm.)
    out, ready, go = tmp_path / "compare", tmp_path / "ready", tmp_path / "go"
    argv = ["compare", *FAST_COMPARE, "--out", str(out), *STATIC, "--seeds", "1"]

    def pause() -> None:
        ready.touch()
        wait_for(go.exists)

    first = fork(argv, tmp_path / "first", _after_saves(3, pause))
    try:
        wait_for(ready.exists)  # the first compare holds --out, mid-run
        assert main(argv) == 2
        line = error_line(capsys)
        assert f"{out} is in use by another Esper run (pid {first.pid} on " in line
        assert "esper compare" in line and "pick another --out" in line
    finally:
        go.touch()
    assert first.wait() == 0, first.stderr
    data = json.loads((out / RESULTS.table).read_text())
    assert len(data["runs"]) == 1 and data["runs"][0]["summary"] is not None
    for run_dir in (out / "runs").glob("*/seed-*"):
        assert _epochs(run_dir) == list(range(1, EPOCHS + 1))  # each epoch once


@pytest.mark.parametrize(
    ("flags", "difference"),
    [
        (["--epochs", "11"], "episode.epochs: 12 there, 11 now"),
        (["--batch-size", "32"], "batch_size: 64 there, 32 now"),
    ],
)
def test_a_rerun_with_other_settings_is_refused_and_the_results_kept(
    flags: list[str],
    difference: str,
    finished: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")
    out = _copy(finished, tmp_path)
    before = _files(out)
    trained = _count_saves(monkeypatch)
    # Other seeds and arms may change on a rerun; these settings may not.
    assert compare(out, *STATIC, "--seeds", "3", "--arms", "static,heuristic", *flags) == 2
    line = error_line(capsys)
    assert f"{out} holds a compare trained with other settings ({difference})" in line
    assert "pick another --out" in line
    assert not trained and _files(out) == before


def test_a_rerun_with_a_failed_run_keeps_the_last_complete_results(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _copy(finished, tmp_path)
    complete = {name: (out / name).read_bytes() for name in RESULTS.names}
    blocked = out / "runs" / "static" / "seed-2"
    blocked.mkdir()
    (blocked / "notes.txt").write_text("a user's file: this run cannot be written here")
    assert compare(out, *STATIC, "--seeds", "3") == 1
    printed = capsys.readouterr()
    assert "esper: run failed: static seed 2" in printed.err
    assert f"{out / RESULTS.table} (and its .md and plot) still hold the last complete" in (
        printed.out.replace("\n", "")
    )
    assert {name: (out / name).read_bytes() for name in RESULTS.names} == complete
    partial = json.loads((out / PARTIAL_RESULTS.table).read_text())
    failed = [(r["arm"], r["seed"]) for r in partial["runs"] if r["summary"] is None]
    assert failed == [("static", 2)] and len(partial["runs"]) == 3
    assert (out / PARTIAL_RESULTS.markdown).is_file() and (out / PARTIAL_RESULTS.plot).is_file()
    # Once the run can train, the complete table replaces the old one; the partial goes.
    shutil.rmtree(blocked)
    assert compare(out, *STATIC, "--seeds", "3") == 0
    data = json.loads((out / RESULTS.table).read_text())
    assert [(r["arm"], r["seed"]) for r in data["runs"] if r["summary"]] == [
        ("static", seed) for seed in range(3)
    ]
    assert not any((out / name).exists() for name in PARTIAL_RESULTS.names)


# ---------------------------------------------------------------- kill -9, SIGTERM


def _worker_runs(out: Path, compare_pid: int) -> dict[Path, int]:
    """Runs that a worker (not the compare itself) is training now: run dir -> pid."""
    held = {}
    for lock in (out / "runs").glob(f"*/seed-*/{LOCK}"):
        try:
            pid = int(json.loads(lock.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            continue
        if pid != compare_pid and lock_holder(lock.parent) is not None:
            held[lock.parent] = pid
    return held


def test_kill_9_of_a_compare_with_2_workers_then_a_rerun_resumes_every_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    epochs = 24
    out = tmp_path / "compare"
    flags = ["--task", "digits", "--epochs", str(epochs), "--max-batches", "3", "--quiet"]
    flags += ["--out", str(out), "--arms", "static", "--seeds", "2"]
    child = fork(["compare", *flags, "--workers", "2"], tmp_path / "child")
    training: dict[Path, int] = {}

    def mid_run() -> bool:
        training.update(_worker_runs(out, child.pid))
        return any(len(_epochs(run)) >= 2 for run in training)

    wait_for(mid_run)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    # Its workers die with it: gone at once, their locks free, and no orphan trains on.
    wait_for(lambda: not any(running(pid) for pid in training.values()), timeout=5)
    assert all(lock_holder(run) is None for run in training)
    left = {run: len(_epochs(run)) for run in training}
    assert any(done < epochs for done in left.values()), left  # cut short, not finished
    time.sleep(0.5)
    assert {run: len(_epochs(run)) for run in training} == left
    saved = {
        run: read_checkpoint(run / "checkpoint.pt").epoch if (run / "checkpoint.pt").exists() else 0
        for run in (out / "runs" / "static").glob("seed-*")
    }
    trained = _count_saves(monkeypatch)
    # At once (in this process, so that the epochs it trains are counted): nothing is in use.
    assert main(["compare", *flags, "--workers", "1"]) == 0
    assert len(trained) == 2 * epochs - sum(saved.values())  # each run resumed, not redone
    for seed in (0, 1):
        assert _epochs(out / "runs" / "static" / f"seed-{seed}") == list(range(1, epochs + 1))


@pytest.mark.parametrize("command", ["compare", "ppo eval"])
def test_sigterm_stops_a_compare_with_143_and_the_rerun_continues(
    command: str, policy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "compare"
    if command == "compare":
        argv = ["compare", *FAST_COMPARE, "--out", str(out)]
    else:
        argv = ["ppo", "eval", "--policy", str(policy), "--max-batches", "3", "--quiet"]
        argv += ["--out", str(out), "--epochs", str(EPOCHS)]
    argv += ["--arms", "static", "--seeds", "2", "--workers", "1"]
    terminate = _after_saves(3, lambda: os.kill(os.getpid(), signal.SIGTERM))
    child = fork(argv, tmp_path / "child", terminate)
    assert child.wait() == 128 + signal.SIGTERM
    assert "interrupted; rerun the same command to continue" in child.stdout
    assert "Traceback" not in child.stderr
    assert not (out / RESULTS.table).exists()
    trained = _count_saves(monkeypatch)
    assert main(argv) == 0
    assert len(trained) == 2 * EPOCHS - 3  # the first run resumed after its 3 epochs


# ---------------------------------------------------------------- policies


def test_a_compare_with_a_ppo_arm_interrupted_and_rerun_trains_nothing_twice(
    policy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "compare"
    flags = ["--arms", f"ppo:{policy},static", "--seeds", "2", "--workers", "1"]
    with monkeypatch.context() as patch:
        interrupt_at_save(patch, EPOCHS + 3)  # epoch 3 of the second learned run
        assert compare(out, *flags) == 130
    trained = _count_saves(monkeypatch)
    assert compare(out, *flags) == 0
    # The finished learned run is reused, the interrupted one resumes, the static ones train.
    assert len(trained) == (EPOCHS - 3) + 2 * EPOCHS
    digest = policy_digest(policy)
    assert digest is not None
    learned = out / "runs" / f"learned-{digest[:12]}"
    assert sorted(trained) == sorted(
        [str(learned / "seed-1")] * (EPOCHS - 3)
        + [str(out / "runs" / "static" / f"seed-{s}") for s in (0, 1)] * EPOCHS
    )
    data = json.loads((out / RESULTS.table).read_text())
    assert [a["arm"] for a in data["arms"]] == ["learned", "static"]
    assert all(run["summary"] for run in data["runs"])


def test_ppo_eval_after_the_policy_changed_trains_the_learned_arm_again(
    policy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "train"
    shutil.copytree(policy, mine)
    out = tmp_path / "eval"
    argv = ["ppo", "eval", "--policy", str(mine), "--arms", "learned,static", "--quiet"]
    argv += ["--seeds", "100-100", "--workers", "1", "--epochs", str(EPOCHS), "--out", str(out)]
    argv += ["--max-batches", "3"]
    assert main(argv) == 0
    old = policy_digest(mine)
    _write_policy(mine, seed=2)  # as 'ppo train --resume' rewrites policy.pt
    new = policy_digest(mine)
    assert old and new and new != old
    trained: list[str] = []
    real = esper.run.run  # what esper.compare.runs trains each run with

    def run(run_dir: Path, config: Any) -> dict[str, Any]:
        trained.append(str(run_dir))
        return real(run_dir, config)

    monkeypatch.setattr("esper.compare.runs.run", run)
    assert main(argv) == 0
    assert trained == [str(out / "runs" / f"learned-{new[:12]}" / "seed-100")]
    data = json.loads((out / RESULTS.table).read_text())
    learned = [r["run_dir"] for r in data["runs"] if r["arm"] == "learned"]
    assert learned == [f"runs/learned-{new[:12]}/seed-100"]
    config = json.loads((out / learned[0] / "config.json").read_text())
    assert config["policy_sha256"] == new
    assert (out / "runs" / f"learned-{old[:12]}" / "seed-100" / "summary.json").is_file()


def test_a_ppo_run_resumed_after_its_policy_changed_is_refused(
    policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "train"
    shutil.copytree(policy, mine)
    run_dir = tmp_path / "run"
    argv = ["ppo", "run", "--policy", str(mine), "--epochs", str(EPOCHS), "--max-batches", "3"]
    with pytest.MonkeyPatch.context() as patch:
        interrupt_at_save(patch, 3)
        assert main([*argv, "--out", str(run_dir), "--quiet"]) == 130
    history = (run_dir / "history.jsonl").read_bytes()
    _write_policy(mine, seed=2)
    capsys.readouterr()
    assert main(["ppo", "run", "--resume", str(run_dir), "--quiet"]) == 2
    line = error_line(capsys)
    assert f"{mine / POLICY_FILE} has changed since this run started" in line
    assert (run_dir / "history.jsonl").read_bytes() == history


def _garbage_policy(tmp_path: Path, policy: Path) -> str:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / POLICY_FILE).write_bytes(b"not a policy")
    return str(tmp_path / "bad")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (lambda t, p: ["compare", "--arms", f"static,ppo:{t / 'nope'}"], "no policy at"),
        (
            lambda t, p: ["compare", "--arms", f"static,ppo:{_garbage_policy(t, p)}"],
            "not a readable",
        ),
        (
            lambda t, p: ["compare", "--task", "fashion_mnist", "--arms", f"static,ppo:{p}"],
            "was trained on task 'digits', not 'fashion_mnist'",
        ),
        (lambda t, p: ["ppo", "eval", "--policy", str(t / "nope")], "no policy at"),
    ],
    ids=["missing", "garbage", "another task", "ppo eval, missing"],
)
def test_a_missing_or_unusable_policy_is_refused_before_anything_trains(
    argv: Callable[[Path, Path], list[str]],
    needle: str,
    policy: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")
    out = tmp_path / "out"
    assert main([*argv(tmp_path, policy), "--epochs", "2", "--out", str(out)]) == 2
    assert needle in error_line(capsys)
    assert not out.exists()


# ---------------------------------------------------------------- bad input


# Each makes what an --out names in ``path`` and returns the --out.


def _root(path: Path) -> str:
    return "/"


def _a_file(path: Path) -> str:
    path.write_text("a user's file")
    return str(path)


def _under_a_file(path: Path) -> str:
    return str(Path(_a_file(path)) / "out")


def _a_users_directory(path: Path) -> str:
    path.mkdir()
    (path / "thesis.tex").write_text("a user's work")
    return str(path)


def _a_run(path: Path) -> str:
    with RunDirectory.create(path):
        (path / "config.json").write_text("{}")
    return str(path)


def _a_training(path: Path) -> str:
    with RunDirectory.create(path, kind="ppo-train"):
        pass
    return str(path)


def _empty(path: Path) -> str:
    return ""


OUTS: dict[str, tuple[Callable[[Path], str], str]] = {
    "/": (_root, "/ is not empty and is not an Esper run directory"),
    "a file": (_a_file, "exists and is not a directory"),
    "a user's directory": (
        _a_users_directory,
        "is not empty and is not an Esper run directory (it holds thesis.tex)",
    ),
    "a run": (_a_run, "is a run ('esper heuristic'"),
    "a training": (_a_training, "is an 'esper ppo train' directory"),
    "under a file": (_under_a_file, "choose a writable --out"),
    "empty": (_empty, "--out is empty"),
}


@pytest.mark.parametrize("command", ["compare", "ppo eval"])
@pytest.mark.parametrize("where", list(OUTS))
def test_an_unusable_out_exits_2_in_one_line_naming_the_fix(
    where: str,
    command: str,
    policy: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")
    make, needle = OUTS[where]
    out = make(tmp_path / "out")
    before = _files(tmp_path)
    prefix = ["compare"] if command == "compare" else ["ppo", "eval", "--policy", str(policy)]
    assert main([*prefix, "--epochs", "2", "--seeds", "1", "--out", out]) == 2
    line = error_line(capsys)
    assert needle in line, line
    assert "--out" in line  # the fix: another --out
    assert _files(tmp_path) == before  # nothing written


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--seeds", "0-100000"], ["100,001 seeds", "at most 1,000 runs", "smaller range"]),
        (["--seeds", "0-400"], ["3 arms x 401 seeds is 1,203 runs", "several compares"]),
        (["--seeds", f"0-{10**30}"], ["at most 1,000 runs"]),  # refused, not built
        (
            ["--seeds", f"{MAX_SEED}-{MAX_SEED + 1}"],
            [f"seeds must be distinct and in 0..{MAX_SEED}"],
        ),
        (["--arms", "static,static@1"], ["arms 'static' and 'static@1' are the same runs"]),
        (["--arms", "static@1.0,static@1"], ["arm 'static@1' is listed twice"]),
        (["--arms", "heuristic,static@2,static@2.00"], ["'static@2' is listed twice"]),
    ],
)
@pytest.mark.parametrize("command", ["compare", "ppo eval"])
def test_too_many_or_out_of_range_seeds_and_duplicate_arms_exit_2_in_one_line(
    command: str,
    flags: list[str],
    needles: list[str],
    policy: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")
    if command == "ppo eval" and "--arms" not in flags:
        flags = [*flags, "--arms", "learned,heuristic,static"]
    prefix = ["compare"] if command == "compare" else ["ppo", "eval", "--policy", str(policy)]
    assert main([*prefix, *flags, "--epochs", "2", "--out", str(tmp_path / "out")]) == 2
    line = error_line(capsys)
    for needle in needles:
        assert needle in line, line
    assert not (tmp_path / "out").exists()


def test_workers_are_at_most_the_runs(
    finished: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    asked: list[int] = []

    def pool(workers: int) -> LocalPool:
        asked.append(workers)
        return LocalPool(1)  # every run is cached: nothing to start processes for

    monkeypatch.setattr(esper.cli.compare, "LocalPool", pool)
    monkeypatch.setenv("COLUMNS", "1000")
    out = _copy(finished, tmp_path)
    flags = ["--arms", "static", "--seeds", "2", "--workers", "64", "--config", str(GROWS_EARLY)]
    assert main(["compare", "--epochs", "12", "--max-batches", "3", "--out", str(out), *flags]) == 0
    assert asked == [2]
    assert "2 runs, 2 at a time" in capsys.readouterr().out


def test_a_matched_arm_sized_to_a_listed_arm_shares_its_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A heuristic that never germinates: the matched arm is the host itself, x1, so its
    # runs are the static arm's, not a second training of them (in runs/static@1).
    config = tmp_path / "no-growth.json"
    config.write_text(json.dumps({"episode": {"max_seeds": 0}}))
    out = tmp_path / "compare"
    trained = _count_saves(monkeypatch)
    flags = ["--arms", "static,heuristic,static-matched", "--seeds", "1", "--workers", "1"]
    assert compare(out, *flags, "--config", str(config)) == 0
    assert len(trained) == 2 * EPOCHS  # static and heuristic; the matched arm trained none
    data = json.loads((out / RESULTS.table).read_text())
    matched = next(arm for arm in data["arms"] if arm["arm"] == "static-matched")
    assert matched["width"] == 1.0 and matched["label"] == "static-matched (x1)"
    runs = {run["arm"]: run for run in data["runs"]}
    assert runs["static-matched"]["run_dir"] == runs["static"]["run_dir"] == "runs/static/seed-0"
    assert runs["static-matched"]["summary"] == runs["static"]["summary"]
    assert not (out / "runs" / "static@1").exists()
