"""A run of the ``esper`` command: its directory, checkpoints, history and resume.

A run directory holds::

    config.json         the resolved RunConfig (what `--resume` and `esper report` read)
    events.jsonl        telemetry events at the chosen level
    history.jsonl       one row per epoch, at every telemetry level
    checkpoint.pt       everything needed to continue, replaced atomically every epoch
    checkpoint.prev.pt  the generation before it
    summary.json        final numbers (rewritten at the end, or by `esper report`)
    timeline.png        accuracy, stages and alphas over epochs
    .esper-run          marker: an Esper run directory (Esper writes into no other)
    .esper.lock         held by the process running it (see `esper.rundir`)

`esper.rundir` does the careful file work (lock, marker, verified checkpoint
generations, atomic rewrites); this module decides what a run writes and when.
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from esper.config import ConfigError, RunConfig, from_dict, to_dict
from esper.contracts import StatefulController
from esper.machine import auto_threads
from esper.model.export import export_network
from esper.rundir import (
    CHECKPOINT,
    Checkpoint,
    RunDirectory,
    RunError,
    RunFailedError,
    atomic_write,
    read_lines,
    save_atomic,
)
from esper.telemetry import (
    HistorySink,
    JsonlSink,
    RunFinished,
    RunStarted,
    Sink,
    Telemetry,
    TelemetryLevel,
)
from esper.telemetry.report import plot_timeline, read_history
from esper.telemetry.report import summarize as summarize_rows
from esper.training.builders import build_episode, build_run_controller, load_data, task_options
from esper.training.episode import EpisodeRunner
from esper.training.governor import GovernorStopError
from esper.training.tasks import get_task

__all__ = [
    "CHECKPOINT",
    "NETWORK_FILE",
    "RunError",
    "RunFailedError",
    "export_run",
    "finish_report",
    "prepare_run_dir",
    "read_config",
    "run",
]

log = logging.getLogger("esper")

HISTORY = "history.jsonl"
NETWORK_FILE = "network.pt"
"""Where ``esper export`` writes a run's network by default."""


