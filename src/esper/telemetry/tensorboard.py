"""TensorBoard event files of a run or a PPO training, for ``--tensorboard``.

Nothing here is a second record: the scalars are the epochs a run records
(`RunTensorBoard` is a telemetry `Sink`: each `EpochCompleted`, the line
``history.jsonl`` holds, is one step) or the rows a training appends to
``updates.jsonl`` (`TrainingTensorBoard.write_update`, one step per training episode
count), and the text is the lifecycle events of ``events.jsonl``. Both write to
``DIR/tensorboard/``, so ``tensorboard --logdir runs`` lays runs side by side.

Files are opened at the first step written, with that step as TensorBoard's *purge
step*: TensorBoard drops what earlier files hold from that step on. A resumed run
replays the epochs its files keep (from epoch 1) before it trains on, so its curves are
exactly its history, whatever an interrupted attempt had written; a resumed training
continues after its last saved update, the step its rows restart from.

Needs the ``tensorboard`` package (``pip install 'esper[tensorboard]'``); it is imported
only when a writer is made, and `require_tensorboard` says in one line when it is missing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from esper.telemetry.events import (
    EpochCompleted,
    Event,
    RunFinished,
    RunStarted,
    SeedGradients,
    TelemetryLevel,
    event_from_dict,
)
from esper.telemetry.report import read_history
from esper.telemetry.sinks import SinkError, format_event
from esper.telemetry.updates import UPDATES_FILE, UpdateRow, read_updates

__all__ = [
    "TENSORBOARD_DIR",
    "RunTensorBoard",
    "TrainingTensorBoard",
    "epoch_scalars",
    "require_tensorboard",
    "update_scalars",
]

TENSORBOARD_DIR = "tensorboard"
"""Where in a run or training directory the event files go."""


def require_tensorboard() -> Any:
    """torch's ``SummaryWriter`` class; `SinkError` (one line, the fix) without tensorboard."""
    try:
        # An optional extra: imported only when --tensorboard asks for it.
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SinkError(
            "--tensorboard needs the tensorboard package: pip install 'esper[tensorboard]' "
            "(or drop --tensorboard)"
        ) from None
    return SummaryWriter


def epoch_scalars(row: EpochCompleted, train_flops: float, eval_flops: float) -> dict[str, float]:
    """One epoch's scalars by TensorBoard tag; ``train_flops`` and ``eval_flops`` are the
    run's totals up to and including this epoch."""
    scalars = {
        "accuracy/validation": row.val_accuracy,
        "accuracy/train": row.train_accuracy,
        "loss/validation": row.val_loss,
        "loss/train": row.train_loss,
        "controller/reward": row.reward,
        "params/total": float(row.params),
        "params/seeds": float(row.seed_params),
        "seeds/germinated": float(row.germinated),
        "seeds/fossilized": float(row.fossilized),
        "seeds/culled": float(row.culled),
        "compute/train_flops": train_flops,
        "compute/eval_flops": eval_flops,
        "time/epoch_seconds": row.epoch_seconds,
    }
    for slot_id, slot in row.slots.items():
        scalars[f"slots/{slot_id}/alpha"] = slot.alpha
        if slot.contribution is not None:
            scalars[f"slots/{slot_id}/contribution_pp"] = slot.contribution
    return scalars


def update_scalars(row: UpdateRow) -> dict[str, float]:
    """One PPO update's scalars by TensorBoard tag."""
    names = (
        "mean_return",
        "mean_final_accuracy",
        "mean_added_params",
        "mean_seeds_kept",
        "illegal_fraction",
        "learning_rate",
        "policy_loss",
        "value_loss",
        "entropy",
        "approx_kl",
        "approx_kl_last",
        "clip_fraction",
        "ratio_min",
        "ratio_max",
        "explained_variance",
    )
    scalars = {f"ppo/{name}": float(getattr(row, name)) for name in names}
    scalars["time/rollout_seconds"] = row.rollout_seconds
    scalars["time/update_seconds"] = row.update_seconds
    return scalars


