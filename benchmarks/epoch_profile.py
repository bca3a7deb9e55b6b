"""Where a CIFAR-10 training epoch spends its time, and its FLOP/s against a plain matmul.

Run by hand on a quiet machine::

    .venv/bin/python -m benchmarks.epoch_profile --data-dir /tmp/cifar10 --threads 1
    .venv/bin/python -m benchmarks.epoch_profile --data-dir /tmp/cifar10 --threads 2

(without ``--data-dir`` the data are random images of CIFAR-10's shape: the same work).
Writes ``benchmarks/results/epoch_profile-threads<N>.{md,json}``:

* the one-off cost a run pays before its first epoch: reading (and, the first time,
  decoding) the data set;
* the split of one epoch's training steps: batching (the shuffled batch gathered from the
  data set), augmentation (random crop + flip), forward + loss, backward, gradient
  clipping + optimizer step, and the rest (metrics, the loop itself); each phase timed
  around its own calls, summed over the epoch;
* the whole epoch through the real `train_one_epoch` and the validation pass through
  `evaluate`, with the training FLOP/s they reach (FLOPs counted by torch's counter)
  against the FLOP/s of a plain ``torch.matmul`` at the same thread count;
* **before** and **after**: the augmentation as it was before (a Python loop of slice
  copies, image by image, kept here verbatim) and as it is now (one gather for the whole
  batch, bit-identical output);
* **channels_last**: "after" with the model and every batch in channels-last memory
  format, where PyTorch's CPU kernels (max pooling above all) are vectorised. It changes
  the float summation order, and so results in their last bits; measured here, it was
  then made the default for CNN hosts (``episode.training.channels_last``). "before" and
  "after" stay in the contiguous format, the augmentation's before and after.

All variants run in this process, interleaved epoch by epoch.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from benchmarks.common import write_result
from esper.contracts import TaskType
from esper.data import SplitData, random_crop_flip
from esper.data.arrays import image_split
from esper.data.images import CIFAR10_CLASSES
from esper.training.batches import SplitBatches
from esper.training.builders import build_model, load_data
from esper.training.compute import train_flops
from esper.training.loop import evaluate, train_one_epoch
from esper.training.optim import OptimizerSet
from esper.training.tasks import TaskOptions, get_task

Augment = Callable[[Tensor, torch.Generator], Tensor]
Batch = tuple[Tensor, Tensor]


def crop_flip_image_by_image(
    images: Tensor, generator: torch.Generator, padding: int = 4, flip: bool = True
) -> Tensor:
    """``random_crop_flip`` as it was before (commit 265762a): one slice copy per image."""
    n, _, h, w = images.shape
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator).tolist()
    mirror = (torch.rand(n, generator=generator) < 0.5).tolist()
    padded = torch.nn.functional.pad(images, (padding,) * 4) if padding > 0 else images
    out = torch.empty_like(images)
    for i, ((dy, dx), mirrored) in enumerate(zip(offsets, mirror, strict=True)):
        crop = padded[i, :, dy : dy + h, dx : dx + w]
        out[i] = crop.flip(-1) if flip and mirrored else crop
    return out


def _crop_flip_channels_last(images: Tensor, generator: torch.Generator) -> Tensor:
    return random_crop_flip(images, generator).contiguous(memory_format=torch.channels_last)


AUGMENTATIONS: dict[str, Augment] = {
    "before": crop_flip_image_by_image,
    "after": random_crop_flip,
    "channels_last": _crop_flip_channels_last,
}


def _random_cifar(train: int, val: int) -> SplitData:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (train + val, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, train + val)
    return image_split(
        "cifar10 (random)",
        images[:train],
        labels[:train],
        images[train:],
        labels[train:],
        CIFAR10_CLASSES,
    )


def _shuffled(data: SplitBatches, epoch: int) -> Iterator[tuple[Batch, torch.Generator]]:
    """The epoch's shuffled batches before augmentation, as `SplitBatches` serves them."""
    generator = torch.Generator().manual_seed(data.seed * 1_000_003 + epoch)
    for batch in data._batches(data.split.train, data.batch_size, generator):
        yield batch, generator