def prepare_run_dir(out: Path) -> Path:
    """Create ``out`` for a new run: it must not exist, be empty, or be an Esper run
    directory that never started; never an existing run or someone else's directory."""
    RunDirectory.check_new(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".esper-write-test.tmp"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise RunError(
            f"cannot write the run directory {out} ({error.strerror}); choose a writable --out"
        ) from None
    return out


def read_config(run_dir: Path) -> RunConfig:
    path = run_dir / "config.json"
    if not path.is_file():
        if (run_dir / ".esper-run").is_file():
            raise RunError(
                f"{run_dir} holds no run yet (it stopped before it started); start it "
                f"again with --out {run_dir}"
            )
        raise RunError(f"{run_dir} is not a run directory (no config.json)")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise RunError(f"{path} is not UTF-8 text; it is not a config.json Esper wrote") from None
    except (ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError
        raise RunError(f"{path} is not valid JSON ({str(error)[:200]})") from None
    try:
        config: RunConfig = from_dict(RunConfig, data)
    except ConfigError as error:
        raise RunError(f"{path}: {error}") from None
    return config


@dataclass
class _Run:
    config: RunConfig
    runner: EpisodeRunner
    controller: StatefulController


def _build(config: RunConfig, telemetry: Telemetry) -> _Run:
    """The run's episode and controller (`build_episode`, `build_run_controller`), and
    its configuration with the thread count --threads auto chose."""
    if isinstance(config.threads, int):
        torch.set_num_threads(config.threads)
    runner = build_episode(config, telemetry=telemetry)
    if config.threads == "auto" and runner.device.type == "cpu":
        # The model's work per training step decides; the count is saved with the config
        # (config.json), so a resumed run does its arithmetic in the same order.
        targets = runner.compute.probe[1]  # [B] labels, or [B, T] tokens
        items = config.batch_size * targets[0].numel()  # scored items per batch
        threads = auto_threads(runner.compute.host_train * items)
        torch.set_num_threads(threads)
        config = replace(config, threads=threads)
    try:
        controller = build_run_controller(config, runner)
    except ValueError as error:
        raise RunError(str(error).splitlines()[0]) from None
    return _Run(config, runner, controller)


def _save_checkpoint(directory: RunDirectory, run: _Run, history: HistorySink) -> None:
    config = run.config
    identity = directory.identity(config.controller, config.task, to_dict(config))
    state = {"runner": run.runner.state_dict(), "controller": run.controller.state_dict()}
    directory.save_checkpoint(Checkpoint(identity, run.runner.epoch, history.digest, state))


def _keep_events(path: Path, last_epoch: int) -> None:
    """Atomically drop the events of epochs after ``last_epoch`` (written after the
    checkpoint), or every event when the run restarts from scratch (``last_epoch`` 0)."""
    kept = []
    for line in read_lines(path) if last_epoch > 0 else []:
        try:
            epoch = json.loads(line).get("epoch")
        except ValueError:
            continue
        if epoch is None or epoch <= last_epoch:
            kept.append(line)
    atomic_write(path, b"".join(kept))


def _write_failure(error: OSError, run_dir: Path, config: RunConfig, saved: int) -> str:
    code = error.errno or getattr(error.__cause__, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        reason = "the disk is full"
    else:
        reason = error.strerror or str(error).splitlines()[0]
    kept = f"its checkpoint of epoch {saved} is intact" if saved else "no epoch was saved yet"
    return (
        f"cannot write to {run_dir} ({reason}); {kept}: make room, then continue with: "
        f"esper {config.controller} --resume {run_dir}"
    )


def _start(
    directory: RunDirectory, config: RunConfig | None, warn: Callable[[str], None]
) -> tuple[RunConfig, Checkpoint | None, list[bytes]]:
    """The configuration, the checkpoint to continue from (None: epoch 1) and the
    history lines to keep; rewrites history and events to match, atomically."""
    run_dir = directory.path
    history, events = run_dir / "history.jsonl", run_dir / "events.jsonl"
    checkpoint = None
    lines = read_lines(history)
    if config is None:
        config = read_config(run_dir)
        identity = directory.identity(config.controller, config.task, to_dict(config))
        checkpoint = directory.load_checkpoint(identity, lines, warn)
        if checkpoint is not None and checkpoint.epoch >= config.episode.epochs:
            raise RunError(
                f"{run_dir} finished all {config.episode.epochs} epochs; "
                f"see its results with: esper report {run_dir}"
            )
        if checkpoint is None and lines:
            warn(f"{run_dir} has no checkpoint yet: the run restarts from epoch 1")
    epoch = checkpoint.epoch if checkpoint is not None else 0
    kept = lines[:epoch]
    atomic_write(history, b"".join(kept))
    _keep_events(events, epoch)
    return config, checkpoint, kept


def run(
    run_dir: Path,
    config: RunConfig | None,
    extra_sinks: Sequence[Sink] = (),
    warn: Callable[[str], None] = log.warning,
) -> dict[str, Any]:
    """Run (``config`` given) or resume (``config`` None) the run in ``run_dir``.

    The directory is locked for the whole run (a second run on it gets `RunError`
    naming this one). Resuming continues from the newest intact checkpoint of this run
    that agrees with ``history.jsonl`` (``warn`` is told when an older one is used), or
    from epoch 1 if the run stopped before its first checkpoint. ``extra_sinks`` receive
    the run's events besides ``events.jsonl`` and ``history.jsonl`` (a progress display,
    TensorBoard); every epoch's `EpochCompleted` reaches those with a ``level`` of their
    own whatever the telemetry level. Returns the summary, also written to
    ``summary.json``. Raises `RunFailedError` when the run has to stop: the disk is
    full, or the governor met a fault that rolling back does not fix.
    """
    opener = RunDirectory.open if config is None else RunDirectory.create
    with opener(run_dir) as directory:
        config, checkpoint, kept = _start(directory, config, warn)
        try:
            _train(directory, config, checkpoint, kept, extra_sinks)
            return finish_report(run_dir)
        except GovernorStopError as error:
            raise RunFailedError(
                f"{error}. The checkpoint of epoch {directory.saved_epoch} is intact; see the "
                f"run so far with: esper report {run_dir}"
            ) from None
        except OSError as error:
            if error.filename and run_dir.resolve() not in Path(error.filename).resolve().parents:
                raise  # not the run directory's fault (e.g. unreadable data)
            message = _write_failure(error, run_dir, config, directory.saved_epoch)
            raise RunFailedError(message) from None


def _train(
    directory: RunDirectory,
    config: RunConfig,
    checkpoint: Checkpoint | None,
    history_lines: list[bytes],
    extra_sinks: Sequence[Sink],
) -> None:
    """Build the run, load ``checkpoint`` (or start it), and train to the last epoch."""
    run_dir = directory.path
    level = TelemetryLevel.parse(config.telemetry_level)
    history = HistorySink(run_dir / "history.jsonl", history_lines)
    sinks: list[Sink] = [history, JsonlSink(run_dir / "events.jsonl"), *extra_sinks]
    with Telemetry(level, sinks) as telemetry:
        built = _build(config, telemetry)
        config, runner, controller = built.config, built.runner, built.controller
        if checkpoint is not None:
            runner.load_state_dict(checkpoint.state["runner"])
            controller.load_state_dict(checkpoint.state["controller"])
        else:
            # Written only once the data and model are built, so a run that cannot
            # start leaves no config.json behind to block the corrected command.
            text = json.dumps(to_dict(config), indent=2) + "\n"
            atomic_write(run_dir / "config.json", text.encode())
            telemetry.emit(
                RunStarted(run_dir.name, config.task, config.controller, to_dict(config))
            )
        while not runner.done:
            observation = runner.observe()
            runner.apply(controller.decide(observation.signals, observation.slots))
            _save_checkpoint(
                directory, built, history
            )  # after the history row: it holds its digest
        result = runner.result()
        telemetry.emit(
            RunFinished(
                len(result.history),
                result.final_accuracy,
                result.best_accuracy,
                result.wall_seconds,
                result.seeds_germinated,
                result.seeds_fossilized,
                result.seeds_culled,
                result.test_accuracy,
            )
        )


def finish_report(run_dir: Path) -> dict[str, Any]:
    """Rebuild ``summary.json`` and ``timeline.png`` from the run's history."""
    config = read_config(run_dir)
    history = run_dir / "history.jsonl"
    if not history.is_file():
        raise RunError(f"{run_dir} has no history.jsonl: the run never finished an epoch")
    try:
        rows = read_history(history)
    except ValueError as error:
        raise RunError(f"{error}; the history file is damaged") from None
    if not rows:
        raise RunError(f"{run_dir}: no epoch has finished yet, nothing to report")
    summary = {
        "run": run_dir.name,
        "task": config.task,
        "controller": config.controller,
        "epochs_planned": config.episode.epochs,
        **summarize_rows(rows),
    }
    atomic_write(run_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    title = (
        f"{config.controller} on {config.task}, seed {config.episode.seed}: "
        f"{_test_text(summary)}final val {summary['final_accuracy']:.2f}%, "
        f"best val {summary['best_accuracy']:.2f}%"
    )
    plot_timeline(rows, run_dir / "timeline.png", title)
    return summary


def _test_text(summary: dict[str, Any]) -> str:
    test = summary.get("test_accuracy")
    return "" if test is None else f"test {test:.2f}%, "


def export_run(run_dir: Path, out: Path | None, warn: Callable[[str], None] = log.warning) -> Path:
    """Write the network of the run in ``run_dir`` (its newest intact checkpoint) to
    ``out`` (default ``run_dir/network.pt``) as a plain model (`esper.load_model` builds
    it). A run that has not finished is exported as it stands, and ``warn`` says so."""
    with RunDirectory.open(run_dir) as directory:
        config = read_config(run_dir)
        identity = directory.identity(config.controller, config.task, to_dict(config))
        checkpoint = directory.load_checkpoint(identity, read_lines(run_dir / HISTORY), warn)
        if checkpoint is None:
            raise RunError(f"{run_dir} has no checkpoint yet: it never finished an epoch")
        if checkpoint.epoch < config.episode.epochs:
            warn(f"{run_dir} stopped at epoch {checkpoint.epoch} of {config.episode.epochs}")
        spec = get_task(config.task)
        split = load_data(spec, task_options(config))
        runner = build_episode(config, split)
        runner.load_state_dict(checkpoint.state["runner"])
        kwargs = spec.host_kwargs(split, config.width_multiplier)
        network = export_network(runner.model, spec.host, kwargs)
        target = out or run_dir / NETWORK_FILE
        save_atomic(target, network)
    return target
