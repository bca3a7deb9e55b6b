"""How long the ``esper`` command takes to answer when it needs no training.

Run by hand::

    .venv/bin/python -m benchmarks.startup --repeats 10

Each command is a fresh process (as a user types it); the median wall time over
``--repeats`` is reported next to a bare ``python -c pass`` (the interpreter's own start)
and ``python -c "import torch"`` (what a command that trains must pay). Target: help and
argument errors well under a second. Writes ``benchmarks/results/startup.{md,json}``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write_result

TARGET_SECONDS = 1.0

COMMANDS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    'python -c "import torch"': ["-c", "import torch"],
    "esper --help": ["-m", "esper.cli", "--help"],
    "esper --version": ["-m", "esper.cli", "--version"],
    "esper heuristic --help": ["-m", "esper.cli", "heuristic", "--help"],
    "esper ppo train --help": ["-m", "esper.cli", "ppo", "train", "--help"],
    "esper heuristic --epochs x (an argument error)": [
        *("-m", "esper.cli", "heuristic", "--epochs", "x")
    ],
    "esper fly (unknown command)": ["-m", "esper.cli", "fly"],
}
REFERENCES = ("python -c pass", 'python -c "import torch"')


def _seconds(arguments: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *arguments], capture_output=True, check=False)
    return time.perf_counter() - start


def _installed_script() -> Path | None:
    """The ``esper`` console script next to this interpreter, if installed."""
    script = Path(sys.executable).parent / "esper"
    return script if script.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    script = _installed_script()
    if script is not None:  # the command as installed, not through runpy
        COMMANDS[f"{script} --help"] = [str(script), "--help"]
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for arguments in COMMANDS.values():
        _seconds(arguments)  # warm the file cache
    for _ in range(args.repeats):  # interleaved: slow drifts hit every command alike
        for name, arguments in COMMANDS.items():
            times[name].append(_seconds(arguments))
    results: dict[str, Any] = {"repeats": args.repeats, "seconds": times, "median": {}}
    lines = ["| command | median wall | target |", "|---|---|---|"]
    for name in COMMANDS:
        median = statistics.median(times[name])
        results["median"][name] = median
        if name in REFERENCES:
            target = "(reference)"
        else:
            target = f"< {TARGET_SECONDS:g} s: {'met' if median < TARGET_SECONDS else 'missed'}"
        lines.append(f"| `{name}` | {median:.2f} s | {target} |")
    lines += [
        "",
        f"Median of {args.repeats} fresh processes per command (`python` is `{sys.executable}`"
        "; `esper` is `python -m esper.cli`).",
    ]
    path = write_result("startup", results, "\n".join(lines))
    print(path.read_text())


if __name__ == "__main__":
    main()
