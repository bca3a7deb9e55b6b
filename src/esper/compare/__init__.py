"""``esper compare``: does growing beat a fixed network? Every arm on every seed.

An *arm* is a way to train the task: ``heuristic`` (grow with the rule-based controller),
``static`` (the host, never grown), ``static@X`` (a static host with every width scaled
by X) and ``static-matched`` (a static host widened to the grown runs' mean final
parameter count, resolved once the grown runs are done). Each arm x seed is an ordinary
run directory under ``OUT/runs/<arm>/seed-<n>/``, trained with one torch thread by one
worker of the pool `compare` is given: `LocalPool` (processes on this machine) or
`RayPool` (tasks on a Ray cluster). A finished run is never trained again, and an
interrupted one resumes from its last checkpoint, so rerunning the same command
continues an interrupted compare. ``OUT`` itself is held by one compare at a time, which
records the settings its runs share and refuses a rerun with others
(`CompareDirectory`).

The result: a table (mean and 95% t-interval over seeds of final and best accuracy,
parameters, training and evaluation FLOPs, wall time, seeds kept and the run's return,
the reward every controller's run records, plus each arm's paired difference in final
accuracy against the first arm), ``compare.json``, ``compare.md`` and
``accuracy_vs_flops.png`` (one point per run) in ``OUT``.

The package, in the order its modules import each other:

* `esper.compare.runs`: one arm on one seed (`RunTask`, `run_task`) and its cache.
* `esper.compare.pools`: where runs execute (`RunPool`: `LocalPool`, `RayPool`).
* `esper.compare.statistics`: the result (`CompareResult`, `ArmSummary`), 95% intervals
  and paired differences.
* `esper.compare.report`: the table, ``compare.json``, ``compare.md`` and the plot.
* `esper.compare.directory`: ``OUT`` (`CompareDirectory`): its lock, the settings its
  runs share, and result files that only a complete table replaces.
* `esper.compare.schedule`: `compare` itself, `check_policies` and `matched_width`.
"""

from __future__ import annotations

from esper.arms import Arm, arm_help, parse_arms, parse_seeds
from esper.compare.directory import SETTINGS_FILE, CompareDirectory
from esper.compare.pools import LocalPool, RayPool, RunPool
from esper.compare.report import (
    METRICS,
    PARTIAL_RESULTS,
    RESULTS,
    ResultFiles,
    load_result,
    plot_accuracy_vs_flops,
    table,
    write_outputs,
    write_report,
)
from esper.compare.runs import RunOutcome, RunTask, cached_outcome, run_task
from esper.compare.schedule import check_policies, compare, matched_width
from esper.compare.statistics import (
    ArmSummary,
    CompareResult,
    mean_interval,
    paired_difference,
    paired_differences,
)

__all__ = [
    "METRICS",
    "PARTIAL_RESULTS",
    "RESULTS",
    "SETTINGS_FILE",
    "Arm",
    "ArmSummary",
    "CompareDirectory",
    "CompareResult",
    "LocalPool",
    "RayPool",
    "ResultFiles",
    "RunOutcome",
    "RunPool",
    "RunTask",
    "arm_help",
    "cached_outcome",
    "check_policies",
    "compare",
    "load_result",
    "matched_width",
    "mean_interval",
    "paired_difference",
    "paired_differences",
    "parse_arms",
    "parse_seeds",
    "plot_accuracy_vs_flops",
    "run_task",
    "table",
    "write_outputs",
    "write_report",
]
