"""``esper compare``: every arm on every seed, and the table that answers the question."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from esper.cli.runs import resolve_config
from esper.cluster import connected
from esper.compare import (
    CompareResult,
    LocalPool,
    RayPool,
    RunOutcome,
    RunPool,
    compare,
    parse_arms,
    parse_seeds,
    table,
    write_outputs,
)
from esper.provenance import provenance
from esper.run import RunError
from esper.telemetry.report import format_flops

__all__ = ["compare_command", "open_pool", "print_compare"]


def open_pool(
    args: argparse.Namespace, out: Path, total: int, stack: contextlib.ExitStack
) -> tuple[RunPool, str]:
    """The pool ``args`` ask for (``--ray``, ``--workers``, ``--gpus-per-run``,
    ``--max-retries``) and how it runs, for the first line; a Ray connection is closed
    with ``stack``."""
    gpus = getattr(args, "gpus_per_run", None) or 0.0
    if args.ray is None:
        if gpus:
            raise RunError("--gpus-per-run needs --ray (Ray hands out the GPUs)")
        workers = args.workers if args.workers is not None else min(os.cpu_count() or 1, total)
        if workers < 1:
            raise RunError(f"--workers must be at least 1, got {workers}")
        return LocalPool(workers), f"{workers} at a time"
    if args.workers is not None:
        raise RunError(
            "--workers is for the local pool; with --ray, Ray runs as many at once "
            "as the cluster has CPUs"
        )
    ray = stack.enter_context(connected(args.ray or None))
    pool = RayPool(out, gpus, getattr(args, "max_retries", 3))
    cpus = int(ray.cluster_resources().get("CPU", 0))
    return pool, f"as Ray tasks on {len(ray.nodes())} node(s), {cpus} CPUs"


def compare_command(args: argparse.Namespace, console: Console) -> int:
    try:
        arms = parse_arms(args.arms)
        seeds = parse_seeds(args.seeds)
    except ValueError as error:
        raise RunError(str(error)) from None
    base = resolve_config(args)
    if args.gpus_per_run and base.device == "cpu":
        base = replace(base, device="cuda")  # the GPU share Ray gives each run
    out: Path = args.out or Path("runs") / f"compare-{base.task}"
    total = len(arms) * len(seeds)

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

    # The code that ran is the code at the start: HEAD may move during a long compare.
    meta = provenance(" ".join(["esper", *map(shlex.quote, args.argv)]))
    with contextlib.ExitStack() as stack:
        pool, how = open_pool(args, out, total, stack)
        if not args.quiet:
            console.print(
                f"compare {', '.join(a.label for a in arms)} on {base.task}, seeds "
                f"{args.seeds}: {total} runs, {how}, in {out}",
                soft_wrap=True,
            )
        try:
            result = compare(out, base, arms, seeds, pool, on_done)
        except KeyboardInterrupt:
            console.print(
                "interrupted; rerun the same command to continue (finished runs are kept, "
                "unfinished ones resume from their last epoch)",
                soft_wrap=True,
            )
            return 130
    write_outputs(result, meta)
    return print_compare(result, out, console)


def print_compare(result: CompareResult, out: Path, console: Console) -> int:
    """Print the table (arms as columns), where the files are, and failed runs; returns
    the exit status: 1 if a run failed, else 0."""
    header, rows = table(result)
    # Arms as columns: a few arms fit 80 columns, eleven metrics would not.
    grid = Table(title=f"{result.task}, {result.epochs} epochs, {len(result.seeds)} seeds")
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
