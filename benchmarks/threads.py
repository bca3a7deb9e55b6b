"""The default thread count against fixed ones, idle and with one competing process.

Run by hand on an otherwise quiet machine::

    .venv/bin/python -m benchmarks.threads --data-dir /tmp/cifar10

Times ``esper heuristic`` end to end, as a user would (a fresh process each time, start-up
and data loading included), for every task x thread setting x machine state:

* thread settings: the default (``--threads auto``), ``--threads 1``, ``--threads 2``, and
  ``--threads 2`` with OpenMP's own spin-waiting (``GOMP_SPINCOUNT=300000``, what torch
  did before the command asked for passive waiting), for comparison;
* machine states: idle, and with one competing process (a single-threaded busy loop,
  started before and stopped after each measurement);
* tasks: digits (the default run: 40 epochs) and, with ``--data-dir``, CIFAR-10
  (``--cifar-epochs`` full epochs, 1 by default).

Settings run interleaved, ``--rounds`` times; the table shows the median wall time, the
thread count ``auto`` chose (read from the run's config.json) and the default's ratio to
the best fixed count (target: <= 1.2). Writes ``benchmarks/results/threads.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.common import write_result

SETTINGS = ("auto", "1", "2", "2, spinning")
FIXED = ("1", "2")
"""The fixed counts the default is compared with (spinning is the old behaviour)."""
ENV = {"2, spinning": {"GOMP_SPINCOUNT": "300000"}}
STATES = ("idle", "one competing process")
TARGET = 1.2


@contextmanager
def _competitor(state: str) -> Iterator[None]:
    """One single-threaded process keeping a core busy, for the 'competing' state."""
    if state == "idle":
        yield
        return
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(1.0)  # let it settle on a core, as a job already running would be
    try:
        yield
    finally:
        process.kill()
        process.wait()


def _run(flags: list[str], setting: str, out: Path) -> tuple[float, int | None]:
    """Wall seconds of one ``esper heuristic`` process, and the threads its run used."""
    command = [sys.executable, "-m", "esper.cli", "heuristic", "--quiet", "--out", str(out)]
    threads = setting.split(",")[0]
    env = {**os.environ, **ENV.get(setting, {})}
    start = time.perf_counter()
    subprocess.run(
        [*command, *flags, "--threads", threads], check=True, capture_output=True, env=env
    )
    seconds = time.perf_counter() - start
    config = json.loads((out / "config.json").read_text())
    return seconds, config.get("threads")


def _measure(
    task: str, flags: list[str], state: str, rounds: int, scratch: Path
) -> tuple[dict[str, list[float]], list[int | None]]:
    """Wall seconds per setting over ``rounds``, and the counts auto chose."""
    walls: dict[str, list[float]] = {setting: [] for setting in SETTINGS}
    chosen: list[int | None] = []
    for round_ in range(rounds):
        turn = round_ % len(SETTINGS)  # rotate the order: no setting always runs first
        for number, setting in enumerate(SETTINGS[turn:] + SETTINGS[:turn]):
            out = scratch / f"{task}-{state.split()[0]}-{round_}-{number}"
            seconds, used = _run(flags, setting, out)
            walls[setting].append(seconds)
            if setting == "auto":
                chosen.append(used)
            print(f"{task:8} {state:22} --threads {setting:12} {seconds:7.1f} s", flush=True)
    return walls, chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="CIFAR-10 directory (without it: digits only)")
    parser.add_argument("--cifar-epochs", type=int, default=1)
    parser.add_argument("--digits-epochs", type=int, help="default: the task's 40")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="threads")
    args = parser.parse_args()

    tasks: dict[str, list[str]] = {"digits": ["--task", "digits"]}
    if args.digits_epochs:
        tasks["digits"] += ["--epochs", str(args.digits_epochs)]
    if args.data_dir:
        tasks["cifar10"] = [
            *("--task", "cifar10", "--data-dir", args.data_dir),
            *("--epochs", str(args.cifar_epochs)),
        ]
    walls: dict[str, dict[str, dict[str, list[float]]]] = {task: {} for task in tasks}
    chosen: dict[str, dict[str, list[int | None]]] = {task: {} for task in tasks}
    with tempfile.TemporaryDirectory() as scratch:
        for task, flags in tasks.items():
            for state in STATES:
                with _competitor(state):
                    walls[task][state], chosen[task][state] = _measure(
                        task, flags, state, args.rounds, Path(scratch)
                    )
    results: dict[str, Any] = {"rounds": args.rounds, "tasks": {}}
    lines = [
        "| task | machine | default (auto) | auto chose | --threads 1 | --threads 2 "
        "| default / best fixed | --threads 2, spin-waiting (before) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task in tasks:
        results["tasks"][task] = {"flags": tasks[task]}
        for state in STATES:
            median = {s: statistics.median(walls[task][state][s]) for s in SETTINGS}
            ratio = median["auto"] / min(median[s] for s in FIXED)
            picks = sorted({str(c) for c in chosen[task][state]})
            results["tasks"][task][state] = {
                "wall_seconds": walls[task][state],
                "median_seconds": median,
                "auto_chose": chosen[task][state],
                "ratio_to_best_fixed": ratio,
            }
            verdict = "met" if ratio <= TARGET else "missed"
            lines.append(
                f"| {task} | {state} | {median['auto']:.1f} s | {'/'.join(picks)} "
                f"| {median['1']:.1f} s | {median['2']:.1f} s "
                f"| {ratio:.2f} (<= {TARGET}: {verdict}) | {median['2, spinning']:.1f} s |"
            )
    lines += [
        "",
        f"Median wall time of `esper heuristic` over {args.rounds} rounds, start-up and data "
        "loading included; the competing process is a single-threaded busy loop. Flags: "
        + "; ".join(f"{task}: `{' '.join(flags)}`" for task, flags in tasks.items())
        + ".",
    ]
    path = write_result(args.name, results, "\n".join(lines))
    print(path.read_text())


if __name__ == "__main__":
    main()
