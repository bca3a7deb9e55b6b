"""Shared helpers for the benchmarks: machine description, commit, result files."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What ran the benchmark: CPU, cores, torch build and thread count."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


COMMIT = _commit()
"""The commit at start-up: the code that ran, even if HEAD moves while a benchmark runs."""


def command() -> str:
    """The command line, as the module invocation a reader can paste."""
    script = Path(sys.argv[0])
    module = f"benchmarks.{script.stem}" if script.parent.name == "benchmarks" else str(script)
    return " ".join([".venv/bin/python", "-m", module, *sys.argv[1:]])


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of a 95% t-interval (0 for a single value)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, 0.0
    t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}
    return mean, t.get(n, 1.96) * statistics.stdev(values) / math.sqrt(n)


def write_result(name: str, payload: dict[str, Any], markdown: str) -> Path:
    """Write ``<name>.json`` and ``<name>.md`` under benchmarks/results/."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "command": command(),
        "commit": COMMIT,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (RESULTS / f"{name}.json").write_text(json.dumps({**meta, **payload}, indent=2) + "\n")
    header = (
        f"Command: `{meta['command']}`  \nCommit: {meta['commit']}  \n"
        f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, "
        f"torch {meta['machine']['torch']} ({meta['machine']['threads']} threads)  \n"
        f"Date: {meta['date']}\n\n"
    )
    path = RESULTS / f"{name}.md"
    path.write_text(header + markdown.rstrip() + "\n")
    return path
