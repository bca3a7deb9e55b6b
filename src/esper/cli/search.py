"""``esper search``: how much better than the heuristic can a controller be on a task?"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from esper.cli.compare import interrupted, open_pool, out_directory, print_compare
from esper.cli.runs import resolve_config
from esper.compare import CompareDirectory, parse_seeds
from esper.compare.report import provenance_lines
from esper.compare.statistics import mean_interval
from esper.config import ScheduleConfig, to_dict
from esper.provenance import provenance
from esper.run import RunError
from esper.rundir import atomic_write
from esper.search import (
    Evaluation,
    PlanResult,
    SearchResult,
    SearchSettings,
    evaluate,
    plan_space,
    search,
)
from esper.telemetry.report import format_flops

__all__ = ["BEST_PLAN", "SEARCH_JSON", "SEARCH_MD", "search_command"]

SEARCH_JSON = "search.json"
SEARCH_MD = "search.md"
BEST_PLAN = "best.config.json"
"""The best plan as a ``--config`` file: ``esper compare --arms heuristic,schedule``."""


def _settings(args: argparse.Namespace) -> tuple[SearchSettings, list[int]]:
    try:
        train, held_out = parse_seeds(args.train_seeds), parse_seeds(args.eval_seeds)
    except ValueError as error:
        raise RunError(str(error)) from None
    shared = sorted(set(train) & set(held_out))
    if shared:
        raise RunError(
            f"seed(s) {', '.join(map(str, shared[:5]))} are both training and evaluation "
            "seeds; a plan must be judged on seeds the search never saw: pick disjoint "
            "--train-seeds and --eval-seeds"
        )
    for name, low in (("candidates", 1), ("population", 1)):
        if getattr(args, name) < low:
            raise RunError(f"--{name} must be at least {low}, got {getattr(args, name)}")
    if not args.max_flops_ratio > 0:
        raise RunError(f"--max-flops-ratio must be > 0, got {args.max_flops_ratio}")
    settings = SearchSettings(
        tuple(train),
        candidates=args.candidates,
        population=min(args.population, args.candidates),
        search_seed=args.search_seed,
        objective=args.objective,
        max_flops_ratio=args.max_flops_ratio,
    )
    return settings, held_out


def search_command(args: argparse.Namespace, console: Console) -> int:
    settings, held_out = _settings(args)
    base = resolve_config(args)
    out = out_directory(args.out, Path("runs") / f"search-{base.task}")
    meta = provenance(" ".join(["esper", *map(shlex.quote, args.argv)]))
    say = (lambda *a, **k: None) if args.quiet else console.print
    with contextlib.ExitStack() as stack:
        stack.enter_context(CompareDirectory.open(out, base, meta["command"]))
        space = plan_space(base)
        if not space.slots:
            raise RunError(f"the {base.task} host has no slot a seed fits; nothing to search")
        runs = (settings.population + 1) * len(settings.train_seeds)
        pool, how = open_pool(args, out, runs, stack)
        say(
            f"search {settings.candidates} plans on {base.task}, training seeds "
            f"{args.train_seeds} ({len(space.slots)} slots, steps up to epoch "
            f"{space.last_epoch}), {how}, in {out}",
            soft_wrap=True,
        )
        try:
            result = search(out, base, space, settings, pool, _reporter(say))
            best = result.best
            say(
                f"best plan: {best.label} ({_describe(best.plan)}); evaluating it on "
                f"seeds {args.eval_seeds}",
                soft_wrap=True,
            )
            assert best.plan is not None
            eval_dir = out / "eval" / best.label
            plan_base = replace(base, schedule=best.plan)
            held = stack.enter_context(CompareDirectory.open(eval_dir, plan_base, meta["command"]))
            evaluation = evaluate(eval_dir, base, best.plan, held_out, pool)
        except KeyboardInterrupt as interrupt:
            return interrupted(console, interrupt)
        files = held.write_result(evaluation.compare, meta)
        _write(out, result, evaluation, meta)
    status = print_compare(evaluation.compare, eval_dir, console, files)
    console.print(_verdict(result, evaluation), soft_wrap=True)
    console.print(f"search table: {out / SEARCH_MD}; best plan: {out / BEST_PLAN}", soft_wrap=True)
    return status


def _reporter(say: Any) -> Any:
    def on_plan(result: PlanResult, done: int, total: int, best: PlanResult) -> None:
        if result.failed:
            error = next(o.error for o in result.outcomes if o.error)
            say(f"[{done}/{total}] {result.label}: FAILED: {error}", soft_wrap=True, markup=False)
            return
        say(
            f"[{done}/{total}] {result.label} ({result.origin}): val {result.accuracy:.2f}%, "
            f"{format_flops(result.train_flops)}, return {result.total_reward:.2f}; best "
            f"{best.label} {best.accuracy:.2f}%",
            soft_wrap=True,
            markup=False,
        )

    return on_plan


def _describe(plan: ScheduleConfig | None) -> str:
    """``width_100@r0c1 e8 linear, conv_heavy@r0c2 e1 gated; fossilize after 0``."""
    if plan is None:
        return "the heuristic"
    steps = ", ".join(f"{s.blueprint}@{s.slot} e{s.epoch} {s.blend}" for s in plan.steps)
    return f"{steps or 'no growth'}; fossilize after {plan.fossilize_after}"


def _interval(value: tuple[float, float, int], unit: str = "pp") -> str:
    mean, half, _ = value
    return f"{mean:+.2f} ± {half:.2f} {unit}"


def _verdict(result: SearchResult, evaluation: Evaluation) -> str:
    seeds = evaluation.accuracy[2]
    return (
        f"best plan minus heuristic on {seeds} held-out seeds, paired: accuracy "
        f"{_interval(evaluation.accuracy)}, return {_interval(evaluation.reward, '')}".rstrip()
        + f", at {evaluation.flops_ratio:.0%} of the heuristic's training FLOPs"
    )


def _write(out: Path, result: SearchResult, evaluation: Evaluation, meta: dict[str, Any]) -> None:
    best = result.best
    assert best.plan is not None
    atomic_write(
        out / BEST_PLAN, (json.dumps({"schedule": to_dict(best.plan)}, indent=2) + "\n").encode()
    )
    data = {
        **meta,
        "task": evaluation.compare.task,
        "settings": to_dict(result.settings),
        "space": result.space.to_dict(),
        "heuristic": result.heuristic.to_dict(),
        "plans": [p.to_dict() for p in result.ranked()],
        "best": best.label,
        "evaluation": {
            "seeds": list(evaluation.compare.seeds),
            "score": evaluation.compare.score,
            "accuracy_difference": list(evaluation.accuracy),
            "return_difference": list(evaluation.reward),
            "flops_ratio": evaluation.flops_ratio,
        },
        "cost": result.cost(),
    }
    atomic_write(out / SEARCH_JSON, (json.dumps(data, indent=2) + "\n").encode())
    atomic_write(out / SEARCH_MD, _markdown(result, evaluation, meta).encode())


def _markdown(result: SearchResult, evaluation: Evaluation, meta: dict[str, Any]) -> str:
    settings = result.settings
    train = ", ".join(map(str, settings.train_seeds))
    lines = [
        f"# Headroom search on {evaluation.compare.task}",
        "",
        *provenance_lines(meta),
        "",
        f"{len(result.plans)} plans, each on training seeds {train} "
        f"(objective {settings.objective}"
        + (
            f", at most {settings.max_flops_ratio:g}x the heuristic's training FLOPs, "
            f"{format_flops(result.flops_budget)}"
            if settings.objective == "accuracy"
            else ""
        )
        + "); scores on the decision split. "
        + _cost(result),
        "",
        "| rank | plan | origin | decision acc (%) | train FLOPs | return | steps |",
        "|---|---|---|---|---|---|---|",
        _row("-", result.heuristic),
    ]
    lines += [_row(str(rank), plan) for rank, plan in enumerate(result.ranked()[:10], start=1)]
    accuracy = evaluation.compare.arms[1].values(evaluation.compare.score)
    heuristic = evaluation.compare.arms[0].values(evaluation.compare.score)
    acc_mean, acc_half = mean_interval(accuracy)
    h_mean, h_half = mean_interval(heuristic)
    lines += [
        "",
        f"## The best plan on held-out seeds {', '.join(map(str, evaluation.compare.seeds))}",
        "",
        f"Plan {result.best.label}: {_describe(result.best.plan)}.",
        "",
        f"- heuristic: {h_mean:.2f} ± {h_half:.2f} % ({evaluation.compare.score})",
        f"- best plan: {acc_mean:.2f} ± {acc_half:.2f} %",
        f"- {_verdict(result, evaluation)}",
        "",
        f"The full table: `eval/{result.best.label}/compare.md`.",
        "",
    ]
    return "\n".join(lines)


def _cost(result: SearchResult) -> str:
    cost = result.cost()
    hours = cost["run_seconds"] / 3600
    return (
        f"The search trained {cost['runs']:.0f} runs: {format_flops(cost['train_flops'])} "
        f"of training, {hours:.2f} core-hours."
    )


def _row(rank: str, plan: PlanResult) -> str:
    return (
        f"| {rank} | {plan.label} | {plan.origin} | {plan.accuracy:.2f} | "
        f"{format_flops(plan.train_flops)} | {plan.total_reward:.2f} | {_describe(plan.plan)} |"
    )
