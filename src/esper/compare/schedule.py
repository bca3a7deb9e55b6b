"""`compare`: every arm on every seed through a pool, the matched arms sized and started
once the grown runs they match have finished."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from esper.arms import Arm
from esper.compare.pools import RunPool
from esper.compare.runs import RunOutcome, task_for
from esper.compare.statistics import ArmSummary, CompareResult
from esper.config import RunConfig
from esper.rl.agent import PolicyError, load_policy
from esper.run import RunError
from esper.training.builders import build_model, load_data
from esper.training.tasks import TaskOptions, get_task

__all__ = ["check_policies", "compare", "matched_width"]

OnDone = Callable[[RunOutcome, int, int], None]
"""Hears each finished run: ``on_done(outcome, finished, total)``."""


def compare(
    out: Path,
    base: RunConfig,
    arms: Sequence[Arm],
    seeds: Sequence[int],
    pool: RunPool,
    on_done: OnDone = lambda outcome, done, total: None,
) -> CompareResult:
    """Run every arm on every seed through ``pool`` and summarise them.

    ``on_done(outcome, finished, total)`` is called as each run finishes. Matched arms
    are started once every run of the first growing arm has finished. Every arm's
    policy is checked first (`check_policies`).
    """
    check_policies(arms, base.task)
    out.mkdir(parents=True, exist_ok=True)
    schedule = _Schedule(out, base, arms, seeds, pool, on_done)
    try:
        schedule.run()
    except BaseException:
        pool.terminate()
        raise
    pool.close()
    summaries = tuple(schedule.summary(arm) for arm in arms)
    return CompareResult(base.task, base.episode.epochs, tuple(seeds), summaries, out)


class _Schedule:
    """A compare in flight: what was submitted to the pool, the outcomes so far and each
    arm's width (a matched arm's once the reference arm has finished)."""

    def __init__(
        self,
        out: Path,
        base: RunConfig,
        arms: Sequence[Arm],
        seeds: Sequence[int],
        pool: RunPool,
        on_done: OnDone,
    ) -> None:
        self.out, self.base, self.arms, self.seeds = out, base, arms, seeds
        self.pool, self.on_done = pool, on_done
        self.total = len(arms) * len(seeds)
        self.outcomes: dict[str, list[RunOutcome]] = {a.label: [] for a in arms}
        self.widths: dict[str, float] = {a.label: a.width for a in arms if a.width is not None}
        self.twins: dict[str, list[str]] = {}
        """A fixed arm's label -> the matched arms sized to its very runs, which share them."""
        self.done = self.pending = 0

    def run(self) -> None:
        """Submit the arms of fixed width (growing ones first), then the matched arms as
        soon as every run of the first growing arm has finished; wait for them all."""
        order = sorted(self.arms, key=lambda a: (not a.grows, a.width is None))
        reference = next((a for a in order if a.grows), None)
        matched = [a for a in self.arms if a.width is None]
        for arm in order:
            if arm.width is not None:
                self._submit(arm, arm.width)
        while self.pending:
            self._finished(self.pool.next_done())
            self.pending -= 1
            if matched and reference is not None and self._all_done(reference):
                self._start_matched(matched, reference)
                matched = []

    def summary(self, arm: Arm) -> ArmSummary:
        """``arm``'s outcomes by seed, labelled with its width if it was matched."""
        widths = self.widths
        label = (
            arm.label
            if arm.label not in widths or arm.width is not None
            # A matched arm has no width when no grown run finished to size it.
            else f"{arm.label} (x{widths[arm.label]:g})"
        )
        runs = tuple(sorted(self.outcomes[arm.label], key=lambda o: o.seed))
        return ArmSummary(arm, label, runs, widths.get(arm.label, math.nan))

    def _submit(self, arm: Arm, width: float) -> None:
        for seed in self.seeds:
            self.pool.submit(task_for(self.out, self.base, arm, width, seed))
            self.pending += 1

    def _finished(self, outcome: RunOutcome) -> None:
        self.outcomes[outcome.arm].append(outcome)
        self.done += 1
        self.on_done(outcome, self.done, self.total)
        for label in self.twins.get(outcome.arm, []):
            self._finished(replace(outcome, arm=label, cached=outcome.summary is not None))

    def _all_done(self, arm: Arm) -> bool:
        return len(self.outcomes[arm.label]) == len(self.seeds)

    def _start_matched(self, matched: list[Arm], reference: Arm) -> None:
        """Size each matched arm to the reference arm's mean final parameter count and
        submit its runs (or fail them, if no reference run finished)."""
        sizes = [float(o.summary["params"]) for o in self.outcomes[reference.label] if o.summary]
        for arm in matched:
            if not sizes:
                for seed in self.seeds:
                    self._finished(RunOutcome(arm.label, seed, "", None, "no grown run to match"))
                continue
            self.widths[arm.label] = matched_width(self.base, statistics.fmean(sizes))
            twin = self._twin(arm, self.widths[arm.label])
            if twin is None:
                self._submit(arm, self.widths[arm.label])
                continue
            # The same runs as a listed arm's (static at that width): share, not train twice.
            self.twins.setdefault(twin.label, []).append(arm.label)
            for outcome in list(self.outcomes[twin.label]):
                self._finished(replace(outcome, arm=arm.label, cached=outcome.summary is not None))

    def _twin(self, matched: Arm, width: float) -> Arm | None:
        """The listed arm of fixed width whose runs ``matched`` at ``width`` would be."""
        sized = replace(matched, width=width)
        return next((a for a in self.arms if a.width is not None and a.same_runs(sized)), None)


def check_policies(arms: Sequence[Arm], task: str) -> None:
    """`RunError` (one line naming the fix) unless the policy of every arm that has one
    loads and was trained on ``task``: a compare checks it before any arm trains."""
    for arm in arms:
        if arm.policy is None:
            continue
        try:
            load_policy(Path(arm.policy), task)
        except PolicyError as error:
            raise RunError(f"arm {arm.label} ({arm.policy}): {error}") from None


def matched_width(config: RunConfig, target_params: float) -> float:
    """The width multiplier (to 0.01) whose static host has closest to ``target_params``."""
    spec = get_task(config.task)
    split = load_data(spec, _options(config))

    def params(multiplier: float) -> int:
        return build_model(spec, split, config.slots, None, multiplier).host_params

    low, high = 100, 1600  # multipliers in hundredths; host params never fall with width
    while low < high:
        mid = (low + high) // 2
        if params(mid / 100) >= target_params:
            high = mid
        else:
            low = mid + 1
    # The first multiplier reaching the target, or the one below it if that is closer.
    best = min((low, max(low - 1, 1)), key=lambda m: abs(params(m / 100) - target_params))
    return best / 100


def _options(config: RunConfig) -> TaskOptions:
    return TaskOptions(
        data_dir=Path(config.data_dir) if config.data_dir else None,
        text_file=Path(config.text_file) if config.text_file else None,
    )
