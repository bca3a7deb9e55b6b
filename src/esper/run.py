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
from typing import Any, Protocol

import torch

from esper.config import ConfigError, RunConfig, from_dict, observing_every_seed, to_dict
from esper.contracts import Controller
from esper.controller import HeuristicController, StaticController
from esper.machine import auto_threads
from esper.model.blueprints import blueprint_names
from esper.model.morphogenetic import MorphogeneticModel
from esper.rl.agent import PolicyController, PolicyError, load_policy
from esper.rundir import (
    CHECKPOINT,
    Checkpoint,
    LineFile,
    RunDirectory,
    RunError,
    RunFailedError,
    atomic_write,
    read_lines,
)
from esper.telemetry import (
    JsonlSink,
    RunFinished,
    RunStarted,
    Sink,
    Telemetry,
    TelemetryLevel,
)
from esper.telemetry.report import EpochRow, SlotRow, plot_timeline, read_history
from esper.telemetry.report import summarize as summarize_rows
from esper.training.batches import SplitBatches
from esper.training.builders import build_model, load_data
from esper.training.episode import EpisodeRunner, EpochRecord
from esper.training.governor import GovernorStopError
from esper.training.tasks import TaskOptions, get_task

__all__ = [
    "CHECKPOINT",
    "RunError",
    "RunFailedError",
    "StatefulController",
    "finish_report",
    "prepare_run_dir",
    "read_config",
    "run",
]

log = logging.getLogger("esper")


class StatefulController(Controller, Protocol):
    """A controller whose state goes into checkpoints (plain data only)."""

    last_reason: str

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


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
        return from_dict(RunConfig, json.loads(path.read_text()))
    except json.JSONDecodeError as error:
        raise RunError(f"{path} is not valid JSON ({error})") from None
    except ConfigError as error:
        raise RunError(f"{path}: {error}") from None


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RunError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(
            f"device {name!r} asked for, but CUDA is not available here; use --device cpu"
        )
    return device


@dataclass
class _Run:
    config: RunConfig
    runner: EpisodeRunner
    controller: StatefulController


def _build(config: RunConfig, telemetry: Telemetry) -> _Run:
    if config.controller == "ppo":
        config = observing_every_seed(config)
    spec = get_task(config.task)
    options = TaskOptions(
        data_dir=Path(config.data_dir) if config.data_dir else None,
        text_file=Path(config.text_file) if config.text_file else None,
    )
    device = _device(config.device)
    if isinstance(config.threads, int):
        torch.set_num_threads(config.threads)
    split = load_data(spec, options)
    episode = config.episode
    torch.manual_seed(episode.seed)
    model = build_model(spec, split, config.slots, episode.lifecycle, config.width_multiplier)
    model.to(device)
    data = SplitBatches(split, config.batch_size, episode.seed, augment=spec.augment)
    runner = EpisodeRunner(model, data, episode, telemetry, device)
    if config.threads == "auto" and device.type == "cpu":
        # The model's work per training step decides; the count is saved with the config
        # (config.json), so a resumed run does its arithmetic in the same order.
        items = config.batch_size * (split.block_size or 1)  # scored items per batch
        threads = auto_threads(runner.compute.host_train * items)
        torch.set_num_threads(threads)
        config = replace(config, threads=threads)
    controller: StatefulController
    if config.controller == "baseline":
        controller = StaticController()
    elif config.controller == "ppo":
        if config.policy is None:
            raise RunError("controller ppo needs a policy: pass --policy DIR")
        try:
            policy, meta = load_policy(Path(config.policy), config.task, model.slot_ids)
        except PolicyError as error:
            raise RunError(str(error)) from None
        controller = PolicyController(policy, meta, data.random_guess_loss)
    else:
        try:
            controller = HeuristicController(
                blueprint_names(spec.topology),
                config.heuristic,
                episode.lifecycle,
            )
        except ValueError as error:
            raise RunError(f"heuristic.blueprints: {error}") from None
    return _Run(config, runner, controller)


def _row(record: EpochRecord, runner: EpisodeRunner, reason: str) -> EpochRow:
    model: MorphogeneticModel = runner.model
    slots = {
        s.slot_id: SlotRow(
            stage=s.stage.name,
            blueprint=s.state.blueprint_id,
            alpha=s.alpha,
            contribution=None if measured is None else measured.pp,
            params=s.seed_param_count(),
            contribution_se=None if measured is None else measured.se,
        )
        for s in model.slots()
        for measured in [record.contributions.get(s.slot_id)]
    }
    action = record.action
    words = [action.op.name, action.slot or "", action.blueprint or ""]
    if action.op.name != "GERMINATE":
        words = words[:2]
    return EpochRow(
        epoch=record.epoch,
        train_loss=record.train.loss,
        train_accuracy=record.train.accuracy,
        val_loss=record.val.loss,
        val_accuracy=record.val.accuracy,
        action=" ".join(w for w in words if w),
        outcome=record.outcome,
        reason=reason,
        reward=record.reward.total,
        rollback=record.rollback,
        host_params=model.host_params,
        seed_params=model.active_seed_params,
        seconds=runner.wall_seconds,
        germinated=runner.germinated,
        fossilized=runner.fossilized,
        culled=runner.culled,
        slots=slots,
        train_flops=record.train_flops,
        eval_flops=record.eval_flops,
        epoch_seconds=record.seconds,
    )


def _save_checkpoint(directory: RunDirectory, run: _Run, history: LineFile) -> None:
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
    extra_sinks: Sequence[Sink],
    on_epoch: Callable[[EpochRow], None],
    warn: Callable[[str], None] = log.warning,
) -> dict[str, Any]:
    """Run (``config`` given) or resume (``config`` None) the run in ``run_dir``.

    The directory is locked for the whole run (a second run on it gets `RunError`
    naming this one). Resuming continues from the newest intact checkpoint of this run
    that agrees with ``history.jsonl`` (``warn`` is told when an older one is used), or
    from epoch 1 if the run stopped before its first checkpoint. ``on_epoch`` is called
    after every epoch with its history row (progress display). Returns the summary,
    also written to ``summary.json``. Raises `RunFailedError` when the run has to stop: the
    disk is full, or the governor met a fault that rolling back does not fix.
    """
    opener = RunDirectory.open if config is None else RunDirectory.create
    with opener(run_dir) as directory:
        config, checkpoint, kept = _start(directory, config, warn)
        try:
            _train(directory, config, checkpoint, kept, extra_sinks, on_epoch)
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
    on_epoch: Callable[[EpochRow], None],
) -> None:
    """Build the run, load ``checkpoint`` (or start it), and train to the last epoch."""
    run_dir = directory.path
    level = TelemetryLevel.parse(config.telemetry_level)
    sinks: list[Sink] = [JsonlSink(run_dir / "events.jsonl"), *extra_sinks]
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
        history = LineFile(run_dir / "history.jsonl", history_lines)
        while not runner.done:
            observation = runner.observe()
            action = controller.decide(observation.signals, observation.slots)
            record = runner.apply(action, controller.last_reason)
            row = _row(record, runner, controller.last_reason)
            history.append(row.to_json())
            _save_checkpoint(directory, built, history)
            on_epoch(row)
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
        f"final {summary['final_accuracy']:.2f}%, best {summary['best_accuracy']:.2f}%"
    )
    plot_timeline(rows, run_dir / "timeline.png", title)
    return summary
