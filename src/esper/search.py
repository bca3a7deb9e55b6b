"""Headroom: how much better than the heuristic can any controller be on a task?

``esper search`` answers it before anyone trains a policy: it searches a family of
scripted plans (`esper.config.ScheduleConfig`, played by the ``schedule`` controller) on
training seeds, and evaluates the best plan found against the heuristic on held-out
seeds, paired. A learned controller that cannot beat the best fixed plan on a task has
little to learn there; one that can has a measured target.

**The family** (`PlanSpace`), read from the host's slots as a run sees them: each slot
is left alone or gets one step, a blueprint that fits there (a depth seed, or a width
seed where the block before the slot can widen) at an epoch from 1 to ``epochs -
heuristic.min_epochs_left`` (the heuristic's own limit: time to train, blend and judge a
seed), blended by any blend that blueprint may use; and ``fossilize_after``, the epochs a
seed waits on probation before the plan asks to keep it, is 0 to 3. The empty plan is
the static host.

**The search**, evolutionary and deterministic for a ``search_seed``: the first
generation is random plans (the heuristic trains on the training seeds beside them);
then the heuristic's own plan (its germinations on the first training seed) joins,
and every later generation is mutations (one or two changes each: a step added,
removed, moved in time, given another blueprint or blend, or ``fossilize_after``
changed) of plans drawn from the best ``elite`` so far. Every plan trains on every
training seed; no plan is trained twice.

**The score** reads only the decision split: ``accuracy`` (the default) ranks plans by
mean final decision-split accuracy among those whose mean training FLOPs are at most
``max_flops_ratio`` times the heuristic's on the same seeds (any over that budget ranks
below every one within it); ``return`` ranks them by the episode's return, the reward
the learned controller maximises. The test split is read only by the evaluation.

Every run is an ordinary run directory under ``OUT/runs/<plan>/seed-<n>/``, the plan
named by its contents (`plan_label`), and is reused when a search in ``OUT`` needs it
again: an interrupted search continues where it stopped, and a search with another
objective or budget in the same ``OUT`` trains only the plans it has not seen. The
evaluation of a best plan is a compare in ``OUT/eval/<plan>/``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from esper.arms import parse_arms
from esper.compare import (
    CompareResult,
    RunOutcome,
    RunPool,
    compare,
    paired_difference,
)
from esper.compare.runs import task_for
from esper.config import GrowthStep, RunConfig, ScheduleConfig, to_dict
from esper.controller.features import legal_blends
from esper.lifecycle import BlendAlgorithm
from esper.run import RunError
from esper.telemetry.report import read_history
from esper.training.builders import build_episode

__all__ = [
    "HEURISTIC",
    "SCHEDULE",
    "Evaluation",
    "PlanResult",
    "PlanSpace",
    "SearchResult",
    "SearchSettings",
    "SlotOptions",
    "canonical",
    "evaluate",
    "heuristic_plan",
    "plan_label",
    "plan_space",
    "search",
]

HEURISTIC, SCHEDULE = parse_arms("heuristic,schedule")
"""The arms of the reference and of a plan, as ``esper compare --arms`` names them."""

Objective = Literal["accuracy", "return"]


@dataclass(frozen=True)
class SlotOptions:
    """What a plan may grow at one slot."""

    slot: str
    blueprints: tuple[str, ...]
    """Every blueprint that fits there, depth and width."""
    blends: dict[str, tuple[BlendAlgorithm, ...]] = field(default_factory=dict)
    """Per blueprint, the blends it may use (a width seed never blends gated)."""


@dataclass(frozen=True)
class PlanSpace:
    """The family of plans a search draws from (see the module docstring)."""

    slots: tuple[SlotOptions, ...]
    last_epoch: int
    """The latest epoch a step may germinate at."""
    max_fossilize_after: int = 3
    grow_probability: float = 0.5
    """The chance a random plan grows at a given slot."""

    def random_plan(self, rng: random.Random) -> ScheduleConfig:
        steps = [
            self._random_step(s, rng) for s in self.slots if rng.random() < self.grow_probability
        ]
        return canonical(ScheduleConfig(tuple(steps), rng.randint(0, self.max_fossilize_after)))

    def mutate(self, plan: ScheduleConfig, rng: random.Random) -> ScheduleConfig:
        """``plan`` with one or two random changes (never ``plan`` itself)."""
        child = plan
        for _ in range(rng.choice((1, 2))):
            child = canonical(self._change(child, rng))
        while child == plan:
            child = canonical(self._change(child, rng))
        return child

    def _random_step(self, options: SlotOptions, rng: random.Random) -> GrowthStep:
        blueprint = rng.choice(options.blueprints)
        blend = rng.choice(options.blends[blueprint])
        return GrowthStep(rng.randint(1, self.last_epoch), options.slot, blueprint, blend)

    def _change(self, plan: ScheduleConfig, rng: random.Random) -> ScheduleConfig:
        if rng.random() < 0.15:
            after = min(
                max(plan.fossilize_after + rng.choice((-1, 1)), 0), self.max_fossilize_after
            )
            return replace(plan, fossilize_after=after)
        options = rng.choice(self.slots)
        steps = {step.slot: step for step in plan.steps}
        step = steps.get(options.slot)
        if step is None:
            steps[options.slot] = self._random_step(options, rng)
        else:
            changed = self._change_step(step, options, rng)
            if changed is None:
                del steps[options.slot]
            else:
                steps[options.slot] = changed
        ordered = tuple(steps[s.slot] for s in self.slots if s.slot in steps)
        return replace(plan, steps=ordered)

    def _change_step(
        self, step: GrowthStep, options: SlotOptions, rng: random.Random
    ) -> GrowthStep | None:
        """``step`` moved, re-drawn or given another blend; None: removed."""
        kind = rng.choice(("remove", "move", "blueprint", "blend"))
        if kind == "remove":
            return None
        if kind == "move":
            epoch = step.epoch + rng.choice((-3, -2, -1, 1, 2, 3))
            return replace(step, epoch=min(max(epoch, 1), self.last_epoch))
        if kind == "blueprint":
            blueprint = rng.choice(options.blueprints)
            blends = options.blends[blueprint]
            blend = step.blend if step.blend in blends else rng.choice(blends)
            return replace(step, blueprint=blueprint, blend=blend)
        return replace(step, blend=rng.choice(options.blends[step.blueprint]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "last_epoch": self.last_epoch,
            "max_fossilize_after": self.max_fossilize_after,
            "grow_probability": self.grow_probability,
            "slots": {s.slot: list(s.blueprints) for s in self.slots},
        }


def plan_label(plan: ScheduleConfig) -> str:
    """``plan-`` and 10 hex digits of the SHA-256 of ``plan``'s JSON: its runs' folder.
    Named by content, the same plan's runs are reused by any search in the same
    ``--out``, whatever its objective, budget or order (a sequence number would name
    another plan's runs in a search that ranks differently)."""
    text = json.dumps(to_dict(canonical(plan)), sort_keys=True)
    return f"plan-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def canonical(plan: ScheduleConfig) -> ScheduleConfig:
    """``plan`` in the one form of the plans that play the same: without steps,
    ``fossilize_after`` has nothing to act on (the static host)."""
    return plan if plan.steps else replace(plan, fossilize_after=0)


def plan_space(config: RunConfig) -> PlanSpace:
    """The family of plans for ``config``'s host: one episode is built (its data read)
    to see each slot's blueprints as a run does."""
    reports = build_episode(config).reports()
    slots = tuple(
        SlotOptions(
            report.slot_id,
            tuple(report.costs),
            {name: tuple(sorted(legal_blends(name, reports))) for name in report.costs},
        )
        for report in reports
        if report.costs
    )
    last = max(config.episode.epochs - config.heuristic.min_epochs_left, 1)
    return PlanSpace(slots, last)


def heuristic_plan(run_dir: Path, blend: BlendAlgorithm) -> ScheduleConfig:
    """The heuristic's run in ``run_dir`` as a plan: its first germination in each slot,
    at the epoch it was decided, blended by ``blend`` (the heuristic's one blend)."""
    steps: dict[str, GrowthStep] = {}
    for row in read_history(run_dir / "history.jsonl"):
        words = row.action.split()
        if words[0] == "GERMINATE" and row.outcome == "applied" and words[1] not in steps:
            steps[words[1]] = GrowthStep(row.epoch, words[1], words[2], blend)
    return canonical(ScheduleConfig(tuple(sorted(steps.values(), key=lambda s: s.slot))))


@dataclass(frozen=True)
class SearchSettings:
    """How a search runs (``esper search``'s options)."""

    train_seeds: tuple[int, ...]
    candidates: int = 48
    """Plans trained in all (each on every training seed), the heuristic's included."""
    population: int = 8
    """Plans per generation."""
    elite: int = 4
    """Mutations are drawn from this many best plans so far."""
    search_seed: int = 0
    objective: Objective = "accuracy"
    max_flops_ratio: float = 1.0
    """With objective ``accuracy``: the training-FLOP budget, a multiple of the
    heuristic's mean on the training seeds."""


@dataclass(frozen=True)
class PlanResult:
    """One plan on the training seeds (the decision split's numbers only)."""

    label: str
    plan: ScheduleConfig | None
    """None for the heuristic itself."""
    outcomes: tuple[RunOutcome, ...]
    origin: str
    """How the plan came to be: ``random``, ``heuristic's plan``, ``mutation of plan-007``."""

    @property
    def failed(self) -> bool:
        return any(o.summary is None for o in self.outcomes)

    def mean(self, key: str) -> float:
        values = [float(o.summary[key]) for o in self.outcomes if o.summary is not None]
        return statistics.fmean(values) if values else math.nan

    @property
    def accuracy(self) -> float:
        return self.mean("final_accuracy")

    @property
    def train_flops(self) -> float:
        return self.mean("train_flops")

    @property
    def total_reward(self) -> float:
        return self.mean("total_reward")

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "origin": self.origin,
            "plan": None if self.plan is None else to_dict(self.plan),
            "decision_accuracy": self.accuracy,
            "train_flops": self.train_flops,
            "return": self.total_reward,
            "runs": [
                {"seed": o.seed, "run_dir": o.run_dir, "summary": o.summary, "error": o.error}
                for o in self.outcomes
            ],
        }


