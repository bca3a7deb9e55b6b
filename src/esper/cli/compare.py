"""``esper compare``: every arm on every seed, and the table that answers the question."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from esper.arms import Arm, check_size
from esper.cli.common import Terminated
from esper.cli.runs import resolve_config
from esper.cluster import connected, import_ray
from esper.compare import (
    RESULTS,
    CompareDirectory,
    CompareResult,
    LocalPool,
    RayPool,
    ResultFiles,
    RunOutcome,
    RunPool,
    check_policies,
    compare,
    parse_arms,
    parse_seeds,
    table,
)
from esper.config import RunConfig
from esper.provenance import provenance
from esper.run import RunError
from esper.telemetry.report import format_flops

__all__ = [
    "ComparePlan",
    "compare_command",
    "interrupted",
    "open_pool",
    "out_directory",
    "print_compare",
    "run_compare",
]


@dataclass(frozen=True)
class ComparePlan:
    """What a compare (``esper compare``, ``esper ppo eval``) is asked to train."""

    out: Path
    base: RunConfig
    arms: list[Arm]
    seeds: list[int]
    intro: str
    """The start of its first line, e.g. ``compare static, heuristic on digits, seeds 2``."""


def out_directory(out: str | None, default: Path) -> Path:
    """``--out`` (``default`` without it); an empty one is refused in one line."""
    if out is None:
        return default
    if not out.strip():
        raise RunError("--out is empty; name the compare directory, e.g. --out runs/compare")
    return Path(out)


def _check_pool_flags(args: argparse.Namespace) -> None:
    """The pool flags (``--workers``, ``--gpus-per-run``, ``--ray``) before anything is
    written: one line for a bad one, or for --ray without Ray installed."""
    if args.ray is None:
        if getattr(args, "gpus_per_run", None):
            raise RunError("--gpus-per-run needs --ray (Ray hands out the GPUs)")
        if args.workers is not None and args.workers < 1:
            raise RunError(f"--workers must be at least 1, got {args.workers}")
        return
    if args.workers is not None:
        raise RunError(
            "--workers is for the local pool; with --ray, Ray runs as many at once "
            "as the cluster has CPUs"
        )
    import_ray()


def open_pool(
    args: argparse.Namespace, out: Path, total: int, stack: contextlib.ExitStack
) -> tuple[RunPool, str]:
    """The pool ``args`` ask for (``--ray``, ``--workers``, ``--gpus-per-run``,
    ``--max-retries``) and how it runs, for the first line; a Ray connection is closed
    with ``stack``. The local pool has at most as many workers as ``total`` runs."""
    _check_pool_flags(args)
    if args.ray is None:
        workers = min(args.workers or os.cpu_count() or 1, max(total, 1))
        return LocalPool(workers), f"{workers} at a time"
    ray = stack.enter_context(connected(args.ray or None))
    pool = RayPool(out, getattr(args, "gpus_per_run", None) or 0.0, getattr(args, "max_retries", 3))
    cpus = int(ray.cluster_resources().get("CPU", 0))
    return pool, f"as Ray tasks on {len(ray.nodes())} node(s), {cpus} CPUs"


def compare_command(args: argparse.Namespace, console: Console) -> int:
    try:
        arms = parse_arms(args.arms)
        seeds = parse_seeds(args.seeds)
        check_size(arms, seeds)
    except ValueError as error:
        raise RunError(str(error)) from None
    base = resolve_config(args)
    if args.gpus_per_run and base.device == "cpu":
        base = replace(base, device="cuda")  # the GPU share Ray gives each run
    out = out_directory(args.out, Path("runs") / f"compare-{base.task}")
    intro = f"compare {', '.join(a.label for a in arms)} on {base.task}, seeds {args.seeds}"
    return run_compare(args, console, ComparePlan(out, base, arms, seeds, intro))


def run_compare(args: argparse.Namespace, console: Console, plan: ComparePlan) -> int:
    """Train ``plan`` and print its table; the exit status (`print_compare`; 130 Ctrl-C,
    143 SIGTERM).

    Before anything is written: the policies and the pool flags. Then ``--out`` is
    locked for the whole compare, its settings checked (`CompareDirectory`), the runs
    trained, and the table written where it belongs, all under that lock.
    """
    check_policies(plan.arms, plan.base.task)
    _check_pool_flags(args)
    total = len(plan.arms) * len(plan.seeds)
    # The code that ran is the code at the start: HEAD may move during a long compare.
    meta = provenance(" ".join(["esper", *map(shlex.quote, args.argv)]))
    with contextlib.ExitStack() as stack:
        directory = stack.enter_context(CompareDirectory.open(plan.out, plan.base, meta["command"]))
        pool, how = open_pool(args, plan.out, total, stack)
        if not args.quiet:
            console.print(f"{plan.intro}: {total} runs, {how}, in {plan.out}", soft_wrap=True)
        try:
            result = compare(
                plan.out, plan.base, plan.arms, plan.seeds, pool, _reporter(args, console)
            )
        except KeyboardInterrupt as interrupt:
            return interrupted(console, interrupt)
        files = directory.write_result(result, meta)
    return print_compare(result, plan.out, console, files)


def interrupted(console: Console, interrupt: KeyboardInterrupt) -> int:
    """Say how to continue a compare (or search) stopped by Ctrl-C or SIGTERM; its exit
    status (130, 143)."""
    console.print(
        "interrupted; rerun the same command to continue (finished runs are kept, "
        "unfinished ones resume from their last epoch)",
        soft_wrap=True,
    )
    return 143 if isinstance(interrupt, Terminated) else 130


def _reporter(args: argparse.Namespace, console: Console) -> Callable[[RunOutcome, int, int], None]:
    """A line per finished run (none with --quiet)."""
    return functools.partial(_print_outcome, console) if not args.quiet else _silent


def _silent(outcome: RunOutcome, done: int, total: int) -> None:
    """--quiet: no line per run."""


def _print_outcome(console: Console, outcome: RunOutcome, done: int, total: int) -> None:
    if outcome.summary is None:
        console.print(
            f"[{done}/{total}] {outcome.arm} seed {outcome.seed}: FAILED: {outcome.error}",
            soft_wrap=True,
            markup=False,
        )
        return
    s = outcome.summary
    how = "cached" if outcome.cached else f"{s['wall_seconds']:.0f} s"
    test = s.get("test_accuracy")
    scores = f"val {s['final_accuracy']:.2f}%" + ("" if test is None else f", test {test:.2f}%")
    console.print(
        f"[{done}/{total}] {outcome.arm} seed {outcome.seed}: {scores}, {s['params']:,} params, "
        f"{format_flops(s['train_flops'])} training ({how})",
        soft_wrap=True,
        markup=False,
    )


def print_compare(
    result: CompareResult, out: Path, console: Console, files: ResultFiles = RESULTS
) -> int:
    """Print the table (arms as columns), where its files are (``files`` in ``out``) and
    failed runs; returns the exit status: 1 if a run failed, else 0."""
    header, rows = table(result)
    # Arms as columns: a few arms fit 80 columns, eleven metrics would not.
    grid = Table(title=f"{result.task}, {result.epochs} epochs, {len(result.seeds)} seeds")
    grid.add_column("")
    for row in rows:
        grid.add_column(row[0], justify="right")
    for index, name in enumerate(header[1:], start=1):
        grid.add_row(name, *(row[index] for row in rows))
    console.print(grid)
    where = ", ".join(str(out / name) for name in (files.markdown, files.table, files.plot))
    console.print(f"mean ± 95% interval over seeds; results in {where}", soft_wrap=True)
    if files != RESULTS:
        console.print(
            f"runs failed, so {out / RESULTS.table} (and its .md and plot) still hold the "
            "last complete table; rerun the same command to retry the failed runs",
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
