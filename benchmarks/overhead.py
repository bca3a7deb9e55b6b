"""Overhead of the morphogenetic machinery per training step, as interleaved ratios.

Run by hand: ``.venv/bin/python -m benchmarks.overhead [--rounds N] [--batch N]``.

Two comparisons on the CIFAR host (widths 8/16/32, 32x32x3 inputs), each step being
zero_grad + forward + cross-entropy + backward + SGD step:

1. `MorphogeneticModel` with every slot dormant vs the bare host module (target <= 1.02);
2. the model with one conv_light seed in TRAINING at r0c1 (incubator forward: detached
   input, straight-through output) vs the host with the same seed inserted as a plain
   residual module (target <= 1.10).

A and B alternate within each round, and the ratio is taken per round, so slow drifts
of the machine cancel; the median over rounds and its spread are reported.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from benchmarks.common import write_result
from esper.model import CNNHost, MorphogeneticModel, build_host


class HostWithSeed(nn.Module):
    """The bare host with a seed called in series after block ``index``: no slot logic."""

    def __init__(self, host: CNNHost, seed: nn.Module, index: int) -> None:
        super().__init__()
        self.host, self.seed, self.index = host, seed, index

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for i, block in enumerate(self.host.blocks):
            h = block(h)
            if i == self.index:
                h = self.seed(h)
        out: Tensor = self.host.classifier(h.mean(dim=(2, 3)))
        return out


def _stepper(model: nn.Module, x: Tensor, y: Tensor) -> Callable[[], float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> float:
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        return time.perf_counter() - start

    return step


def _ratio(a: Callable[[], float], b: Callable[[], float], rounds: int, steps: int) -> list[float]:
    for _ in range(5):  # warm-up both
        a(), b()
    ratios = []
    for r in range(rounds):
        first, second = (a, b) if r % 2 == 0 else (b, a)  # alternate who goes first
        t_first = sum(first() for _ in range(steps))
        t_second = sum(second() for _ in range(steps))
        t_a, t_b = (t_first, t_second) if r % 2 == 0 else (t_second, t_first)
        ratios.append(t_a / t_b)
    return ratios


def _describe(ratios: list[float]) -> dict[str, float]:
    q = statistics.quantiles(ratios, n=4)
    return {"median": statistics.median(ratios), "q1": q[0], "q3": q[2], "rounds": len(ratios)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=5, help="steps per side per round")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))

    host = build_host("cnn")
    assert isinstance(host, CNNHost)
    dormant = MorphogeneticModel(copy.deepcopy(host))
    dormant_ratios = _ratio(_stepper(dormant, x, y), _stepper(host, x, y), args.rounds, args.steps)

    grown = MorphogeneticModel(copy.deepcopy(host))
    grown.germinate_seed("conv_light", "s", slot="r0c1")
    grown.step_epoch()  # -> TRAINING
    seed = copy.deepcopy(grown.slot("r0c1").seed)
    assert seed is not None
    plain = HostWithSeed(copy.deepcopy(host), seed, index=1)
    training_ratios = _ratio(_stepper(grown, x, y), _stepper(plain, x, y), args.rounds, args.steps)

    results = {
        "dormant_vs_bare_host": {**_describe(dormant_ratios), "target": 1.02},
        "training_seed_vs_host_plus_residual": {**_describe(training_ratios), "target": 1.10},
        "batch": args.batch,
        "steps_per_round": args.steps,
    }
    lines = ["| comparison | median ratio | interquartile range | target |", "|---|---|---|---|"]
    for name in ("dormant_vs_bare_host", "training_seed_vs_host_plus_residual"):
        r = results[name]
        assert isinstance(r, dict)
        verdict = "met" if r["median"] <= r["target"] else "missed"
        lines.append(
            f"| {name.replace('_', ' ')} | {r['median']:.3f} | {r['q1']:.3f}-{r['q3']:.3f} "
            f"| <= {r['target']} ({verdict}) |"
        )
    lines.append("")
    lines.append(
        f"{args.rounds} rounds of {args.steps} steps per side, batch {args.batch}, CIFAR host "
        "8/16/32 on 32x32x3; a step is zero_grad + forward + loss + backward + SGD step."
    )
    path = write_result("overhead", results, "\n".join(lines))
    print(path.read_text())


if __name__ == "__main__":
    main()
