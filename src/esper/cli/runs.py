"""One run of a task with a registered controller (``esper heuristic``, ``esper
baseline``, ``esper ppo run``), and ``esper report``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from esper.cli.common import Terminated, print_error
from esper.config import RunConfig, shortcuts
from esper.controller import get_controller
from esper.lifecycle import SeedStage
from esper.run import RunError, finish_report, prepare_run_dir, read_config, run
from esper.telemetry import ConsoleSink, EpochCompleted, Event, Sink, TelemetryLevel
from esper.telemetry.report import format_flops
from esper.telemetry.tensorboard import TENSORBOARD_DIR, RunTensorBoard, require_tensorboard
from esper.training.tasks import run_config

__all__ = [
    "RUN_FLAGS",
    "ProgressSink",
    "read_config_file",
    "report_command",
    "resolve_config",
    "train_command",
]


RUN_FLAGS = (
    "task",
    "epochs",
    "max_batches",
    "max_val_batches",
    "seed",
    "slots",
    "max_seeds",
    "batch_size",
    "device",
    "threads",
    "compile",
    "telemetry_level",
    "data_dir",
    "text_file",
    "width_multiplier",
    "policy",
    "policy_sampling",
)
"""The run flags that set the configuration (`esper.config.shortcuts` says where)."""


def read_config_file(path: Path | None) -> dict[str, Any]:
    """The JSON object in a ``--config`` file ({} without one); `RunError` in one line
    for a file that cannot be read, is not UTF-8 JSON or holds something else."""
    if path is None:
        return {}
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as error:
        raise RunError(f"cannot read --config {path} ({error.strerror})") from None
    except UnicodeDecodeError:
        raise RunError(f"--config {path} is not UTF-8 text") from None
    except (json.JSONDecodeError, RecursionError, ValueError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else error
        raise RunError(f"--config {path} is not valid JSON: {reason}") from None
    if not isinstance(data, dict):
        raise RunError(f"--config {path} must hold a JSON object")
    return data


def resolve_config(args: argparse.Namespace, base: dict[str, Any] | None = None) -> RunConfig:
    """Task defaults, then ``base`` (a policy's training environment, if it is for the
    same task), then the --config file, then flags (`esper.training.tasks.run_config`)."""
    file_data = read_config_file(args.config)
    flags = shortcuts({name: getattr(args, name, None) for name in RUN_FLAGS})
    controller = getattr(args, "controller", "heuristic")
    task = flags.get("task") or file_data.get("task") or (base or {}).get("task") or "digits"
    same_task = base is not None and base.get("task") == task
    layers = [base or {}] if same_task else []
    # An unknown controller (or task) is one line naming the registered ones.
    return run_config(*layers, file_data, flags, {"controller": controller})


def _status(row: EpochCompleted, best: float) -> str:
    seeds = "  ".join(
        f"{sid} {slot.stage.name.lower()}" + (f" {slot.blueprint}" if slot.blueprint else "")
        for sid, slot in row.slots.items()
        if slot.stage is not SeedStage.DORMANT
    )
    return f"val {row.val_accuracy:5.2f}% (best {best:.2f}%)  {seeds or 'no seeds'}"


def _summary_table(summary: dict[str, Any], run_dir: Path) -> Table:
    table = Table(title=f"{summary['controller']} on {summary['task']}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right", overflow="fold")
    test = summary.get("test_accuracy")
    rows = [
        ("test accuracy", "no test split" if test is None else f"{test:.2f}%"),
        ("final val accuracy", f"{summary['final_accuracy']:.2f}%"),
        ("best val accuracy", f"{summary['best_accuracy']:.2f}% (epoch {summary['best_epoch']})"),
        ("epochs", f"{summary['epochs']} of {summary['epochs_planned']}"),
        ("host parameters", f"{summary['host_params']:,}"),
        ("added parameters", f"{summary['added_params']:,}"),
        ("training compute", format_flops(summary.get("train_flops", 0.0))),
        ("evaluation compute", format_flops(summary.get("eval_flops", 0.0))),
        (
            "seeds germinated/fossilized/culled",
            "/".join(
                str(summary[k]) for k in ("seeds_germinated", "seeds_fossilized", "seeds_culled")
            ),
        ),
        ("governor rollbacks", str(summary["rollbacks"])),
        ("wall time", f"{summary['wall_seconds']:.1f} s"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


class ProgressSink:
    """The progress bar (or, off a terminal, one line per epoch) as a telemetry sink: it
    reads every `EpochCompleted`, whatever the telemetry level."""

    level = TelemetryLevel.NORMAL

    def __init__(self, progress: Progress, console: Console, epochs: int, quiet: bool) -> None:
        self.progress, self.console, self.epochs, self.quiet = progress, console, epochs, quiet
        self.bar = progress.add_task("train", total=epochs, status="starting")
        self.best = 0.0

    def emit(self, event: Event) -> None:
        if not isinstance(event, EpochCompleted):
            return
        self.best = max(self.best, event.val_accuracy)
        status = _status(event, self.best)
        self.progress.update(self.bar, completed=event.epoch, status=status)
        if not self.console.is_terminal and not self.quiet:
            line = f"epoch {event.epoch}/{self.epochs}  {status}"
            self.console.print(line, soft_wrap=True)

    def close(self) -> None:
        """The bar belongs to the command."""


def _run_directory(
    args: argparse.Namespace, base: dict[str, Any] | None
) -> tuple[Path, RunConfig | None, RunConfig]:
    """The run directory, the configuration of a new run (None to resume one), and the
    configuration the run will have."""
    if args.resume is None:
        if args.out is not None and not args.out.strip():
            raise RunError("--out is empty; name the run directory, e.g. --out runs/first")
        config = resolve_config(args, base)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = (
            Path(args.out)
            if args.out
            else Path("runs") / f"{config.controller}-{config.task}-{stamp}"
        )
        return prepare_run_dir(out), config, config
    names = [*RUN_FLAGS, "config", "out"]
    given = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n, None) is not None]
    if given:
        raise RunError(
            f"--resume continues a run with its saved configuration; drop {', '.join(given)}"
        )
    saved = read_config(args.resume)
    if saved.controller != args.controller:
        command = get_controller(saved.controller).command_line
        raise RunError(
            f"{args.resume} is an 'esper {command}' run; continue it with: "
            f"esper {command} --resume {args.resume}"
        )
    return args.resume, None, saved


def train_command(
    args: argparse.Namespace, console: Console, base: dict[str, Any] | None = None
) -> int:
    """One run of a registered controller (``esper heuristic``, ``baseline``, ``ppo
    run``); ``base`` as in `resolve_config`."""
    if args.tensorboard:
        require_tensorboard()  # before anything is written: one line if it is missing
    run_dir, config, planned = _run_directory(args, base)
    if not args.quiet:
        console.print(f"run directory: {run_dir}")
    progress = Progress(
        TextColumn("epoch"),
        MofNCompleteColumn(),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        # Not a terminal (CI, a log file): one plain line per epoch instead of a bar.
        disable=args.quiet or not console.is_terminal,
    )
    level = max(TelemetryLevel.parse(planned.telemetry_level), TelemetryLevel.NORMAL)
    board = RunTensorBoard(run_dir, level) if args.tensorboard else None
    with progress:
        sinks: list[Sink] = [ProgressSink(progress, console, planned.episode.epochs, args.quiet)]
        if not args.quiet:
            sinks.append(ConsoleSink(progress.console, show_epochs=False))
        if board is not None:
            sinks.append(board)
        try:
            summary = run(run_dir, config, sinks, _warn)
        except KeyboardInterrupt as interrupt:
            progress.stop()
            command = get_controller(args.controller).command_line
            console.print(
                f"interrupted; continue with: esper {command} --resume {run_dir}", soft_wrap=True
            )
            return 143 if isinstance(interrupt, Terminated) else 130
    console.print(_summary_table(summary, run_dir))
    console.print(f"results in {run_dir}, timeline: {run_dir / 'timeline.png'}", soft_wrap=True)
    if board is not None:
        console.print(
            f"TensorBoard files in {run_dir / TENSORBOARD_DIR}; side by side with the runs "
            f"beside it: tensorboard --logdir {run_dir.parent}",
            soft_wrap=True,
        )
    return 0


def _warn(message: str) -> None:
    print_error(f"esper: warning: {message}", style="yellow")


def report_command(args: argparse.Namespace, console: Console) -> int:
    summary = finish_report(args.run_dir)
    console.print(_summary_table(summary, args.run_dir))
    console.print(f"timeline: {args.run_dir / 'timeline.png'}", soft_wrap=True)
    return 0