@dataclass(frozen=True)
class SearchResult:
    heuristic: PlanResult
    plans: tuple[PlanResult, ...]
    settings: SearchSettings
    space: PlanSpace

    @property
    def flops_budget(self) -> float:
        return self.settings.max_flops_ratio * self.heuristic.train_flops

    def key(self, result: PlanResult) -> tuple[float, float]:
        """Larger is better (see the module docstring); a failed plan ranks last."""
        if result.failed:
            return (-math.inf, -math.inf)
        if self.settings.objective == "return":
            return (0.0, result.total_reward)
        if result.train_flops <= self.flops_budget:
            return (1.0, result.accuracy)
        return (0.0, -result.train_flops)

    def cost(self) -> dict[str, float]:
        """What the search itself took: runs, their training FLOPs and wall seconds
        (summed over runs, as one core would spend them)."""
        summaries = [
            o.summary for p in (self.heuristic, *self.plans) for o in p.outcomes if o.summary
        ]
        return {
            "runs": float(len(summaries)),
            "train_flops": float(sum(s["train_flops"] for s in summaries)),
            "run_seconds": float(sum(s["wall_seconds"] for s in summaries)),
        }

    def ranked(self) -> list[PlanResult]:
        return sorted(self.plans, key=self.key, reverse=True)

    @property
    def best(self) -> PlanResult:
        return self.ranked()[0]


