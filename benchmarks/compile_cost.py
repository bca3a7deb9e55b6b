"""What torch.compile costs and gains on CPU, and whether lifecycle events recompile.

Run by hand: ``.venv/bin/python -m benchmarks.compile_cost [--threads N]``; clear the
Inductor cache first (``rm -rf /tmp/torchinductor_$USER``) to measure a cold compile.

Measures, on the CIFAR host (batch 128, 32x32x3): time of the first compiled step,
median step time eager vs compiled, and the number of Dynamo compilations triggered by
germinating a seed, by each stage change, and by culling it, then whether later steps
in the same stage recompile.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from typing import Any

import torch
import torch._dynamo
from torch import nn
from torch._inductor.compile_fx import compile_fx

from benchmarks.common import write_result
from esper.config import OptimConfig
from esper.contracts import TaskType
from esper.lifecycle import SeedStage
from esper.model import MorphogeneticModel, build_host
from esper.training.loop import TrainStep
from esper.training.optim import OptimizerSet


def _step(
    step: TrainStep, model: MorphogeneticModel, opt: OptimizerSet, x: torch.Tensor, y: torch.Tensor
) -> float:
    start = time.perf_counter()
    opt.zero_grad()
    loss, _, _ = step(model, x, y, nn.CrossEntropyLoss(), TaskType.CLASSIFICATION)
    loss.backward()
    opt.step()
    return time.perf_counter() - start


COMPILATIONS = 0


def _counting_inductor(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Any:
    """Inductor, counting every graph Dynamo hands it (first compile and recompiles)."""
    global COMPILATIONS
    COMPILATIONS += 1
    return compile_fx(gm, example_inputs)


def _frames() -> int:
    return COMPILATIONS


def _median(step: TrainStep, model: MorphogeneticModel, opt: OptimizerSet, n: int = 20) -> float:
    x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
    return statistics.median(_step(step, model, opt, x, y) for _ in range(n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
    eager_model = MorphogeneticModel(build_host("cnn"))
    eager = TrainStep(compile=False)
    eager_opt = OptimizerSet(eager_model, OptimConfig())
    _median(eager, eager_model, eager_opt, 5)
    eager_ms = 1000 * _median(eager, eager_model, eager_opt)

    torch._dynamo.reset()
    model = MorphogeneticModel(build_host("cnn"))
    opt = OptimizerSet(model, OptimConfig())
    step = TrainStep(compile=True, backend=_counting_inductor)
    first_s = _step(step, model, opt, x, y)
    compiled_ms = 1000 * _median(step, model, opt)
    events = []

    def event(name: str) -> None:
        before = _frames()
        t = _step(step, model, opt, x, y)
        after_first = _frames()
        _median(step, model, opt, 10)
        events.append((name, after_first - before, _frames() - after_first, t))

    model.germinate_seed("conv_light", "s", slot="r0c1")
    model.step_epoch()
    opt.sync(model)
    event("germinate (-> TRAINING)")
    slot = model.slot("r0c1")
    for blend_step in (1, 2, 3):
        slot.state = replace(slot.state, stage=SeedStage.BLENDING, blend_step=blend_step)
        event(f"BLENDING, alpha step {blend_step}")
    slot.state = replace(slot.state, stage=SeedStage.PROBATIONARY)
    event("PROBATIONARY")
    model.cull_seed("r0c1")
    opt.sync(model)
    event("cull")
    lines = [
        "| measurement | value |",
        "|---|---|",
        f"| eager step (median of 20) | {eager_ms:.1f} ms |",
        f"| compiled step (median of 20) | {compiled_ms:.1f} ms |",
        f"| compiled / eager | {compiled_ms / eager_ms:.2f} |",
        f"| first compiled step (includes compilation) | {first_s:.1f} s |",
        "",
        "| event | graphs compiled on the next step | graphs compiled in the 10 steps after "
        "| next step time |",
        "|---|---|---|---|",
    ]
    lines += [f"| {n} | {a} | {b} | {t:.2f} s |" for n, a, b, t in events]
    payload = {
        "eager_ms": eager_ms,
        "compiled_ms": compiled_ms,
        "first_compiled_step_s": first_s,
        "events": [
            {"event": n, "recompiles_next_step": a, "recompiles_after": b, "next_step_s": t}
            for n, a, b, t in events
        ],
    }
    path = write_result(f"compile_cost-threads{torch.get_num_threads()}", payload, "\n".join(lines))
    print(path.read_text())


if __name__ == "__main__":
    main()
