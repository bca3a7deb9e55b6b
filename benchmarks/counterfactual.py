"""What a seed's counterfactual ("without this seed") costs, per live seed, against a
validation pass: in FLOPs and in wall time.

Run by hand on a quiet machine::

    .venv/bin/python -m benchmarks.counterfactual --data-dir /tmp/cifar10 --threads 1

The task's host (CIFAR-10 by default; random images of its shape without ``--data-dir``)
gets a ``--blueprint`` seed blending (alpha 0.5) in every slot. For each slot alone, and
for all of them together, the validation pass runs through `evaluate` with and without
``counterfactual=[...]``; the extra cost divided by the number of seeds measured and by
the cost of the plain pass is the cost per live seed. The counterfactual branches at the
slot (`MorphogeneticModel.forward_counterfactual`), so a deep slot costs little; the old
method (a second full pass with the seed's alpha forced to 0) cost 1.0 per seed.
Target: <= 0.5. FLOPs come from torch's counter (`eval_flops`); wall times are medians
of interleaved rounds.

A seed is only measured when something reads the measurement: by default
(``counterfactuals='judged'``) on probation, where G5 and the probation verdict read it,
and at the end for the seeds kept; 'live' (what the learned controller observes) also
measures every blending seed every epoch. The second part runs the heuristic for one
episode in each mode (``--epochs``, ``--max-batches``) and divides what the
counterfactuals cost over the episode by a validation pass per live seed per epoch.
Writes ``benchmarks/results/counterfactual-<task>.{md,json}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from benchmarks.common import write_result
from esper.config import shortcuts
from esper.contracts import TaskType
from esper.data import SplitData
from esper.data.arrays import image_split
from esper.lifecycle import SeedStage, transition
from esper.model import MorphogeneticModel
from esper.training.batches import SplitBatches
from esper.training.builders import build_episode, build_model, build_run_controller, load_data
from esper.training.compute import eval_flops
from esper.training.loop import Batch, evaluate
from esper.training.tasks import TaskOptions, TaskSpec, get_task, run_config

TARGET = 0.5
SHAPES = {"cifar10": (3, 32, 32), "digits": (1, 8, 8)}


def _random_images(task: str, images: int) -> SplitData:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2 * images, *SHAPES[task]), dtype=np.uint8)
    labels = rng.integers(0, 10, 2 * images)
    classes = tuple(str(k) for k in range(10))
    return image_split(
        f"{task} (random)",
        pixels[:images],
        labels[:images],
        pixels[images:],
        labels[images:],
        classes,
    )


def _blending(model: MorphogeneticModel, blueprint: str) -> None:
    """A ``blueprint`` seed in every slot, blending at alpha 0.5."""
    for slot in model.slots():
        model.germinate_seed(blueprint, f"seed-{slot.slot_id}", slot=slot.slot_id)
        for stage in (SeedStage.TRAINING, SeedStage.BLENDING):
            slot.state = dataclasses.replace(transition(slot.state, stage), blend_step=1)
        slot.alpha_override = 0.5
        assert slot.alpha > 0
    model.eval()


def _seconds(
    model: MorphogeneticModel, batches: list[Batch], without: list[str], passes: int
) -> float:
    """Seconds of one validation pass, averaged over ``passes`` passes."""
    start = time.perf_counter()
    for _ in range(passes):
        evaluate(
            model,
            batches,
            nn.CrossEntropyLoss(),
            TaskType.CLASSIFICATION,
            torch.device("cpu"),
            counterfactual=without,
        )
    return (time.perf_counter() - start) / passes


def _episode_cost(
    spec: TaskSpec, split: SplitData, mode: Literal["judged", "live"], args: argparse.Namespace
) -> dict[str, Any]:
    """One heuristic episode measuring in ``mode``: what its counterfactuals cost, in
    FLOPs and in wall time (each epoch's validation timed again with and without them)."""
    settings = {"epochs": args.epochs, "seed": 0, "max_batches": args.max_batches}
    settings["max_val_batches"] = args.max_val_batches
    mode_layer = {"episode": {"training": {"counterfactuals": mode}}}
    config = run_config({"task": spec.name}, shortcuts(settings), mode_layer)
    runner = build_episode(config, split)
    model, data = runner.model, runner.data
    controller = build_run_controller(config, runner)
    loss = nn.CrossEntropyLoss()
    cpu = torch.device("cpu")
    totals = dict.fromkeys(
        ("counterfactual_flops", "pass_flops_per_live_seed", "counterfactual_seconds"), 0.0
    )
    totals.update(pass_seconds_per_live_seed=0.0, live_seed_epochs=0, measured=0)
    while not runner.done:
        observation = runner.observe()
        pending = runner._pending
        assert pending is not None
        measured = list(pending.val.contributions)
        live = sum(1 for s in model.slots() if s.state.live)
        plain = runner.compute.eval_per_item(model, []) * pending.val.samples
        totals["counterfactual_flops"] += pending.eval_flops - plain
        totals["pass_flops_per_live_seed"] += plain * live
        totals["live_seed_epochs"] += live
        totals["measured"] += len(measured)
        if live:
            seconds = {}
            for name, without in (("plain", []), ("with", measured)):
                start = time.perf_counter()
                evaluate(
                    model,
                    data.val_batches(),
                    loss,
                    data.task_type,
                    cpu,
                    max_batches=args.max_val_batches,
                    counterfactual=without,
                )
                seconds[name] = time.perf_counter() - start
            totals["counterfactual_seconds"] += max(0.0, seconds["with"] - seconds["plain"])
            totals["pass_seconds_per_live_seed"] += seconds["plain"] * live
        runner.apply(controller.decide(observation.signals, observation.slots))
    result = runner.result()
    return {
        **totals,
        "final_accuracy": result.final_accuracy,
        "flops_per_live_seed": totals["counterfactual_flops"]
        / max(totals["pass_flops_per_live_seed"], 1.0),
        "wall_per_live_seed": totals["counterfactual_seconds"]
        / max(totals["pass_seconds_per_live_seed"], 1e-9),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(SHAPES), default="cifar10")
    parser.add_argument("--data-dir", type=Path, help="the task's data (default: random images)")
    parser.add_argument("--blueprint", default="conv_light")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--random-images", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=25, help="of each heuristic episode")
    parser.add_argument("--max-batches", type=int, default=40, help="per training epoch")
    parser.add_argument("--max-val-batches", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = get_task(args.task)
    if args.data_dir is not None or args.task == "digits":
        split = load_data(spec, TaskOptions(data_dir=args.data_dir))
        data = str(args.data_dir or "scikit-learn's digits")
    else:
        split = _random_images(args.task, args.random_images)
        data = "random images"
    torch.manual_seed(0)
    model = build_model(spec, split)
    _blending(model, args.blueprint)
    batches = list(SplitBatches(split, spec.batch_size, seed=0).val_batches())
    probe = (batches[0][0][:4], batches[0][1][:4])

    cases = {sid: [sid] for sid in model.slot_ids}
    cases["all"] = list(model.slot_ids)
    loss = nn.CrossEntropyLoss()
    plain_flops = eval_flops(model, probe, loss, TaskType.CLASSIFICATION)
    flops = {
        case: (eval_flops(model, probe, loss, TaskType.CLASSIFICATION, slots) - plain_flops)
        / len(slots)
        / plain_flops
        for case, slots in cases.items()
    }
    seconds: dict[str, list[float]] = {"plain": [], **{case: [] for case in cases}}
    # Warm up, and repeat a short pass (digits) until a measurement lasts a quarter second.
    passes = max(1, round(0.25 / _seconds(model, batches, [], 1)))
    for _ in range(args.rounds):  # interleaved, so drifts of the machine hit every case
        seconds["plain"].append(_seconds(model, batches, [], passes))
        for case, slots in cases.items():
            seconds[case].append(_seconds(model, batches, slots, passes))
    plain = statistics.median(seconds["plain"])
    wall = {
        case: (statistics.median(seconds[case]) - plain) / len(slots) / plain
        for case, slots in cases.items()
    }
    modes: tuple[Literal["judged", "live"], ...] = ("judged", "live")
    episodes = {mode: _episode_cost(spec, split, mode, args) for mode in modes}
    results: dict[str, Any] = {
        "task": args.task,
        "data": data,
        "blueprint": args.blueprint,
        "validation_items": sum(len(t) for _, t in batches),
        "plain_pass_seconds": plain,
        "seconds": seconds,
        "flops_per_seed": flops,
        "wall_per_seed": wall,
        "episodes": episodes,
        "target": TARGET,
    }
    lines = [
        "| seeds measured | FLOPs per live seed | wall time per live seed | target |",
        "|---|---|---|---|",
    ]
    for case, slots in cases.items():
        worst = max(flops[case], wall[case])
        lines.append(
            f"| {' '.join(slots)} | {flops[case]:.2f} | {wall[case]:.2f} "
            f"| <= {TARGET} ({'met' if worst <= TARGET else 'missed'}) |"
        )
    lines += [
        "",
        f"In units of one validation pass ({results['validation_items']:,} items, "
        f"{plain * 1e3:.1f} ms plain) of the {args.task} host with a {args.blueprint} seed "
        f"blending in every slot ({args.threads} thread(s), data: {results['data']}). The "
        "old method, one more full pass per seed, cost 1.00. Wall: medians of "
        f"{args.rounds} interleaved rounds.",
    ]
    lines += [
        "",
        f"Over one heuristic episode ({args.epochs} epochs of at most {args.max_batches} "
        "training batches, seed 0), per live seed per epoch, in validation passes:",
        "",
        "| measured | seeds measured | live seed-epochs | FLOPs per live seed "
        "| wall per live seed | final acc (%) | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, cost in episodes.items():
        worst = max(cost["flops_per_live_seed"], cost["wall_per_live_seed"])
        lines.append(
            f"| {mode} | {cost['measured']} | {cost['live_seed_epochs']} "
            f"| {cost['flops_per_live_seed']:.2f} | {cost['wall_per_live_seed']:.2f} "
            f"| {cost['final_accuracy']:.2f} "
            f"| <= {TARGET} ({'met' if worst <= TARGET else 'missed'}) |"
        )
    path = write_result(f"counterfactual-{args.task}", results, "\n".join(lines))
    print(path.read_text())


if __name__ == "__main__":
    main()
