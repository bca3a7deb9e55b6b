"""Can a wider seed make growth pay on digits? The heuristic with an experimental
widening blueprint against static hosts of several widths, accuracy against FLOPs.

Run by hand, one torch thread::

    .venv/bin/python -m benchmarks.digits_widening --seeds 0-9

On digits the heuristic's residual seeds add about 2x the static host's training FLOPs
for +0.4 pp, while a static host widened x1.5 gains +2.6 pp for 2x (growth-digits.md).
The digits host is 2/4/8 channels wide; a residual seed keeps its slot's width. The
``wide`` blueprint registered here (experimental, not part of the product) widens the
computation at its slot instead: ``x + gamma * conv1x1(relu(norm(conv3x3(x))))`` with a
4x wider hidden layer. The heuristic runs with it alone, at growth budgets of 1 and 2x
the host's parameters (chosen on tuning seeds 1000-1004), and with its default
blueprints. The static arms widen the host uniformly (x1.25 rounds to 2/5/10, x1.5 is
3/6/12) and one block at a time, to show where width pays. Writes
``benchmarks/results/digits-widening.{md,json}``.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import torch
from torch import nn

from benchmarks.common import mean_ci, write_result
from esper.arms import parse_seeds
from esper.config import HeuristicConfig, to_dict
from esper.contracts import Topology
from esper.data import SplitData, load_digits
from esper.model.blueprints import (
    GrowthKind,
    Residual,
    blueprint_names,
    group_count,
    register_blueprint,
)
from esper.training.builders import build_episode, build_run_controller
from esper.training.episode import run_episode
from esper.training.tasks import TASKS, get_task, run_config

EXPANSION = 4


@register_blueprint(
    Topology.CNN,
    "wide",
    params=lambda c: (9 + 1) * c * EXPANSION * c + 2 * EXPANSION * c + c,
    help="experimental: 3x3 conv to 4x the width, norm, ReLU, 1x1 back",
)
def _wide(c: int) -> nn.Module:
    hidden = EXPANSION * c
    branch = nn.Sequential(
        nn.Conv2d(c, hidden, 3, padding=1, bias=False),
        nn.GroupNorm(group_count(hidden), hidden),
        nn.ReLU(),
        nn.Conv2d(hidden, c, 1, bias=False),
    )
    return Residual(branch, c, Topology.CNN)


PRODUCT = tuple(n for n in blueprint_names(Topology.CNN, GrowthKind.DEPTH) if n != "wide")


def _wide_only(budget: float) -> HeuristicConfig:
    return HeuristicConfig(blueprints=("wide",), max_growth_params=budget)


HOST = (2, 4, 8)
"""The digits task's host widths."""

ARMS: dict[str, tuple[tuple[int, ...], HeuristicConfig | None]] = {
    "static": (HOST, None),
    "static@1.25 (2/5/10)": ((2, 5, 10), None),
    "static@1.5 (3/6/12)": ((3, 6, 12), None),
    "static, first block 3 (3/4/8)": ((3, 4, 8), None),
    "static, middle block 8 (2/8/8)": ((2, 8, 8), None),
    "static, last block 16 (2/4/16)": ((2, 4, 16), None),
    "heuristic (default blueprints)": (HOST, HeuristicConfig(blueprints=PRODUCT)),
    "heuristic (wide, budget 1x)": (HOST, _wide_only(1.0)),
    "heuristic (wide, budget 2x)": (HOST, _wide_only(2.0)),
}
"""Arm -> (host widths, heuristic settings; None: the static host)."""


def _run(
    split: SplitData, widths: tuple[int, ...], heuristic: HeuristicConfig | None, seed: int
) -> Any:
    """One digits run on a host of these block ``widths``: a task of its own, registered
    once, built like every episode (`build_episode`); the heuristic grows it if given."""
    name = "digits@" + "-".join(map(str, widths))
    if name not in TASKS:
        task = get_task("digits")
        kwargs = task.host_kwargs
        TASKS.add(
            name,
            dataclasses.replace(
                task, name=name, host_kwargs=lambda s, m: {**kwargs(s, m), "widths": widths}
            ),
        )
    controller = "baseline" if heuristic is None else "heuristic"
    layers: dict[str, Any] = {"task": name, "controller": controller, "episode": {"seed": seed}}
    if heuristic is not None:
        layers["heuristic"] = to_dict(heuristic)
    config = run_config(layers)
    runner = build_episode(config, split)
    return run_episode(runner, build_run_controller(config, runner))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-9", help="held-out seeds (tuning used 1000-1004)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = parse_seeds(args.seeds)
    split = load_digits()
    runs: dict[str, list[dict[str, float]]] = {}
    for arm, (widths, heuristic) in ARMS.items():
        for seed in seeds:
            result = _run(split, widths, heuristic, seed)
            runs.setdefault(arm, []).append(
                {
                    "seed": seed,
                    "final_accuracy": result.final_accuracy,
                    "train_gflops": sum(r.train_flops for r in result.history) / 1e9,
                    "params": result.history[-1].params,
                    "seeds_kept": result.seeds_fossilized,
                }
            )
            print(arm, seed, f"{result.final_accuracy:.2f}", flush=True)
    lines = [
        "| arm | final acc (%) | training GFLOPs | params | seeds kept |",
        "|---|---|---|---|---|",
    ]
    for arm, rows in runs.items():
        cells = []
        for key in ("final_accuracy", "train_gflops", "params", "seeds_kept"):
            mean, half = mean_ci([row[key] for row in rows])
            cells.append(f"{mean:,.2f} ± {half:,.2f}")
        lines.append(f"| {arm} | {' | '.join(cells)} |")
    lines += [
        "",
        f"digits, {get_task('digits').epochs} epochs, seeds {args.seeds}, mean ± 95% interval "
        "over seeds; training FLOPs forward and backward, 2 per multiply-add.",
    ]
    path = write_result("digits-widening", {"seeds": seeds, "runs": runs}, "\n".join(lines))
    print(path.read_text())


if __name__ == "__main__":
    main()