def _augmented(data: SplitBatches, epoch: int, augment: Augment) -> Iterator[Batch]:
    for (inputs, targets), generator in _shuffled(data, epoch):
        yield augment(inputs, generator), targets


class _Clock:
    """Seconds per phase, summed."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._last
        self._last = now


def _phase_split(
    model: nn.Module,
    data: SplitBatches,
    optimizers: OptimizerSet,
    augment: Augment,
    epoch: int,
    max_batches: int | None,
) -> dict[str, float]:
    """One epoch of the loop's step, each phase timed on its own (seconds per phase)."""
    criterion = nn.CrossEntropyLoss()
    groups = optimizers.clip_groups()
    host = groups.pop("host")
    correct = torch.zeros((), dtype=torch.long)
    model.train()
    batches = _shuffled(data, epoch)
    clock = _Clock()
    for index, ((inputs, targets), generator) in enumerate(batches):
        clock.lap("batching")
        if max_batches is not None and index >= max_batches:
            break
        inputs = augment(inputs, generator)
        clock.lap("augmentation")
        optimizers.zero_grad()
        outputs = model(inputs)
        loss = criterion(outputs, targets)
        clock.lap("forward + loss")
        loss.backward()
        clock.lap("backward")
        nn.utils.clip_grad_norm_(host, 1.0)
        for params in groups.values():
            nn.utils.clip_grad_norm_(params, 1.0)
        optimizers.step()
        clock.lap("clip + optimizer")
        correct += (outputs.argmax(dim=-1) == targets).sum()
        clock.lap("metrics")
    return clock.seconds


