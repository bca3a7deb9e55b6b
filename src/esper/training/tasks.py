"""Tasks: each knows its data, host, batch size, learning rates, epochs and task type.

A task is one registered `TaskSpec`. Adding one means writing a loader and registering
a spec; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esper.config import EpisodeConfig, OptimConfig
from esper.contracts import TaskType, Topology
from esper.data import (
    DataUnavailableError,
    SplitData,
    load_cifar10,
    load_digits,
    load_fashion_mnist,
    load_shakespeare,
    load_text_file,
    load_tinystories,
)
from esper.lifecycle import LifecycleConfig
from esper.model.hosts import build_host
from esper.model.morphogenetic import MorphogeneticModel
from esper.registry import Registry

__all__ = ["TASKS", "TaskOptions", "TaskSpec", "get_task"]


@dataclass(frozen=True)
class TaskOptions:
    """Where a task's data lives, for the tasks that read files."""

    data_dir: Path | None = None
    """Directory holding a downloadable data set (CIFAR-10, Fashion-MNIST)."""
    text_file: Path | None = None
    """UTF-8 text file for the ``text`` task."""


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: data, host and the training defaults that suit them."""

    name: str
    help: str
    task_type: TaskType
    topology: Topology
    host: str
    """Registered host name."""
    load: Callable[[TaskOptions], SplitData]
    host_kwargs: Callable[[SplitData, float], dict[str, Any]]
    """(data, width multiplier) -> host constructor arguments."""
    batch_size: int
    epochs: int
    optim: OptimConfig = field(default_factory=OptimConfig)
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    augment: bool = False
    """Random crop + flip on training batches (images only)."""

    def default_config(self) -> EpisodeConfig:
        """An episode configuration with this task's epochs, optimizer and gates."""
        return EpisodeConfig(epochs=self.epochs, optim=self.optim, lifecycle=self.lifecycle)

    def build_model(
        self,
        split: SplitData,
        slots: Sequence[str] | None = None,
        lifecycle: LifecycleConfig | None = None,
        width_multiplier: float = 1.0,
    ) -> MorphogeneticModel:
        host = build_host(self.host, **self.host_kwargs(split, width_multiplier))
        return MorphogeneticModel(host, slots, lifecycle or self.lifecycle)


TASKS: Registry[TaskSpec] = Registry("task")


def get_task(name: str) -> TaskSpec:
    """The task ``name``; unknown names raise an error listing the valid tasks."""
    return TASKS.get(name)


def _widths(base: Sequence[int], multiplier: float) -> tuple[int, ...]:
    return tuple(max(1, round(w * multiplier)) for w in base)


def _image_host(base: Sequence[int]) -> Callable[[SplitData, float], dict[str, Any]]:
    def kwargs(split: SplitData, multiplier: float) -> dict[str, Any]:
        assert split.num_classes is not None
        return {"num_classes": split.num_classes, "widths": _widths(base, multiplier)}

    return kwargs


def _lm_host(
    d_model: int, n_layer: int, n_head: int, block_size: int
) -> Callable[[SplitData, float], dict[str, Any]]:
    def kwargs(split: SplitData, multiplier: float) -> dict[str, Any]:
        assert split.vocab_size is not None
        width = max(n_head, round(d_model * multiplier / n_head) * n_head)
        return {
            "vocab_size": split.vocab_size,
            "d_model": width,
            "n_layer": n_layer,
            "n_head": n_head,
            "block_size": block_size,
        }

    return kwargs


def _require(path: Path | None, flag: str, task: str) -> Path:
    if path is None:
        raise DataUnavailableError(f"the {task} task reads a file: pass {flag} PATH")
    return path


LM_BLOCK = 64


def _image_task(
    name: str,
    help: str,
    host: str,
    widths: tuple[int, ...],
    load: Callable[[TaskOptions], SplitData],
    *,
    batch_size: int,
    epochs: int,
    augment: bool = False,
) -> TaskSpec:
    """Image classification on a small CNN host (SGD at 0.05 for host and seeds)."""
    return TaskSpec(
        name=name,
        help=help,
        task_type=TaskType.CLASSIFICATION,
        topology=Topology.CNN,
        host=host,
        load=load,
        host_kwargs=_image_host(widths),
        batch_size=batch_size,
        epochs=epochs,
        optim=OptimConfig(host_lr=0.05, seed_lr=0.05),
        augment=augment,
    )


def _language_task(name: str, help: str, load: Callable[[TaskOptions], SplitData]) -> TaskSpec:
    """Character-level language modelling on a small GPT-style host (AdamW, 10 epochs)."""
    return TaskSpec(
        name=name,
        help=help,
        task_type=TaskType.LANGUAGE_MODEL,
        topology=Topology.TRANSFORMER,
        host="transformer",
        load=load,
        host_kwargs=_lm_host(64, 3, 4, LM_BLOCK),
        batch_size=32,
        epochs=10,
        optim=OptimConfig(kind="adamw", host_lr=3e-3, seed_lr=3e-3, weight_decay=0.01),
    )


for _spec in (
    _image_task(
        "digits",
        "sklearn's 8x8 handwritten digits (ships with scikit-learn; works offline)",
        "cnn_digits",
        (2, 4, 8),
        lambda options: load_digits(),
        batch_size=64,
        epochs=40,
    ),
    _image_task(
        "cifar10",
        "CIFAR-10 from --data-dir (python-pickle or image-folder tree)",
        "cnn",
        (8, 16, 32),
        lambda options: load_cifar10(options.data_dir),
        batch_size=128,
        epochs=25,
        augment=True,
    ),
    _image_task(
        "fashion_mnist",
        "Fashion-MNIST IDX files from --data-dir or /usr/share/datasets/fashion-mnist",
        "cnn_28",
        (4, 8, 16),
        lambda options: load_fashion_mnist(options.data_dir),
        batch_size=128,
        epochs=15,
    ),
    _language_task(
        "text",
        "character-level language model on any UTF-8 file given with --text-file",
        lambda options: load_text_file(
            _require(options.text_file, "--text-file", "text"), LM_BLOCK
        ),
    ),
    _language_task(
        "shakespeare",
        "character-level language model on 38 Shakespeare plays (extra: shakespeare)",
        lambda options: load_shakespeare(LM_BLOCK),
    ),
    _language_task(
        "tinystories",
        "character-level TinyStories through Hugging Face datasets (extra: tinystories)",
        lambda options: load_tinystories(LM_BLOCK),
    ),
):
    TASKS.add(_spec.name, _spec)
