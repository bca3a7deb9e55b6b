"""A compare's ``--out``: one compare at a time, the settings its runs share, and result
files that only a complete table replaces.

``--out`` is an Esper directory of kind ``compare`` (`esper.rundir.RunDirectory`)::

    .esper-run            marker: an 'esper compare' or 'ppo eval' directory
    .esper.lock           held for the whole compare: a second one on it exits 2
    compare-config.json   what every run shares (`SETTINGS_FILE`), recorded at the start
    runs/<arm>/seed-<n>/  the runs, each an ordinary run directory with its own lock
    compare.json, compare.md, accuracy_vs_flops.png     the last complete table
    compare.partial.json, ...partial.md, ...partial.png a later table with failed runs

What a rerun may change: the arms and the seeds (more, fewer or others: each arm x seed
is its own run, and one already trained is reused), the pool (``--workers``, ``--ray``)
and ``--quiet``. What it may not: everything else the runs are trained with (task,
epochs, batches, batch size, data, device, every ``--config`` setting), recorded in
`SETTINGS_FILE` by the compare that trains the first run there; a compare with other
settings is refused before anything trains (runs trained with other settings are not
comparable with these). A policy arm's runs are keyed on the policy file's contents
instead (`esper.compare.runs.task_for`): a changed policy trains new runs.

A table with a failed run never replaces a complete one: it goes to `PARTIAL_RESULTS`
while `RESULTS` holds a complete table (or to `RESULTS` when they hold none yet); a
complete table goes to `RESULTS` and removes the partial files.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from esper.compare.report import PARTIAL_RESULTS, RESULTS, ResultFiles, write_outputs
from esper.compare.runs import shared_settings
from esper.compare.statistics import CompareResult
from esper.config import ConfigError, RunConfig, from_dict
from esper.rundir import LOCK, RunDirectory, RunError, atomic_write, lock_holder

__all__ = ["RUN_LOCK_WAIT", "SETTINGS_FILE", "CompareDirectory"]

SETTINGS_FILE = "compare-config.json"
"""In ``--out``: the configuration every run of the compare shares (`shared_settings`)."""

RUN_LOCK_WAIT = 10.0
"""Seconds a compare waits for the runs in its ``--out`` that are still locked when it
starts: the workers of a compare killed a moment ago exit with it, but not at once."""


class CompareDirectory:
    """A compare's ``--out``, held under its lock until `close` (a context manager)."""

    def __init__(self, directory: RunDirectory) -> None:
        self.path = directory.path
        self._directory = directory

    @classmethod
    def open(cls, out: Path, base: RunConfig, command: str | None = None) -> CompareDirectory:
        """Lock ``out`` for a compare on ``base`` (creating it, or continuing the compare
        it holds), after checking that its runs were trained with ``base``'s settings.

        `RunError` (one line naming the fix) for an ``out`` that is not a new, empty or
        compare directory, one that another compare holds, or one whose runs were
        trained with other settings.
        """
        directory = RunDirectory.create(out, command, kind="compare")
        try:
            _check_settings(out, shared_settings(base))
            _wait_for_runs(out, RUN_LOCK_WAIT)
        except BaseException:
            directory.close()
            raise
        return cls(directory)

    def write_result(self, result: CompareResult, meta: dict[str, Any]) -> ResultFiles:
        """Write ``result``'s table and plot where they belong (see the module docstring);
        returns the names written."""
        files = RESULTS
        if not result.complete and _holds_complete_table(self.path / RESULTS.table):
            files = PARTIAL_RESULTS
        write_outputs(result, meta, files)
        if files == RESULTS:  # whatever partial table is left is older than this one
            for name in PARTIAL_RESULTS.names:
                (self.path / name).unlink(missing_ok=True)
        return files

    def close(self) -> None:
        """Release the lock."""
        self._directory.close()

    def __enter__(self) -> CompareDirectory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Record ``settings`` in `SETTINGS_FILE`, or check them against the recorded ones.

    The record binds only once a run has been trained: until then (a compare that
    stopped before its first run, say on a bad Ray address) it is replaced.
    """
    path = out / SETTINGS_FILE
    trained = any((out / "runs").glob("*/seed-*/config.json"))
    if path.exists() and trained:
        recorded = _read_settings(path)
        if recorded != settings:
            raise RunError(
                f"{out} holds a compare trained with other settings "
                f"({_difference(recorded, settings)}); its runs are not comparable with "
                "these: rerun it with the same settings, or pick another --out"
            )
        return
    atomic_write(path, (json.dumps(settings, indent=2) + "\n").encode())


def _read_settings(path: Path) -> dict[str, Any]:
    """The recorded settings, in this Esper's form (defaults of fields added since)."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
        return shared_settings(from_dict(RunConfig, data))
    except (OSError, ValueError, ConfigError, TypeError, AttributeError) as error:
        raise RunError(
            f"{path} is damaged or from another version of Esper ({str(error)[:120]}); "
            "this compare cannot be continued: pick another --out"
        ) from None


def _difference(old: Any, new: Any, path: str = "") -> str:
    """The first setting in which ``old`` and ``new`` differ, e.g. ``episode.epochs: 12
    there, 11 now``."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*new, *(k for k in old if k not in new)]:
            if old.get(key) != new.get(key):
                return _difference(old.get(key), new.get(key), f"{path}.{key}" if path else key)
    return f"{path}: {json.dumps(old)} there, {json.dumps(new)} now"


def _wait_for_runs(out: Path, timeout: float) -> None:
    """Until no run in ``out`` is locked, for at most ``timeout`` seconds; a run still
    locked after that fails in the compare, naming its holder."""
    deadline = time.monotonic() + timeout
    for lock in (out / "runs").glob(f"*/seed-*/{LOCK}"):
        while lock_holder(lock.parent) is not None and time.monotonic() < deadline:
            time.sleep(0.05)


def _holds_complete_table(path: Path) -> bool:
    """``path`` is a readable ``compare.json`` in which every run finished."""
    try:
        runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
        return bool(runs) and all(run["summary"] is not None for run in runs)
    except (OSError, ValueError, KeyError, TypeError):
        return False