def matmul_flops_per_second(size: int = 1024, repeats: int = 20) -> float:
    """FLOP/s of a plain float32 ``torch.matmul`` of two ``size x size`` matrices (best of
    ``repeats``): the practical ceiling of this machine at this thread count."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        torch.matmul(a, b)
    best = min(_timed(lambda: torch.matmul(a, b)) for _ in range(repeats))
    return 2.0 * size**3 / best


def _timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="CIFAR-10 (default: random images)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per variant")
    parser.add_argument("--max-batches", type=int, help="batches per epoch (smoke tests)")
    parser.add_argument(
        "--random-images", type=int, default=50_000, help="training images without --data-dir"
    )
    parser.add_argument("--name", default=None, help="result name (default: by threads)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = get_task("cifar10")

    start = time.perf_counter()
    if args.data_dir is not None:
        split = load_data(spec, TaskOptions(data_dir=args.data_dir))
    else:
        split = _random_cifar(args.random_images, args.random_images // 5)
    load_seconds = time.perf_counter() - start

    torch.manual_seed(0)
    model = build_model(spec, split)
    # Module.to(memory_format=...) works; torch's type stubs leave it out.
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    models = {"before": model, "after": model, "channels_last": last}
    optimizers = {name: OptimizerSet(m, spec.optim) for name, m in models.items()}
    optimizers["after"] = optimizers["before"]  # one model, one optimizer state
    data = SplitBatches(split, spec.batch_size, seed=0)
    criterion = nn.CrossEntropyLoss()
    probe_inputs, probe_targets = next(iter(data.val_batches()))
    per_item = train_flops(
        model, (probe_inputs[:4], probe_targets[:4]), criterion, TaskType.CLASSIFICATION
    )
    device = torch.device("cpu")

    splits: dict[str, list[dict[str, float]]] = {name: [] for name in AUGMENTATIONS}
    epochs: dict[str, list[float]] = {name: [] for name in AUGMENTATIONS}
    samples = 0
    for epoch in range(1, args.epochs + 1):
        for name, augment in AUGMENTATIONS.items():  # interleaved: drifts hit both alike
            splits[name].append(
                _phase_split(models[name], data, optimizers[name], augment, epoch, args.max_batches)
            )
            start = time.perf_counter()
            metrics = train_one_epoch(
                models[name],
                _augmented(data, epoch, augment),
                optimizers[name],
                criterion,
                TaskType.CLASSIFICATION,
                device,
                max_batches=args.max_batches,
            )
            epochs[name].append(time.perf_counter() - start)
            samples = metrics.samples
    start = time.perf_counter()
    val = evaluate(model, data.val_batches(), criterion, TaskType.CLASSIFICATION, device)
    val_seconds = time.perf_counter() - start
    matmul = matmul_flops_per_second()

    flops = per_item * samples
    results: dict[str, Any] = {
        "threads": args.threads,
        "data": str(args.data_dir) if args.data_dir else "random images of CIFAR-10's shape",
        "load_seconds": load_seconds,
        "train_samples_per_epoch": samples,
        "train_flops_per_epoch": flops,
        "validation_seconds": val_seconds,
        "validation_samples": val.samples,
        "matmul_flops_per_second": matmul,
        "variants": {},
    }
    for name in AUGMENTATIONS:
        phases = {
            phase: statistics.median(s[phase] for s in splits[name]) for phase in splits[name][0]
        }
        epoch_seconds = statistics.median(epochs[name])
        results["variants"][name] = {
            "epoch_seconds": epoch_seconds,
            "epoch_seconds_all": epochs[name],
            "phase_seconds": phases,
            "train_flops_per_second": flops / epoch_seconds,
        }
    path = write_result(
        args.name or f"epoch_profile-threads{args.threads}", results, _table(results)
    )
    print(path.read_text())


def _table(results: dict[str, Any]) -> str:
    variants = results["variants"]
    before, after, last = variants["before"], variants["after"], variants["channels_last"]
    lines = [
        f"One CIFAR-10 training epoch ({results['train_samples_per_epoch']:,} images, batch "
        f"128, crop + flip) of the task's host, {results['threads']} thread(s); data: "
        f"{results['data']}. Median of the epochs run; phases timed one by one.",
        "",
        "| phase | before (s) | share | after (s) | share | channels_last (s) | share |",
        "|---|---|---|---|---|---|---|",
    ]
    columns = (before, after, last)
    totals = [sum(v["phase_seconds"].values()) for v in columns]
    for phase in before["phase_seconds"]:
        cells = [
            f"{v['phase_seconds'][phase]:.2f} | {100 * v['phase_seconds'][phase] / t:.1f}%"
            for v, t in zip(columns, totals, strict=True)
        ]
        lines.append(f"| {phase} | {' | '.join(cells)} |")
    lines.append(f"| **sum of phases** | {' | | '.join(f'{t:.2f}' for t in totals)} | |")
    matmul = results["matmul_flops_per_second"]
    rate = [v["train_flops_per_second"] for v in columns]
    lines += [
        "",
        "| | before | after | channels_last (the default) |",
        "|---|---|---|---|",
        "| training epoch (`train_one_epoch`) | "
        + " | ".join(f"{v['epoch_seconds']:.2f} s" for v in columns)
        + " |",
        "| training FLOP/s | " + " | ".join(f"{r / 1e9:.1f} G" for r in rate) + " |",
        f"| of a plain matmul's {matmul / 1e9:.1f} GFLOP/s | "
        + " | ".join(f"{100 * r / matmul:.0f}%" for r in rate)
        + " |",
        "",
        f"Training FLOPs per epoch: {results['train_flops_per_epoch'] / 1e9:.0f} G (forward "
        f"and backward, torch's counter). Validation pass ({results['validation_samples']:,} "
        f"images): {results['validation_seconds']:.2f} s. Reading the data set before the "
        f"first epoch: {results['load_seconds']:.1f} s (once per run).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
