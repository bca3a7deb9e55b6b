"""One arm on one seed: its task, its run directory (the cache) and its outcome.

Each arm x seed is an ordinary run directory under ``OUT/runs/<arm>/seed-<n>/`` (an arm
driven by a policy: ``OUT/runs/<arm>-<SHA-256 of the policy file, 12 digits>/``, so a
policy file that changed trains new runs and never reuses the old policy's). A
finished run is never trained again, and an interrupted one resumes from its last
checkpoint, so rerunning the same compare continues it. `run_task` is the one function
every pool calls, in a local worker process or a Ray task alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from esper.arms import Arm
from esper.config import RunConfig, from_dict, to_dict
from esper.controller import get_controller
from esper.run import RunError, finish_report, prepare_run_dir, read_config, run
from esper.telemetry.report import read_history

__all__ = ["RunOutcome", "RunTask", "cached_outcome", "run_task", "shared_settings", "task_for"]


@dataclass(frozen=True)
class RunTask:
    """One arm on one seed: where it runs and its full configuration (plain data)."""

    arm: str
    seed: int
    run_dir: str
    config: dict[str, Any]


@dataclass(frozen=True)
class RunOutcome:
    """A finished run's summary (``summary.json``), or why it failed."""

    arm: str
    seed: int
    run_dir: str
    summary: dict[str, Any] | None
    error: str | None = None
    cached: bool = False


def task_for(out: Path, base: RunConfig, arm: Arm, width: float, seed: int) -> RunTask:
    """``arm`` at width multiplier ``width`` on ``seed``: one torch thread, lifecycle
    telemetry, in ``out/runs/<arm>/seed-<seed>`` (a matched arm's folder names its width,
    a policy's arm the start of its file's SHA-256: another policy, other runs)."""
    config = _run_config(base, arm, width, seed)
    folder = arm.label if arm.width is not None else f"static@{width:g}"
    if config.policy_sha256 is not None:
        folder = f"{folder}-{config.policy_sha256[:12]}"
    run_dir = out / "runs" / folder / f"seed-{seed}"
    return RunTask(arm.label, seed, str(run_dir), to_dict(config))


def _run_config(base: RunConfig, arm: Arm, width: float, seed: int) -> RunConfig:
    """The arm's run on ``seed``, as its controller needs it (`ControllerSpec.configure`:
    the run directory saves what a rerun of the compare expects, so its cache holds)."""
    config = replace(
        base,
        controller=arm.controller,
        policy=arm.policy,
        width_multiplier=width,
        threads=1,
        telemetry_level="lifecycle",
        episode=replace(base.episode, seed=seed),
    )
    return get_controller(arm.controller).configure(config)


_SET_PER_RUN = (
    "controller",
    "policy",
    "policy_sha256",
    "width_multiplier",
    "threads",
    "telemetry_level",
)
"""Top-level `RunConfig` fields that `_run_config` sets for each arm (and the seed)."""


def shared_settings(base: RunConfig) -> dict[str, Any]:
    """What every run of a compare on ``base`` shares, as plain data: ``base`` without
    what `_run_config` sets for each arm and seed (controller, policy, width, threads,
    telemetry level, seed)."""
    data: dict[str, Any] = to_dict(base)
    for key in _SET_PER_RUN:
        data.pop(key)
    data["episode"].pop("seed")
    return data


def cached_outcome(task: RunTask) -> RunOutcome | None:
    """The outcome of ``task`` if its run directory already holds it finished (or was
    trained with other settings: an error outcome); None if it still has to run."""
    run_dir = Path(task.run_dir)
    try:
        config = from_dict(RunConfig, task.config)
        if not (run_dir / "config.json").is_file():
            return None
        if read_config(run_dir) != config:
            raise RunError(
                f"{run_dir} was trained with other settings; delete it or use another --out"
            )
        finished = _finished(run_dir, config.episode.epochs)
        if finished is not None:
            return RunOutcome(task.arm, task.seed, task.run_dir, finished, cached=True)
    except Exception as error:  # reported per run; the compare goes on
        return _failed(task, error)
    return None


def run_task(task: RunTask) -> RunOutcome:
    """Train one arm on one seed, or reuse its finished run, or resume its interrupted one.

    Runs in a worker process; failures come back as an outcome, not an exception, so one
    bad run never stops the others.
    """
    cached = cached_outcome(task)
    if cached is not None:
        return cached
    run_dir = Path(task.run_dir)
    try:
        config = from_dict(RunConfig, task.config)
        if (run_dir / "config.json").is_file():  # the same settings: cached_outcome checked
            # Interrupted: resume from its last checkpoint (or from epoch 1 if it had none).
            summary = run(run_dir, None)
        else:
            summary = run(prepare_run_dir(run_dir), config)
        return RunOutcome(task.arm, task.seed, task.run_dir, summary)
    except Exception as error:  # reported per run; the compare goes on
        return _failed(task, error)


def _failed(task: RunTask, error: Exception) -> RunOutcome:
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    return RunOutcome(task.arm, task.seed, task.run_dir, None, error=message)


def _finished(run_dir: Path, epochs: int) -> dict[str, Any] | None:
    """The summary of a run that trained all ``epochs`` (rebuilt from its history if it
    stopped before writing it), or None."""
    path = run_dir / "summary.json"
    if path.is_file():
        summary: dict[str, Any] = json.loads(path.read_text())
        if summary.get("epochs") == epochs:
            return summary
    if (run_dir / "history.jsonl").is_file():
        rows = read_history(run_dir / "history.jsonl")
        if rows and rows[-1].epoch == epochs:
            return finish_report(run_dir)
    return None
