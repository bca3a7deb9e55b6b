"""The ``esper`` command: grow a network, train the static baseline, rebuild reports."""

# ruff: noqa: E402  (the start-up signal handlers below come before the slow imports)
from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any, NoReturn

_STARTUP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _stop_during_startup(signum: int, frame: FrameType | None) -> None:
    # Ctrl-C or SIGTERM while torch and friends are still importing: one line, no
    # traceback through the import machinery.
    sys.stderr.write("esper: interrupted while starting up\n")
    raise SystemExit(128 + signum)


_previous_handlers: dict[signal.Signals, Any] = {}
try:
    for _signal in _STARTUP_SIGNALS:
        _previous_handlers[_signal] = signal.signal(_signal, _stop_during_startup)
except ValueError:  # imported outside the main thread: signals are not ours to change
    pass

import argparse
import json
import os
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from esper import __version__
from esper.compare import (
    ARM_HELP,
    LocalPool,
    RunOutcome,
    compare,
    parse_arms,
    parse_seeds,
    provenance,
    table,
    write_outputs,
)
from esper.config import ConfigError, RunConfig, from_dict, to_dict
from esper.data import DataFormatError, DataUnavailableError
from esper.lifecycle import LifecycleError
from esper.registry import UnknownNameError
from esper.run import RunError, finish_report, prepare_run_dir, read_config, run
from esper.telemetry import ConsoleSink, SinkError
from esper.telemetry.report import EpochRow, format_flops
from esper.training.tasks import TASKS, get_task

for _signal, _handler in _previous_handlers.items():
    if _handler is not None:
        signal.signal(_signal, _handler)

__all__ = ["build_parser", "main", "resolve_config"]