OnPlan = Callable[[PlanResult, int, int, PlanResult], None]
"""Hears each finished plan: ``on_plan(result, finished, total, best so far)``."""


def search(
    out: Path,
    base: RunConfig,
    space: PlanSpace,
    settings: SearchSettings,
    pool: RunPool,
    on_plan: OnPlan = lambda result, done, total, best: None,
) -> SearchResult:
    """Search ``space`` on ``settings.train_seeds`` through ``pool`` (which stays open,
    for `evaluate`). Deterministic: the same settings and outcomes give the same plans,
    so a rerun reuses every run already trained in ``out``."""
    try:
        return _search(out, base, space, settings, pool, on_plan)
    except BaseException:
        pool.terminate()  # Ctrl-C or a failure: unfinished runs keep their checkpoints
        raise


def _search(
    out: Path,
    base: RunConfig,
    space: PlanSpace,
    settings: SearchSettings,
    pool: RunPool,
    on_plan: OnPlan,
) -> SearchResult:
    rng = random.Random(settings.search_seed)
    seen: set[ScheduleConfig] = set()
    first = _fresh(lambda: _Candidate(space.random_plan(rng), "random"), settings.population, seen)
    jobs = [_Job(HEURISTIC.label, None, "the heuristic"), *_jobs(first, seen)]
    heuristic, *done = _train(out, base, settings, pool, jobs)
    failed = next((o for o in heuristic.outcomes if o.summary is None), None)
    if failed is not None:
        raise RunError(
            f"the heuristic failed on training seed {failed.seed} ({failed.error}): it is "
            "the reference every plan is scored against; fix that first"
        )
    result = SearchResult(heuristic, tuple(done), settings, space)
    _announce(result, done, on_plan, 0)
    anchor: ScheduleConfig | None = heuristic_plan(
        Path(heuristic.outcomes[0].run_dir), base.heuristic.blend
    )
    while len(result.plans) < settings.candidates:
        size = min(settings.population, settings.candidates - len(result.plans))
        generation = _next_generation(result, size, rng, seen, anchor)
        anchor = None
        if not generation:
            break  # the family is exhausted
        before = len(result.plans)
        new = _train(out, base, settings, pool, _jobs(generation, seen))
        result = replace(result, plans=result.plans + tuple(new))
        _announce(result, new, on_plan, before)
    return result


