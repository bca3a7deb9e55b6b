"""Shared pieces of the data layer: errors, the `SplitData` result, image tensor helpers.

Every loader returns a `SplitData`. Image loaders turn ``uint8`` arrays shaped
``[N, C, H, W]`` into float32 tensors normalised per channel with statistics of the
train split (`normalised_images`); `AugmentedImages` adds the usual CIFAR training
augmentation on top of such a dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import Dataset, TensorDataset

from esper.contracts import TaskType

if TYPE_CHECKING:
    from esper.data.text import CharVocab

Pair = tuple[torch.Tensor, torch.Tensor]

__all__ = [
    "DECISION_FRACTION",
    "AugmentedImages",
    "DataFormatError",
    "DataUnavailableError",
    "SplitData",
    "channel_stats",
    "holdout",
    "image_split",
    "normalised_images",
    "random_crop_flip",
]


class DataUnavailableError(Exception):
    """The data set is not where Esper looked, or an optional package it needs is missing.

    The message says what was looked for and where, where to get it, and how to point
    Esper at it. Loaders raise this instead of ever falling back to synthetic data.
    """


class DataFormatError(ValueError):
    """The data is there but unusable: wrong magic number, shape, encoding or size."""


@dataclass(frozen=True)
class SplitData:
    """A data set's splits with what a model needs to be built for them.

    ``train`` is what the model learns from. ``val`` is the decision split: held out of
    training, it is what every epoch's evaluation reads, and with it the controllers,
    the lifecycle gates, the counterfactuals and the reward. ``test`` is read once, by
    the final report, so a grown run is never scored on the data it was selected on;
    ``None`` for data sets without one (the language-modelling tasks, for now).

    Classification data sets set ``num_classes`` (and ``input_shape``, ``(C, H, W)``, for
    images); their samples are ``(image float32 [C, H, W], label int64 scalar)``.
    Language-modelling data sets set ``vocab_size``, ``block_size`` and ``vocab``; their
    samples are ``(x, y)``, two int64 vectors of ``block_size`` with ``y`` = ``x`` shifted
    by one character. ``mean``/``std`` are the per-channel statistics (on the 0..1 pixel
    scale) that image tensors were normalised with, empty for text.
    """

    name: str
    train: Dataset[tuple[torch.Tensor, torch.Tensor]]
    val: Dataset[tuple[torch.Tensor, torch.Tensor]]
    test: Dataset[tuple[torch.Tensor, torch.Tensor]] | None = None
    num_classes: int | None = None
    vocab_size: int | None = None
    input_shape: tuple[int, int, int] | None = None
    class_names: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    block_size: int | None = None
    vocab: CharVocab | None = None

    def __post_init__(self) -> None:
        if (self.num_classes is None) == (self.vocab_size is None):
            raise ValueError(f"{self.name}: set exactly one of num_classes and vocab_size")

    @property
    def task(self) -> TaskType:
        """Classification when ``num_classes`` is set, language modelling otherwise."""
        return TaskType.CLASSIFICATION if self.num_classes is not None else TaskType.LANGUAGE_MODEL


def channel_stats(
    images: NDArray[np.uint8], scale: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-channel (mean, std) of ``[N, C, H, W]`` pixels divided by ``scale``.

    Exact and cheap: computed from a 256-bin histogram of each channel, so a 50,000-image
    split never needs a float copy of itself. A constant channel gets std 1e-6, not 0.
    """
    means, stds = [], []
    for channel in range(images.shape[1]):
        hist = np.zeros(256, dtype=np.float64)
        for start in range(0, images.shape[0], 2048):  # chunks keep bincount's intp copy small
            hist += np.bincount(images[start : start + 2048, channel].ravel(), minlength=256)
        values = np.arange(hist.size, dtype=np.float64) / scale
        mean = float((hist * values).sum() / hist.sum())
        means.append(mean)
        stds.append(float(np.sqrt((hist * (values - mean) ** 2).sum() / hist.sum())))
    return np.array(means), np.maximum(np.array(stds), 1e-6)


