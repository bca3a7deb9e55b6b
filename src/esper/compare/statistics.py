"""A compare's result and its statistics over seeds: each arm's runs, the mean and 95%
t-interval of any summary value, and an arm's paired difference against another."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esper.arms import Arm
from esper.compare.runs import RunOutcome

__all__ = [
    "ArmSummary",
    "CompareResult",
    "mean_interval",
    "paired_difference",
    "paired_differences",
]


@dataclass(frozen=True)
class ArmSummary:
    """One arm's runs and their statistics over seeds."""

    arm: Arm
    label: str
    """The arm as shown, e.g. ``static-matched (x1.83)``."""
    runs: tuple[RunOutcome, ...]
    width: float

    @property
    def finished(self) -> list[dict[str, Any]]:
        return [r.summary for r in self.runs if r.summary is not None]

    @property
    def failed(self) -> list[RunOutcome]:
        return [r for r in self.runs if r.summary is None]

    def values(self, key: str) -> list[float]:
        """``key`` of every finished run that has it (a run without a test split has no
        ``test_accuracy``)."""
        return [float(s[key]) for s in self.finished if s.get(key) is not None]


@dataclass(frozen=True)
class CompareResult:
    """Every arm of a compare, on its task, epochs and seeds; ``out`` holds its files."""

    task: str
    epochs: int
    seeds: tuple[int, ...]
    arms: tuple[ArmSummary, ...]
    out: Path

    @property
    def complete(self) -> bool:
        """Every run of every arm finished (none failed)."""
        return not any(arm.failed for arm in self.arms)

    @property
    def score(self) -> str:
        """The accuracy arms are compared on: ``test_accuracy`` (the test split, which no
        decision read) when every finished run has one, else ``final_accuracy`` (the
        decision split: the task has no test split)."""
        finished = [s for arm in self.arms for s in arm.finished]
        has_test = finished and all(s.get("test_accuracy") is not None for s in finished)
        return "test_accuracy" if has_test else "final_accuracy"


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% t-interval (NaN half-width for fewer than 2)."""
    mean = statistics.fmean(values) if values else math.nan
    if len(values) < 2:
        return mean, math.nan
    # Imported here, for start-up time only: scipy.stats takes a noticeable part of a
    # second to import, and every command that loads this module need not pay it.
    from scipy import stats

    half = float(stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values)
    return mean, half / math.sqrt(len(values))


def _by_seed(arm: ArmSummary, key: str) -> dict[int, float]:
    return {
        o.seed: float(o.summary[key])
        for o in arm.runs
        if o.summary is not None and o.summary.get(key) is not None
    }


def paired_difference(
    arm: ArmSummary, reference: ArmSummary, key: str = "test_accuracy"
) -> tuple[float, float, int]:
    """Mean and 95% half-width of this arm's ``key`` (an accuracy) minus the reference's,
    over the seeds both finished (pairing by seed removes the seed-to-seed spread)."""
    diffs = list(paired_differences(arm, reference, key).values())
    mean, half = mean_interval(diffs)
    return mean, half, len(diffs)


def paired_differences(arm: ArmSummary, reference: ArmSummary, key: str) -> dict[int, float]:
    """Per seed both arms finished (with ``key``), in seed order: this arm's ``key``
    minus the reference's."""
    ours, theirs = _by_seed(arm, key), _by_seed(reference, key)
    return {s: ours[s] - theirs[s] for s in sorted(ours.keys() & theirs.keys())}
