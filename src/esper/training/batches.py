"""Batches for an episode, in an order that is a pure function of (seed, epoch).

Because each epoch's shuffle and augmentation come from a generator seeded with the
run's seed and the epoch number, a run resumed at epoch k sees exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from esper.contracts import TaskType
from esper.data import SplitData, random_crop_flip

__all__ = ["SplitBatches"]

Pair = tuple[Tensor, Tensor]


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class SplitBatches:
    """Serves a `SplitData` as an episode's data (`esper.training.episode.EpisodeData`).

    In-memory tensor datasets are sliced by index (no per-sample collation); anything
    else goes through a single-process DataLoader with the same seeded order.
    """

    def __init__(
        self,
        split: SplitData,
        batch_size: int,
        seed: int,
        *,
        augment: bool = False,
        val_batch_size: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.split = split
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or max(batch_size, 256)
        self.seed = seed
        self.augment = augment
        self.task_type: TaskType = split.task
        classes = split.num_classes if split.num_classes is not None else split.vocab_size
        assert classes is not None
        self.random_guess_loss = math.log(classes)

    def train_batches(self, epoch: int) -> Iterator[Pair]:
        generator = _epoch_generator(self.seed, epoch)
        for inputs, targets in self._batches(self.split.train, self.batch_size, generator):
            if self.augment:
                inputs = random_crop_flip(inputs, generator)
            yield inputs, targets

    def val_batches(self) -> Iterator[Pair]:
        return self._batches(self.split.val, self.val_batch_size, None)

    def test_batches(self) -> Iterator[Pair] | None:
        if self.split.test is None:
            return None
        return self._batches(self.split.test, self.val_batch_size, None)

    @staticmethod
    def _batches(
        dataset: Dataset[Pair], batch_size: int, generator: torch.Generator | None
    ) -> Iterator[Pair]:
        if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
            inputs, targets = dataset.tensors
            n = len(targets)
            order = torch.randperm(n, generator=generator) if generator is not None else None
            for start in range(0, n, batch_size):
                if order is None:
                    yield inputs[start : start + batch_size], targets[start : start + batch_size]
                else:
                    index = order[start : start + batch_size]
                    yield inputs[index], targets[index]
            return
        loader = DataLoader(
            dataset, batch_size=batch_size, shuffle=generator is not None, generator=generator
        )
        yield from loader