def normalised_images(
    images: NDArray[np.uint8],
    mean: NDArray[np.float64],
    std: NDArray[np.float64],
    scale: float,
) -> torch.Tensor:
    """Float32 ``[N, C, H, W]`` tensor of ``(images / scale - mean) / std``, per channel."""
    out = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32)
    out.div_(scale)
    out.sub_(torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
    out.div_(torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
    return out


DECISION_FRACTION = 0.1
"""Share of a data set's training part held out as the decision split unless its loader
says otherwise (CIFAR-10: 5,000 of 50,000 images; Fashion-MNIST: 6,000 of 60,000)."""


def holdout(
    labels: NDArray[np.integer], fraction: float, seed: int = 0
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Indices (kept, held out) of a stratified split: ``round(fraction * n_c)`` samples
    of each class ``c`` (at least one, and one fewer than it has at most) are held out.

    A pure function of ``labels``, ``fraction`` and ``seed``: every run of a data set holds
    out the same samples, whatever its own seed. Both index arrays are sorted.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held: list[NDArray[np.int64]] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = min(max(1, round(fraction * members.size)), members.size - 1)
        held.append(rng.permutation(members)[:count])
    out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    keep = np.setdiff1d(np.arange(labels.shape[0]), out)
    return keep.astype(np.int64), out.astype(np.int64)


def image_split(
    name: str,
    train_images: NDArray[np.uint8],
    train_labels: NDArray[np.integer],
    test_images: NDArray[np.uint8],
    test_labels: NDArray[np.integer],
    class_names: tuple[str, ...],
    scale: float = 255.0,
    decision_fraction: float | None = None,
) -> SplitData:
    """`SplitData` from ``uint8 [N, C, H, W]`` images and integer labels of a data set's
    train and test parts.

    The decision split (``val``) is a stratified ``decision_fraction`` (default
    `DECISION_FRACTION`) of the train part
    (`holdout`, the same for every run); the model trains on the rest. All three splits
    are normalised with the per-channel mean and std of what the model trains on.
    """
    fraction = DECISION_FRACTION if decision_fraction is None else decision_fraction
    keep, held = holdout(np.asarray(train_labels), fraction)
    if held.size == 0:
        raise DataFormatError(
            f"{name}: no class has two training images, so none can be held out as the "
            "decision split; give every class at least two"
        )
    fit_images = train_images[keep]
    mean, std = channel_stats(fit_images, scale)
    shape = train_images.shape[1:]

    def pairs(images: NDArray[np.uint8], labels: NDArray[np.integer]) -> Dataset[Pair]:
        return _pairs(normalised_images(images, mean, std, scale), labels)

    return SplitData(
        name=name,
        train=pairs(fit_images, np.asarray(train_labels)[keep]),
        val=pairs(train_images[held], np.asarray(train_labels)[held]),
        test=pairs(test_images, test_labels),
        num_classes=len(class_names),
        input_shape=(int(shape[0]), int(shape[1]), int(shape[2])),
        class_names=class_names,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )


def _pairs(images: torch.Tensor, labels: NDArray[np.integer]) -> Dataset[Pair]:
    """TensorDataset of (image, int64 label); its ``.tensors`` allow whole-batch indexing."""
    targets = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    if targets.shape != images.shape[:1]:
        raise ValueError(f"{images.shape[0]} images but labels of shape {list(targets.shape)}")
    # TensorDataset is typed Dataset[tuple[Tensor, ...]]; with two tensors it yields pairs.
    return cast(Dataset[tuple[torch.Tensor, torch.Tensor]], TensorDataset(images, targets))


def random_crop_flip(
    images: torch.Tensor, generator: torch.Generator, padding: int = 4, flip: bool = True
) -> torch.Tensor:
    """Random ``padding``-pixel-shift crop and horizontal flip of a ``[N, C, H, W]`` batch.

    Each image is zero-padded by ``padding`` on every side (zero is the channel mean once
    normalised), cropped back to ``H x W`` at a random offset, then mirrored with
    probability 1/2. All randomness comes from ``generator``: offsets ``[N, 2]`` (row,
    column), then one mirror draw per image.
    """
    n, c, h, w = images.shape
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    mirror = torch.rand(n, generator=generator) < 0.5
    padded = torch.nn.functional.pad(images, (padding,) * 4) if padding > 0 else images
    # The whole batch in one gather: for every output pixel, its position in the flattened
    # padded image (a mirrored image reads its columns right to left). A copy, no
    # arithmetic on the pixels: exactly what cropping image by image gives.
    columns = torch.arange(w)
    if flip:
        columns = torch.where(mirror[:, None], columns.flip(0), columns)  # [N, W]
    columns = columns + offsets[:, 1:]
    rows = torch.arange(h) + offsets[:, :1]  # [N, H]
    where = rows[:, :, None] * (w + 2 * padding) + columns[:, None, :]  # [N, H, W]
    index = where.view(n, 1, h * w).expand(n, c, h * w)
    return padded.reshape(n, c, -1).gather(2, index).view(n, c, h, w)


class AugmentedImages(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Training view of an image dataset with random crop (4-pixel padding) and flip.

    ``dataset`` yields ``(image [C, H, W], label)``. The same ``generator`` seed gives the
    same augmented samples for the same sequence of indices, so keep ``num_workers=0`` in
    the DataLoader (workers would each copy the generator) when exact replay matters.
    """

    def __init__(
        self,
        dataset: Dataset[tuple[torch.Tensor, torch.Tensor]],
        generator: torch.Generator,
        padding: int = 4,
        flip: bool = True,
    ) -> None:
        self.dataset = dataset
        self.generator = generator
        self.padding = padding
        self.flip = flip

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.dataset[index]
        out = random_crop_flip(image.unsqueeze(0), self.generator, self.padding, self.flip)
        return out[0], label
