"""Does growing beat training a fixed network? Heuristic vs static hosts, same budget.

Run by hand, e.g.::

    .venv/bin/python -m benchmarks.growth --task digits --seeds 10
    .venv/bin/python -m benchmarks.growth --task cifar10 --data-dir /tmp/cifar10 --seeds 5

For each seed, three runs with the same data, epochs and optimizer:

* ``heuristic`` - the task's host, grown by the heuristic controller;
* ``static`` - the same host, never grown;
* ``static-grown-size`` - a static host whose widths are scaled so its parameter count
  matches the heuristic runs' mean final parameter count (host + fossils + live seeds).

Reported per arm: final and best validation accuracy, final parameters, training compute
(FLOPs of every training step, counted with torch's FlopCounterMode on the model as it
was during that epoch) and evaluation compute (validation plus the counterfactual passes
the heuristic needs), and wall time; mean and 95% t-interval over seeds.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import mean_ci, write_result
from esper.contracts import Controller, TaskType
from esper.controller import HeuristicController, StaticController
from esper.data import SplitData
from esper.model.blueprints import blueprint_names
from esper.training.batches import SplitBatches
from esper.training.episode import EpisodeRunner
from esper.training.tasks import TaskOptions, TaskSpec, get_task


def _flops(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], task: TaskType, backward: bool
) -> float:
    """FLOPs of one forward (and backward) pass on ``batch``, per sample.

    Counts on a copy: a training-mode forward would move BatchNorm statistics, and the
    backward would leave gradients, in the model being measured.
    """
    x, y = batch
    model = copy.deepcopy(model)
    model.train(backward)
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        if backward:
            loss = nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
            loss.backward()
    return counter.get_total_flops() / x.shape[0]


def run_arm(
    spec: TaskSpec,
    split: SplitData,
    seed: int,
    epochs: int,
    controller: str,
    width: float,
    max_batches: int | None,
) -> dict[str, float]:
    config = dataclasses.replace(spec.default_config(), seed=seed, epochs=epochs)
    config = dataclasses.replace(
        config, training=dataclasses.replace(config.training, max_batches=max_batches)
    )
    torch.manual_seed(seed)
    model = spec.build_model(split, None, config.lifecycle, width)
    data = SplitBatches(split, spec.batch_size, seed, augment=spec.augment)
    runner = EpisodeRunner(model, data, config)
    policy: Controller = (
        StaticController()
        if controller == "static"
        else HeuristicController(
            blueprint_names(spec.topology),
            fossilize_threshold=config.lifecycle.min_fossilize_contribution,
        )
    )
    probe = next(iter(data.val_batches()))
    probe = (probe[0][:16], probe[1][:16])
    n_val = len(split.val)  # type: ignore[arg-type]
    train_flops = eval_flops = wall = 0.0
    while not runner.done:
        per_sample = _flops(model, probe, data.task_type, backward=True)
        start = time.perf_counter()  # time the episode's own work, not the FLOP counting
        observation = runner.observe()
        record = runner.apply(policy.decide(observation.signals, observation.slots))
        wall += time.perf_counter() - start
        train_flops += per_sample * record.train.samples / _tokens(probe)
        passes = 1 + len(record.contributions)
        eval_flops += passes * _flops(model, probe, data.task_type, backward=False) * n_val
    result = runner.result()
    return {
        "final_accuracy": result.final_accuracy,
        "best_accuracy": result.best_accuracy,
        "params": float(model.total_params),
        "train_gflops": train_flops / 1e9,
        "eval_gflops": eval_flops / 1e9,
        "wall_seconds": wall,
        "fossilized": float(result.seeds_fossilized),
    }


def _tokens(batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Scored items per sample: 1 for classification, tokens for language modelling."""
    return batch[1][0].numel() if batch[1].dim() > 1 else 1.0


def width_for_params(spec: TaskSpec, split: SplitData, target: float) -> float:
    """The host width multiplier whose parameter count is closest to ``target``."""

    def params(m: float) -> int:
        return spec.build_model(split, None, None, m).host_params

    candidates = [1.0 + 0.05 * i for i in range(0, 200)]
    return min(candidates, key=lambda m: abs(params(m) - target))


def _table(task: str, arms: dict[str, list[dict[str, float]]], epochs: int) -> str:
    keys = [
        ("final_accuracy", "final acc (%)", 2),
        ("best_accuracy", "best acc (%)", 2),
        ("params", "params", 0),
        ("train_gflops", "train GFLOPs", 2),
        ("eval_gflops", "eval GFLOPs", 2),
        ("wall_seconds", "wall (s)", 1),
        ("fossilized", "fossils", 1),
    ]
    head = "| arm | " + " | ".join(k[1] for k in keys) + " |"
    lines = [
        f"### {task}, {epochs} epochs, {len(next(iter(arms.values())))} seeds "
        "(mean ± 95% interval)",
        "",
        head,
        "|---" * (len(keys) + 1) + "|",
    ]
    for arm, runs in arms.items():
        cells = []
        for key, _, digits in keys:
            mean, half = mean_ci([r[key] for r in runs])
            cells.append(f"{mean:,.{digits}f} ± {half:,.{digits}f}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None, log: Callable[[str], None] = print) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, help="default: the task's")
    parser.add_argument("--max-batches", type=int)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--text-file", type=Path)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--static-width",
        type=float,
        metavar="X",
        help="only train static hosts with widths scaled by X (e.g. the size of the grown runs "
        "that kept a seed) and write growth-<task>-static-xX",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = get_task(args.task)
    split = spec.load(TaskOptions(data_dir=args.data_dir, text_file=args.text_file))
    epochs = args.epochs or spec.epochs
    if args.static_width is not None:
        name = f"static x{args.static_width:.2f}"
        runs = []
        for seed in range(args.seeds):
            runs.append(
                run_arm(spec, split, seed, epochs, "static", args.static_width, args.max_batches)
            )
            log(f"{args.task} seed {seed} {name}: {runs[-1]}")
        table = _table(args.task, {name: runs}, epochs)
        path = write_result(
            f"growth-{args.task}-static-x{args.static_width:.2f}",
            {
                "task": args.task,
                "epochs": epochs,
                "seeds": args.seeds,
                "width": args.static_width,
                "runs": {name: runs},
            },
            table,
        )
        log(path.read_text())
        return
    arms: dict[str, list[dict[str, float]]] = {"heuristic": [], "static": []}
    for seed in range(args.seeds):
        for arm in ("heuristic", "static"):
            arms[arm].append(run_arm(spec, split, seed, epochs, arm, 1.0, args.max_batches))
            log(f"{args.task} seed {seed} {arm}: {arms[arm][-1]}")
    target = sum(r["params"] for r in arms["heuristic"]) / len(arms["heuristic"])
    width = width_for_params(spec, split, target)
    arms["static-grown-size"] = []
    for seed in range(args.seeds):
        arms["static-grown-size"].append(
            run_arm(spec, split, seed, epochs, "static", width, args.max_batches)
        )
        log(f"{args.task} seed {seed} static x{width:.2f}: {arms['static-grown-size'][-1]}")
    table = _table(args.task, arms, epochs)
    note = (
        f"\nstatic-grown-size: host widths x{width:.2f} "
        f"(target {target:,.0f} parameters, the heuristic runs' mean final size).\n"
    )
    payload = {
        "task": args.task,
        "epochs": epochs,
        "seeds": args.seeds,
        "width": width,
        "runs": arms,
    }
    path = write_result(f"growth-{args.task}", payload, table + "\n" + note)
    log(path.read_text())


if __name__ == "__main__":
    main()
