"""Where a result comes from: the command, the commit, the machine and the date.

Every result file records these (``esper compare``'s table and JSON, an ``esper ppo
train`` directory's ``provenance.json``, the benchmarks' results), so that a reader can
rerun the command on the same code and compare machines.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["commit", "machine", "provenance"]


def commit() -> str:
    """The checked-out commit of Esper's source (``+dirty`` with local changes)."""
    source = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=source,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=source,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    """The machine results come from: CPU model, cores, torch and Python versions."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):  # no /proc: keep platform's name
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def provenance(command: str, commit_id: str | None = None) -> dict[str, Any]:
    """Command, commit, machine and date: what any result file records.

    Args:
        commit_id: the commit to record, if not the one checked out now (a long job
            records the code it started from, since HEAD may move while it runs).
    """
    return {
        "command": command,
        "commit": commit() if commit_id is None else commit_id,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
