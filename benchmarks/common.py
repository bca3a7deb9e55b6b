"""Shared helpers for the benchmarks: machine description, commit, result files."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

import esper.provenance
from esper.compare import mean_interval

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What ran the benchmark: CPU, cores, torch build and thread count."""
    return {**esper.provenance.machine(), "threads": torch.get_num_threads()}


COMMIT = esper.provenance.commit()
"""The commit at start-up: the code that ran, even if HEAD moves while a benchmark runs."""


def command() -> str:
    """The command line, as the module invocation a reader can paste."""
    script = Path(sys.argv[0])
    module = f"benchmarks.{script.stem}" if script.parent.name == "benchmarks" else str(script)
    return " ".join([".venv/bin/python", "-m", module, *sys.argv[1:]])


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of a 95% t-interval (0 for a single value)."""
    mean, half = mean_interval(values)
    return mean, 0.0 if math.isnan(half) else half


def write_result(name: str, payload: dict[str, Any], markdown: str) -> Path:
    """Write ``<name>.json`` and ``<name>.md`` under benchmarks/results/."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {**esper.provenance.provenance(command(), COMMIT), "machine": machine()}
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