EXPECTED_ERRORS = (
    ConfigError,
    DataFormatError,
    DataUnavailableError,
    LifecycleError,
    RunError,
    SinkError,
    UnknownNameError,
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points at --help (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run stops between two writes, resumable."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def build_parser() -> argparse.ArgumentParser:
    tasks = "\n".join(f"  {name:<14} {spec.help}" for name, spec in TASKS.items())
    parser = _Parser(
        prog="esper",
        description="Morphogenetic training: a host network grows seeds while it trains.",
        epilog=f"tasks:\n{tasks}\n\nrun 'esper COMMAND --help' for each command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"esper {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    heuristic = commands.add_parser(
        "heuristic",
        help="grow the network with the rule-based heuristic controller",
        description="Train the task's host while the heuristic controller germinates, "
        "blends, fossilizes and culls seeds. Writes a run directory (see --out).",
    )
    _run_options(heuristic)
    baseline = commands.add_parser(
        "baseline",
        help="train the same task, budget and seed with no growth (the static comparison)",
        description="Train the task's host as a fixed network: same data, epochs, seed and "
        "optimizer as 'esper heuristic', but no seed is ever germinated.",
    )
    _run_options(baseline)
    baseline.add_argument(
        "--width-multiplier",
        type=float,
        metavar="X",
        help="scale every host width by X, e.g. to train a static host of the grown size "
        "(default: 1)",
    )
    compare_parser = commands.add_parser(
        "compare",
        help="train grown and static arms on several seeds and compare them",
        description="Train every arm on every seed (a local process pool, one torch thread "
        "per run) and print a table of mean and 95%% interval over seeds: final and best "
        "accuracy, parameters, training and evaluation FLOPs, wall time, seeds kept, and "
        "each arm's paired difference against the first. Writes compare.json, compare.md "
        "and accuracy_vs_flops.png to --out. Finished runs are kept and interrupted ones "
        "resume: rerun the same command to continue.",
    )
    _compare_options(compare_parser)
    report = commands.add_parser(
        "report",
        help="rebuild summary.json and timeline.png from a run directory",
        description="Read RUN_DIR/history.jsonl and config.json, rewrite summary.json and "
        "timeline.png, and print the summary. Works on interrupted runs too.",
    )
    report.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory")
    return parser


def _run_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--task", help=f"task to train: {', '.join(TASKS.names())} (default: digits)")
    add("--epochs", type=int, metavar="N", help="epochs to train (default: the task's)")
    add("--max-batches", type=int, metavar="N", help="train on at most N batches per epoch")
    add(
        "--max-val-batches",
        type=int,
        metavar="N",
        help="validate on at most N batches (default: the whole validation set)",
    )
    add(
        "--seed",
        type=int,
        metavar="N",
        help="random seed for init, data order, everything (default: 0)",
    )
    add("--slots", nargs="+", metavar="ID", help="enabled slots, e.g. r0c0 r0c2 (default: all)")
    add("--max-seeds", type=int, metavar="N", help="germinate at most N seeds in the run")
    add("--batch-size", type=int, metavar="N", help="training batch size (default: the task's)")
    add("--device", help="cpu, cuda or cuda:N (default: cpu)")
    add(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for torch (default: one per core; use 1 when runs share a machine)",
    )
    add(
        "--compile",
        action="store_true",
        default=None,
        help="compile forward + loss with torch.compile (slow start on CPU)",
    )
    add(
        "--telemetry-level",
        choices=["off", "lifecycle", "normal", "debug"],
        help="what goes to events.jsonl and the console (default: normal)",
    )
    add("--data-dir", metavar="DIR", help="data directory for cifar10 / fashion_mnist")
    add("--text-file", metavar="PATH", help="UTF-8 text file for the text task")
    add(
        "--config",
        type=Path,
        metavar="FILE",
        help="JSON run configuration (unknown keys are errors); flags override it",
    )
    add(
        "--out",
        metavar="DIR",
        help="run directory: new, empty, or an Esper run that never started "
        "(default: runs/<command>-<task>-<time>)",
    )
    add(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue an interrupted run from its last checkpoint",
    )
    add("--quiet", action="store_true", help="no progress bar or event lines, only the summary")


def _compare_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--task", help=f"task to train: {', '.join(TASKS.names())} (default: digits)")
    add(
        "--arms",
        default="static,heuristic,static-matched",
        help=f"comma-separated arms (default: %(default)s): {ARM_HELP}",
    )
    add(
        "--seeds",
        default="5",
        help="a count (5: seeds 0-4), an inclusive range (100-109) or a list (1,3,7) "
        "(default: %(default)s)",
    )
    add("--epochs", type=int, metavar="N", help="epochs per run (default: the task's)")
    add(
        "--workers",
        type=int,
        metavar="W",
        help="runs trained at once, one torch thread each (default: one per CPU core)",
    )
    add("--max-batches", type=int, metavar="N", help="train on at most N batches per epoch")
    add("--max-val-batches", type=int, metavar="N", help="validate on at most N batches")
    add("--batch-size", type=int, metavar="N", help="training batch size (default: the task's)")
    add("--data-dir", metavar="DIR", help="data directory for cifar10 / fashion_mnist")
    add("--text-file", metavar="PATH", help="UTF-8 text file for the text task")
    add(
        "--config",
        type=Path,
        metavar="FILE",
        help="JSON run configuration shared by every arm (e.g. heuristic settings)",
    )
    add(
        "--out",
        type=Path,
        metavar="DIR",
        help="where the runs and results go (default: runs/compare-<task>); the same "
        "--out continues an interrupted compare",
    )
    add("--quiet", action="store_true", help="no line per finished run, only the table")


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
}


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_config(args: argparse.Namespace) -> RunConfig:
    """Task defaults, then the --config file, then flags; strictly validated."""
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
    task_name = flags.get("task") or file_data.get("task") or "digits"
    spec = get_task(str(task_name))
    defaults = RunConfig(task=spec.name, batch_size=spec.batch_size, episode=spec.default_config())
    controller = {"controller": "baseline" if args.command == "baseline" else "heuristic"}
    merged = _merge(_merge(_merge(to_dict(defaults), file_data), flags), controller)
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


def _train(args: argparse.Namespace, console: Console) -> int:
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
        if saved.controller != args.command:
            raise RunError(
                f"{run_dir} is an 'esper {saved.controller}' run; continue it with: "
                f"esper {saved.controller} --resume {run_dir}"
            )
        epochs = saved.episode.epochs
    else:
        if args.out is not None and not args.out.strip():
            raise RunError("--out is empty; name the run directory, e.g. --out runs/first")
        config = resolve_config(args)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path(args.out) if args.out else Path("runs") / f"{args.command}-{config.task}-{stamp}"
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
    with progress:
        task = progress.add_task("train", total=epochs, status="starting")

        def on_epoch(row: EpochRow) -> None:
            nonlocal best
            best = max(best, row.val_accuracy)
            progress.update(task, completed=row.epoch, status=_status(row, best))
            if not console.is_terminal and not args.quiet:
                console.print(f"epoch {row.epoch}/{epochs}  {_status(row, best)}", soft_wrap=True)

        def warn(message: str) -> None:
            _print_error(f"esper: warning: {message}", style="yellow")

        sinks = [] if args.quiet else [ConsoleSink(progress.console, show_epochs=False)]
        try:
            summary = run(run_dir, config, sinks, on_epoch, warn)
        except KeyboardInterrupt as interrupt:
            progress.stop()
            console.print(
                f"interrupted; continue with: esper {args.command} --resume {run_dir}",
                soft_wrap=True,
            )
            return 143 if isinstance(interrupt, _Terminated) else 130
    console.print(_summary_table(summary, run_dir))
    console.print(f"results in {run_dir}, timeline: {run_dir / 'timeline.png'}", soft_wrap=True)
    return 0


def _compare(args: argparse.Namespace, console: Console) -> int:
    try:
        arms = parse_arms(args.arms)
        seeds = parse_seeds(args.seeds)
    except ValueError as error:
        raise RunError(str(error)) from None
    base = resolve_config(args)
    out: Path = args.out or Path("runs") / f"compare-{base.task}"
    total = len(arms) * len(seeds)
    workers = args.workers if args.workers is not None else min(os.cpu_count() or 1, total)
    if workers < 1:
        raise RunError(f"--workers must be at least 1, got {workers}")
    if not args.quiet:
        console.print(
            f"compare {', '.join(a.label for a in arms)} on {base.task}, seeds "
            f"{args.seeds}: {total} runs, {workers} at a time, in {out}",
            soft_wrap=True,
        )

    def on_done(outcome: RunOutcome, done: int, total: int) -> None:
        if args.quiet:
            return
        if outcome.summary is None:
            console.print(
                f"[{done}/{total}] {outcome.arm} seed {outcome.seed}: FAILED: {outcome.error}",
                soft_wrap=True,
                markup=False,
            )
            return
        s = outcome.summary
        how = "cached" if outcome.cached else f"{s['wall_seconds']:.0f} s"
        console.print(
            f"[{done}/{total}] {outcome.arm} seed {outcome.seed}: final "
            f"{s['final_accuracy']:.2f}%, {s['params']:,} params, "
            f"{format_flops(s['train_flops'])} training ({how})",
            soft_wrap=True,
            markup=False,
        )

    pool = LocalPool(workers)
    try:
        result = compare(out, base, arms, seeds, pool, on_done)
    except KeyboardInterrupt:
        console.print(
            "interrupted; rerun the same command to continue (finished runs are kept, "
            "unfinished ones resume from their last epoch)",
            soft_wrap=True,
        )
        return 130
    write_outputs(result, provenance(" ".join(["esper", *map(shlex.quote, args.argv)])))
    header, rows = table(result)
    # Arms as columns: a few arms fit 80 columns, eleven metrics would not.
    grid = Table(title=f"{result.task}, {result.epochs} epochs, {len(seeds)} seeds")
    grid.add_column("")
    for row in rows:
        grid.add_column(row[0], justify="right")
    for index, name in enumerate(header[1:], start=1):
        grid.add_row(name, *(row[index] for row in rows))
    console.print(grid)
    console.print(
        f"mean ± 95% interval over seeds; results in {out / 'compare.md'}, "
        f"{out / 'compare.json'}, {out / 'accuracy_vs_flops.png'}",
        soft_wrap=True,
    )
    failed = [o for arm in result.arms for o in arm.failed]
    for outcome in failed:
        Console(stderr=True).print(
            f"esper: run failed: {outcome.arm} seed {outcome.seed}: {outcome.error}",
            markup=False,
            soft_wrap=True,
        )
    return 1 if failed else 0


def _report(args: argparse.Namespace, console: Console) -> int:
    summary = finish_report(args.run_dir)
    console.print(_summary_table(summary, args.run_dir))
    console.print(f"timeline: {args.run_dir / 'timeline.png'}", soft_wrap=True)
    return 0


def _print_error(line: str, style: str = "bold red") -> None:
    Console(stderr=True).print(line, style=style, markup=False, highlight=False, soft_wrap=True)


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error).strip() else type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``esper`` command; returns the process exit code.

    0 done; 1 the run had to stop (disk full, persistent fault, a failed compare run); 2
    bad input or a run directory that cannot be used; 130 interrupted (Ctrl-C); 143
    terminated (SIGTERM).
    """
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread
        previous = None
    try:
        return _main(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
    try:
        arguments = list(sys.argv[1:] if argv is None else argv)
        args = build_parser().parse_args(arguments)
        args.argv = arguments
        console = Console()
        if args.command == "report":
            return _report(args, console)
        if args.command == "compare":
            return _compare(args, console)
        return _train(args, console)
    except EXPECTED_ERRORS as error:
        # One line that names the fix; no traceback for input the user can correct.
        _print_error(f"esper: error: {_first_line(error)}")
        return int(getattr(error, "exit_code", 2))
    except OSError as error:  # the machine, not the input: a full disk, a failing device
        where = f" ({error.filename})" if error.filename else ""
        _print_error(f"esper: error: {error.strerror or _first_line(error)}{where}")
        return 1
    except KeyboardInterrupt as interrupt:  # before or after the run itself
        _print_error("esper: interrupted", style="yellow")
        return 143 if isinstance(interrupt, _Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
