"""``esper compare --ray`` on a local Ray: the same runs as the local pool, a killed run
retried and resumed, one that keeps failing reported, runs sent back to the driver when
``--out`` is not shared, and one-line errors."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import esper.cli.compare
from esper.cli import main
from esper.compare.pools import TOKEN_FILE, RayPool
from tests.commands import FAST_COMPARE, compare, interrupt_at_save

ARMS = ["--arms", "static,heuristic", "--seeds", "2"]


def _runs(out: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """Each run's summary without its wall-clock fields, by (arm, seed)."""
    data = json.loads((out / "compare.json").read_text())
    runs = {}
    for run in data["runs"]:
        assert run["summary"] is not None, run["error"]
        summary = dict(run["summary"])
        summary.pop("wall_seconds")
        runs[(run["arm"], run["seed"])] = summary
    return runs


def _status(argv: list[str]) -> int:
    """The exit status of ``esper ARGV``, argument errors (SystemExit) included."""
    try:
        return main(argv)
    except SystemExit as exit:
        return int(exit.code or 0)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (
            ["compare", *FAST_COMPARE, "--ray"],
            "--ray needs Ray, which is not installed: pip install",
        ),
        (["compare", *FAST_COMPARE, "--ray", "auto"], "pip install 'esper[ray]'"),
        (["ppo", "train", *FAST_COMPARE, "--ray"], "pip install 'esper[ray]'"),
        (["compare", *FAST_COMPARE, "--gpus-per-run", "0.5"], "--gpus-per-run needs --ray"),
        (["compare", *FAST_COMPARE, "--gpus-per-run", "-1", "--ray"], "at least 0"),
        (["compare", *FAST_COMPARE, "--max-retries", "x", "--ray"], "at least 0"),
    ],
)
def test_ray_flags_without_ray_exit_2_with_one_line(
    argv: list[str],
    needle: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # First in this module, before its Ray starts: no Ray thread can meet the blocked import.
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "1000")
    assert _status(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], dict[str, Any]]:
    """Static and heuristic on seeds 0 and 1, in this process (the local pool)."""
    out = tmp_path_factory.mktemp("reference") / "compare"
    assert compare(out, *ARMS, "--workers", "1") == 0
    return _runs(out)


@pytest.fixture
def ray(local_ray: ModuleType) -> ModuleType:
    return local_ray


class _Killer:
    """Kills the process that trains ``run_dir`` (the pid its lock names) once its
    history holds ``after`` epochs: a worker dying mid-run."""

    def __init__(self, run_dir: Path, after: int = 2) -> None:
        self.run_dir, self.after = run_dir, after
        self.killed: tuple[int, int] | None = None  # (pid, epochs written by then)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _Killer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        history, lock = self.run_dir / "history.jsonl", self.run_dir / ".esper.lock"
        while not self._stop.is_set():
            try:
                epochs = history.read_bytes().count(b"\n")
                pid = int(json.loads(lock.read_text())["pid"])
            except (OSError, ValueError, KeyError):
                epochs, pid = 0, 0
            if epochs >= self.after and pid not in (0, os.getpid()):
                os.kill(pid, signal.SIGKILL)
                self.killed = (pid, epochs)
                return
            time.sleep(0.005)


def test_ray_tasks_give_the_runs_of_the_local_pool(
    ray: ModuleType, reference: dict[tuple[str, int], dict[str, Any]], tmp_path: Path
) -> None:
    out = tmp_path / "compare"
    assert compare(out, *ARMS, "--ray") == 0
    assert _runs(out) == reference
    # Written where local runs are: a rerun finds them all finished.
    assert (out / "runs" / "heuristic" / "seed-1" / "summary.json").is_file()
    assert (out / TOKEN_FILE).is_file()


def test_a_killed_run_is_retried_and_resumes_to_the_same_result(
    ray: ModuleType, reference: dict[tuple[str, int], dict[str, Any]], tmp_path: Path
) -> None:
    out = tmp_path / "compare"
    with _Killer(out / "runs" / "heuristic" / "seed-0") as killer:
        assert compare(out, "--arms", "heuristic", "--seeds", "1", "--ray") == 0
    assert killer.killed is not None and killer.killed[1] < 12, "the run was not killed mid-run"
    lock = json.loads((out / "runs" / "heuristic" / "seed-0" / ".esper.lock").read_text())
    assert lock["pid"] != killer.killed[0]  # finished by the retry, in another worker
    assert _runs(out) == {("heuristic", 0): reference[("heuristic", 0)]}


def test_a_run_that_keeps_failing_is_reported_and_a_rerun_resumes_it(
    ray: ModuleType,
    reference: dict[tuple[str, int], dict[str, Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "compare"
    flags = ["--arms", "static,heuristic", "--seeds", "1", "--ray"]
    with _Killer(out / "runs" / "heuristic" / "seed-0") as killer:
        assert compare(out, *flags, "--max-retries", "0") == 1  # no retry: it fails
    assert killer.killed is not None
    data = json.loads((out / "compare.json").read_text())
    outcome = {run["arm"]: run for run in data["runs"]}
    assert outcome["heuristic"]["summary"] is None
    assert "the Ray task failed 1 time(s)" in outcome["heuristic"]["error"]
    assert outcome["static"]["summary"] is not None  # the other run was not stopped
    assert "esper: run failed: heuristic seed 0" in capsys.readouterr().err
    # The same command continues it, from the checkpoint the killed worker left.
    assert compare(out, *flags) == 0
    assert _runs(out) == {key: reference[key] for key in (("static", 0), ("heuristic", 0))}


@pytest.fixture
def unshared(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Runs on Ray as if no node saw --out: each trains in its node's scratch directory
    and sends its run directory back. Yields the scratch root."""
    monkeypatch.setattr(esper.cli.compare, "RayPool", functools.partial(RayPool, shared=False))
    yield Path(tempfile.gettempdir()) / "esper-ray"


def test_without_a_shared_out_runs_come_back_and_a_local_run_resumes_on_ray(
    ray: ModuleType,
    reference: dict[tuple[str, int], dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    unshared: Path,
) -> None:
    out = tmp_path / "compare"
    with monkeypatch.context() as patch:  # a local compare, interrupted
        interrupt_at_save(patch, 12 + 3)  # epoch 3 of the second run
        assert compare(out, *ARMS, "--workers", "1") == 130
    assert compare(out, *ARMS, "--ray") == 0  # continued on "another machine"
    assert _runs(out) == reference
    for run_dir in (out / "runs").glob("*/seed-*"):
        assert {"config.json", "history.jsonl", "summary.json", "checkpoint.pt"} <= {
            p.name for p in run_dir.iterdir()
        }
        assert main(["report", str(run_dir)]) == 0  # an ordinary run directory
    token = (out / TOKEN_FILE).read_text().strip()
    assert not (unshared / token).exists()  # scratch copies removed


def test_gpus_the_cluster_lacks_and_workers_with_ray_exit_2(
    ray: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for flags, needle in (
        (["--gpus-per-run", "0.5"], "more GPUs than the Ray cluster has (0)"),
        (["--workers", "2"], "--workers is for the local pool"),
    ):
        capsys.readouterr()
        assert compare(tmp_path / "out", "--ray", *flags) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], lines
