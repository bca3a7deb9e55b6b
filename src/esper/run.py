"""A run of the ``esper`` command: its directory, checkpoints, history and resume.

A run directory holds::

    config.json     the resolved RunConfig (what `--resume` and `esper report` read)
    events.jsonl    telemetry events at the chosen level
    history.jsonl   one row per epoch, at every telemetry level
    checkpoint.pt   everything needed to continue, replaced atomically every epoch
    summary.json    final numbers (rewritten at the end, or by `esper report`)
    timeline.png    accuracy, stages and alphas over epochs
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from esper.config import ConfigError, RunConfig, from_dict, to_dict
from esper.contracts import Controller
from esper.controller import HeuristicController, StaticController
from esper.model.blueprints import blueprint_names
from esper.model.morphogenetic import MorphogeneticModel
from esper.telemetry import (
    JsonlSink,
    RunFinished,
    RunStarted,
    Sink,
    Telemetry,
    TelemetryLevel,
)
from esper.telemetry.report import EpochRow, SlotRow, append_row, plot_timeline, read_history
from esper.telemetry.report import summarize as summarize_rows
from esper.training.batches import SplitBatches
from esper.training.episode import EpisodeRunner, EpochRecord
from esper.training.tasks import TaskOptions, get_task

__all__ = [
    "RunError",
    "StatefulController",
    "finish_report",
    "prepare_run_dir",
    "read_config",
    "run",
]

CHECKPOINT = "checkpoint.pt"


class RunError(RuntimeError):
    """A run that cannot start or continue; the message says what to do."""


class StatefulController(Controller, Protocol):
    """A controller whose state goes into checkpoints."""

    last_reason: str

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def prepare_run_dir(out: Path) -> Path:
    """Create ``out`` for a new run; refuse to overwrite an existing run."""
    if (out / "config.json").exists():
        raise RunError(
            f"{out} already holds a run; continue it with --resume {out} or pick another --out"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
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
    spec = get_task(config.task)
    options = TaskOptions(
        data_dir=Path(config.data_dir) if config.data_dir else None,
        text_file=Path(config.text_file) if config.text_file else None,
    )
    device = _device(config.device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    split = spec.load(options)
    episode = config.episode
    torch.manual_seed(episode.seed)
    model = spec.build_model(split, config.slots, episode.lifecycle, config.width_multiplier)
    model.to(device)
    data = SplitBatches(split, config.batch_size, episode.seed, augment=spec.augment)
    runner = EpisodeRunner(model, data, episode, telemetry, device)
    controller: StatefulController
    if config.controller == "baseline":
        controller = StaticController()
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


def _save_checkpoint(run_dir: Path, run: _Run) -> None:
    state = {
        "epoch": run.runner.epoch,
        "runner": run.runner.state_dict(),
        "controller": run.controller.state_dict(),
    }
    # Write next to the target, then rename: a crash never leaves a half-written file.
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".checkpoint-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
        os.replace(tmp, run_dir / CHECKPOINT)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _truncate_jsonl(path: Path, last_epoch: int) -> None:
    """Drop lines about epochs after ``last_epoch`` (written after the last checkpoint)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            epoch = json.loads(line).get("epoch")
        except json.JSONDecodeError:
            continue  # a line cut short by the interruption
        if epoch is None or epoch <= last_epoch:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def run(
    run_dir: Path,
    config: RunConfig | None,
    extra_sinks: Sequence[Sink],
    on_epoch: Callable[[EpochRow], None],
) -> dict[str, Any]:
    """Run (``config`` given) or resume (``config`` None) the run in ``run_dir``.

    ``on_epoch`` is called after every epoch with its history row (progress display).
    Returns the summary, also written to ``summary.json``.
    """
    resuming = config is None
    if config is None:
        config = read_config(run_dir)
        if not (run_dir / CHECKPOINT).is_file():
            raise RunError(
                f"{run_dir} has no {CHECKPOINT} to resume from (it stopped before epoch 1 ended)"
            )
    level = TelemetryLevel.parse(config.telemetry_level)
    sinks: list[Sink] = [JsonlSink(run_dir / "events.jsonl"), *extra_sinks]
    history = run_dir / "history.jsonl"
    with Telemetry(level, sinks) as telemetry:
        built = _build(config, telemetry)
        runner, controller = built.runner, built.controller
        if resuming:
            state = torch.load(run_dir / CHECKPOINT, weights_only=False, map_location=runner.device)
            if state["epoch"] >= config.episode.epochs:
                raise RunError(
                    f"{run_dir} finished all {config.episode.epochs} epochs; "
                    f"see its results with: esper report {run_dir}"
                )
            runner.load_state_dict(state["runner"])
            controller.load_state_dict(state["controller"])
            _truncate_jsonl(history, state["epoch"])
            _truncate_jsonl(run_dir / "events.jsonl", state["epoch"])
        else:
            # Written only once the data and model are built, so a run that cannot start
            # leaves no config.json behind to block the corrected command.
            (run_dir / "config.json").write_text(json.dumps(to_dict(config), indent=2) + "\n")
            history.write_text("")
            telemetry.emit(
                RunStarted(run_dir.name, config.task, config.controller, to_dict(config))
            )
        while not runner.done:
            observation = runner.observe()
            record = runner.apply(controller.decide(observation.signals, observation.slots))
            row = _row(record, runner, controller.last_reason)
            append_row(history, row)
            _save_checkpoint(run_dir, built)
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
    return finish_report(run_dir)


def finish_report(run_dir: Path) -> dict[str, Any]:
    """Rebuild ``summary.json`` and ``timeline.png`` from the run's history."""
    config = read_config(run_dir)
    history = run_dir / "history.jsonl"
    if not history.is_file():
        raise RunError(f"{run_dir} has no history.jsonl: the run never finished an epoch")
    rows = read_history(history)
    if not rows:
        raise RunError(f"{run_dir}: no epoch has finished yet, nothing to report")
    summary = {
        "run": run_dir.name,
        "task": config.task,
        "controller": config.controller,
        "epochs_planned": config.episode.epochs,
        **summarize_rows(rows),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    title = (
        f"{config.controller} on {config.task}, seed {config.episode.seed}: "
        f"final {summary['final_accuracy']:.2f}%, best {summary['best_accuracy']:.2f}%"
    )
    plot_timeline(rows, run_dir / "timeline.png", title)
    return summary
