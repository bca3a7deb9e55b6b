"""``esper heuristic``, ``esper baseline`` and ``esper report``: one run of a task."""

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
from esper.config import ConfigError, RunConfig, from_dict, to_dict
from esper.run import RunError, finish_report, prepare_run_dir, read_config, run
from esper.telemetry import ConsoleSink, Sink
from esper.telemetry.report import EpochRow, format_flops
from esper.telemetry.tensorboard import TENSORBOARD_DIR, RunTensorBoard, require_tensorboard
from esper.training.tasks import get_task

__all__ = ["COMMANDS", "report_command", "resolve_config", "train_command"]

COMMANDS = {"heuristic": "heuristic", "baseline": "baseline", "ppo": "ppo run"}
"""The command that trains each controller's runs (for messages)."""


# Flag -> path in the RunConfig dictionary.
_FLAG_PATHS: dict[str, tuple[str, ...]] = {
    "task": ("task",),
    "epochs": ("episode", "epochs"),
    "max_batches": ("episode", "training", "max_batches"),
    "max_val_batches": ("episode", "training", "max_val_batches"),
    "seed": ("episode", "seed"),
    "slots": ("slots",),
    "max_seeds": ("episode", "max_seeds"),
    "batch_size": ("batch_size",),
    "device": ("device",),
    "threads": ("threads",),
    "compile": ("episode", "training", "compile"),
    "telemetry_level": ("telemetry_level",),
    "data_dir": ("data_dir",),
    "text_file": ("text_file",),
    "width_multiplier": ("width_multiplier",),
    "policy": ("policy",),
}


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_config(args: argparse.Namespace, base: dict[str, Any] | None = None) -> RunConfig:
    """Task defaults, then ``base`` (a policy's training environment, if it is for the
    same task), then the --config file, then flags; strictly validated."""
    file_data: dict[str, Any] = {}
    if args.config is not None:
        try:
            file_data = json.loads(args.config.read_text())
        except OSError as error:
            raise RunError(f"cannot read --config {args.config} ({error.strerror})") from None
        except json.JSONDecodeError as error:
            raise RunError(f"--config {args.config} is not valid JSON: {error}") from None
        if not isinstance(file_data, dict):
            raise RunError(f"--config {args.config} must hold a JSON object")
    flags: dict[str, Any] = {}
    for name, path in _FLAG_PATHS.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        node = flags
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = str(value) if isinstance(value, Path) else value
    task_name = flags.get("task") or file_data.get("task") or (base or {}).get("task") or "digits"
    spec = get_task(str(task_name))
    defaults = RunConfig(task=spec.name, batch_size=spec.batch_size, episode=spec.default_config())
    controller = {"controller": getattr(args, "controller", "heuristic")}
    merged = to_dict(defaults)
    if base is not None and base.get("task") == spec.name:
        merged = _merge(merged, base)
    merged = _merge(_merge(_merge(merged, file_data), flags), controller)
    config = from_dict(RunConfig, merged)
    if config.episode.epochs < 1:
        raise ConfigError("epochs must be at least 1")
    return config


def _status(row: EpochRow, best: float) -> str:
    seeds = "  ".join(
        f"{sid} {slot.stage.lower()}" + (f" {slot.blueprint}" if slot.blueprint else "")
        for sid, slot in row.slots.items()
        if slot.stage != "DORMANT"
    )
    return f"val {row.val_accuracy:5.2f}% (best {best:.2f}%)  {seeds or 'no seeds'}"


def _summary_table(summary: dict[str, Any], run_dir: Path) -> Table:
    table = Table(title=f"{summary['controller']} on {summary['task']}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right", overflow="fold")
    rows = [
        ("final accuracy", f"{summary['final_accuracy']:.2f}%"),
        ("best accuracy", f"{summary['best_accuracy']:.2f}% (epoch {summary['best_epoch']})"),
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


def train_command(
    args: argparse.Namespace, console: Console, base: dict[str, Any] | None = None
) -> int:
    """One run (``esper heuristic``, ``baseline``, ``ppo run``); ``base`` as in
    `resolve_config`."""
    if args.tensorboard:
        require_tensorboard()  # before anything is written: one line if it is missing
    if args.resume is not None:
        names = [*_FLAG_PATHS, "config", "out"]
        given = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n, None) is not None]
        if given:
            raise RunError(
                f"--resume continues a run with its saved configuration; drop {', '.join(given)}"
            )
        run_dir: Path = args.resume
        config: RunConfig | None = None
        saved = read_config(run_dir)
        if saved.controller != args.controller:
            command = COMMANDS[saved.controller]
            raise RunError(
                f"{run_dir} is an 'esper {command}' run; continue it with: "
                f"esper {command} --resume {run_dir}"
            )
        epochs = saved.episode.epochs
    else:
        if args.out is not None and not args.out.strip():
            raise RunError("--out is empty; name the run directory, e.g. --out runs/first")
        config = resolve_config(args, base)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"{config.controller}-{config.task}-{stamp}"
        out = Path(args.out) if args.out else Path("runs") / name
        run_dir = prepare_run_dir(out)
        epochs = config.episode.epochs
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
    best = 0.0
    # A telemetry sink for the events, fed the history rows too; the run closes it.
    board = RunTensorBoard(run_dir) if args.tensorboard else None
    with progress:
        task = progress.add_task("train", total=epochs, status="starting")

        def on_epoch(row: EpochRow) -> None:
            nonlocal best
            if board is not None:
                board.write_epoch(row)
            best = max(best, row.val_accuracy)
            progress.update(task, completed=row.epoch, status=_status(row, best))
            if not console.is_terminal and not args.quiet:
                console.print(f"epoch {row.epoch}/{epochs}  {_status(row, best)}", soft_wrap=True)

        def warn(message: str) -> None:
            print_error(f"esper: warning: {message}", style="yellow")

        sinks: list[Sink] = [] if args.quiet else [ConsoleSink(progress.console, show_epochs=False)]
        if board is not None:
            sinks.append(board)
        try:
            summary = run(run_dir, config, sinks, on_epoch, warn)
        except KeyboardInterrupt as interrupt:
            progress.stop()
            console.print(
                f"interrupted; continue with: esper {COMMANDS[args.controller]} --resume {run_dir}",
                soft_wrap=True,
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


def report_command(args: argparse.Namespace, console: Console) -> int:
    summary = finish_report(args.run_dir)
    console.print(_summary_table(summary, args.run_dir))
    console.print(f"timeline: {args.run_dir / 'timeline.png'}", soft_wrap=True)
    return 0