class _Writer:
    """A ``SummaryWriter`` opened at the first step written (its purge step)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._class = require_tensorboard()
        self._writer: Any = None

    def _open(self, step: int) -> Any:
        if self._writer is None:
            try:
                self._writer = self._class(str(self.log_dir), purge_step=step)
            except OSError as error:
                raise SinkError(
                    f"cannot write TensorBoard files to {self.log_dir} ({error.strerror}); "
                    "make it writable or drop --tensorboard"
                ) from None
        return self._writer

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        writer = self._open(step)
        for tag, value in values.items():
            writer.add_scalar(tag, value, step)

    def text(self, tag: str, lines: list[str], step: int) -> None:
        # Markdown: two trailing spaces keep one event per line.
        self._open(step).add_text(tag, "  \n".join(lines), step)

    def flush(self) -> None:
        # Every step, not every two minutes (the default): a live TensorBoard shows it.
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class RunTensorBoard:
    """TensorBoard files of one run: every epoch's scalars and, as text, its lifecycle
    events and gate verdicts (a telemetry `Sink`; the run closes it). ``level`` is the
    sink's own (at least NORMAL, so it sees every epoch whatever the run's telemetry
    level; DEBUG adds the seeds' gradient statistics).

    At the first epoch it sees, it first replays the epochs that ``history.jsonl`` and
    ``events.jsonl`` already hold (a resumed run, or ``--tensorboard`` added on resume),
    so TensorBoard always shows what the run's files say, from epoch 1.
    """

    def __init__(self, run_dir: Path, level: TelemetryLevel = TelemetryLevel.NORMAL) -> None:
        self.run_dir = run_dir
        self.level = max(level, TelemetryLevel.NORMAL)
        self._writer = _Writer(run_dir / TENSORBOARD_DIR)
        self._pending: list[str] = []
        self._totals = (0.0, 0.0)
        self._started = False

    def emit(self, event: Event) -> None:
        """An epoch's scalars, with the events collected since the last epoch as text;
        gradient statistics are scalars."""
        if isinstance(event, RunStarted):
            # The configuration as a Markdown code block (indented four spaces).
            config = json.dumps(event.config, indent=2).replace("\n", "\n    ")
            title = f"{event.controller} on {event.task}"
            self._writer.text("run", [title, "", "    " + config], 0)
            return
        if isinstance(event, RunFinished):
            self._writer.text("run", [format_event(event)], event.epochs)
            self._writer.flush()
            return
        self._start(event.epoch)
        if isinstance(event, EpochCompleted):
            self._row(event)
            self._writer.flush()
        else:
            self._event(event)

    def _event(self, event: Event) -> None:
        if isinstance(event, EpochCompleted | RunStarted | RunFinished):
            return
        if isinstance(event, SeedGradients):
            prefix = f"gradients/{event.slot}"
            values = {
                f"{prefix}/mean_norm": event.gradients.mean_norm,
                f"{prefix}/seed_host_ratio": event.gradients.ratio,
            }
            self._writer.scalars(values, event.epoch)
        else:
            self._pending.append(format_event(event))

    def _row(self, row: EpochCompleted) -> None:
        train, evaluation = self._totals
        self._totals = (train + row.train_flops, evaluation + row.eval_flops)
        self._writer.scalars(epoch_scalars(row, *self._totals), row.epoch)
        if self._pending:
            self._writer.text("lifecycle", self._pending, row.epoch)
            self._pending = []

    def _start(self, epoch: int) -> None:
        """Before the first epoch this process writes: replay the earlier ones."""
        if self._started:
            return
        self._started = True
        events: dict[int, list[Event]] = {}
        for event in _read_events(self.run_dir / "events.jsonl"):
            number = getattr(event, "epoch", None)
            if isinstance(number, int) and not isinstance(event, RunFinished) and number < epoch:
                events.setdefault(number, []).append(event)
        try:
            rows = [r for r in read_history(self.run_dir / "history.jsonl") if r.epoch < epoch]
        except (OSError, ValueError):
            rows = []  # the run itself refuses a damaged history; nothing to replay
        for row in rows:
            for event in events.get(row.epoch, []):
                self._event(event)
            self._row(row)
        self._pending = []

    def close(self) -> None:
        self._writer.close()


def _read_events(path: Path) -> list[Event]:
    """The events of ``events.jsonl`` that parse (a line cut short is no event)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    events = []
    for line in lines:
        try:
            data = json.loads(line)
            events.append(event_from_dict(data))
        except (ValueError, TypeError, AttributeError):
            continue
    return events


class TrainingTensorBoard:
    """TensorBoard files of an ``esper ppo train`` directory: each update's scalars at
    the number of training episodes so far (comparable across ``--envs``). Like
    `RunTensorBoard`, it first replays the updates ``updates.jsonl`` already holds."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self._writer = _Writer(out / TENSORBOARD_DIR)
        self._started = False

    def write_update(self, row: UpdateRow) -> None:
        if not self._started:
            self._started = True
            try:
                earlier = read_updates(self.out / UPDATES_FILE)
            except ValueError:
                earlier = []  # a damaged file: show what this process trains
            for old in earlier:
                if old.update < row.update:
                    self._writer.scalars(update_scalars(old), old.episodes)
        self._writer.scalars(update_scalars(row), row.episodes)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