@dataclass(frozen=True)
class _Candidate:
    plan: ScheduleConfig
    origin: str


def _next_generation(
    result: SearchResult,
    size: int,
    rng: random.Random,
    seen: set[ScheduleConfig],
    anchor: ScheduleConfig | None,
) -> list[_Candidate]:
    first = [] if anchor is None or anchor in seen else [_Candidate(anchor, "heuristic's plan")]
    elite = [r for r in result.ranked()[: result.settings.elite] if r.plan is not None]
    if not elite:
        return first

    def child() -> _Candidate:
        parent = rng.choice(elite)
        assert parent.plan is not None
        return _Candidate(result.space.mutate(parent.plan, rng), f"mutation of {parent.label}")

    return first + _fresh(child, size - len(first), seen | {c.plan for c in first})


def _fresh(
    make: Callable[[], _Candidate], size: int, seen: set[ScheduleConfig]
) -> list[_Candidate]:
    """Up to ``size`` candidates from ``make`` whose plans are not in ``seen`` nor
    repeated (fewer when ``make`` keeps repeating itself: a small family)."""
    plans = set(seen)
    candidates: list[_Candidate] = []
    for _ in range(100 * size):
        if len(candidates) == size:
            break
        candidate = make()
        if candidate.plan not in plans:
            plans.add(candidate.plan)
            candidates.append(candidate)
    return candidates


@dataclass(frozen=True)
class _Job:
    label: str
    plan: ScheduleConfig | None
    """None: the heuristic."""
    origin: str


def _jobs(candidates: Sequence[_Candidate], seen: set[ScheduleConfig]) -> list[_Job]:
    """``candidates`` as jobs (`plan_label`), marked seen."""
    seen.update(c.plan for c in candidates)
    return [_Job(plan_label(c.plan), c.plan, c.origin) for c in candidates]


def _train(
    out: Path, base: RunConfig, settings: SearchSettings, pool: RunPool, jobs: Sequence[_Job]
) -> list[PlanResult]:
    """Every job on every training seed, all submitted at once; results in job order."""
    for job in jobs:
        arm = HEURISTIC if job.plan is None else replace(SCHEDULE, label=job.label)
        config = base if job.plan is None else replace(base, schedule=job.plan)
        for seed in settings.train_seeds:
            pool.submit(task_for(out, config, arm, 1.0, seed))
    outcomes: dict[tuple[str, int], RunOutcome] = {}
    for _ in range(len(jobs) * len(settings.train_seeds)):
        outcome = pool.next_done()
        outcomes[(outcome.arm, outcome.seed)] = outcome
    return [
        PlanResult(
            job.label,
            job.plan,
            tuple(outcomes[(job.label, seed)] for seed in settings.train_seeds),
            job.origin,
        )
        for job in jobs
    ]


def _announce(
    result: SearchResult, new: Sequence[PlanResult], on_plan: OnPlan, before: int
) -> None:
    """``on_plan`` for each of ``new``, in order, with the best plan up to it."""
    total = result.settings.candidates
    for done, plan in enumerate(new, start=before + 1):
        so_far = replace(result, plans=result.plans[:done])
        on_plan(plan, done, total, so_far.best)


@dataclass(frozen=True)
class Evaluation:
    """The best plan against the heuristic on held-out seeds (the test split)."""

    compare: CompareResult
    accuracy: tuple[float, float, int]
    """Paired difference in the compare's score (test accuracy), plan minus heuristic."""
    reward: tuple[float, float, int]
    """Paired difference in return."""
    flops_ratio: float
    """The plan's mean training FLOPs over the heuristic's."""


def evaluate(
    out: Path, base: RunConfig, plan: ScheduleConfig, seeds: Sequence[int], pool: RunPool
) -> Evaluation:
    """``plan`` and the heuristic on ``seeds``: a compare in ``out`` (which closes
    ``pool``)."""
    result = compare(out, replace(base, schedule=plan), [HEURISTIC, SCHEDULE], seeds, pool)
    heuristic, scheduled = result.arms
    flops = statistics.fmean(scheduled.values("train_flops")) / statistics.fmean(
        heuristic.values("train_flops")
    )
    return Evaluation(
        result,
        paired_difference(scheduled, heuristic, result.score),
        paired_difference(scheduled, heuristic, "total_reward"),
        flops,
    )
