"""Tasks: each knows its data, host, batch size, learning rates, epochs and task type.

A task is one registered `TaskSpec`. Adding one means writing a loader and registering
a spec; nothing else changes.

This module is the catalogue and imports no torch, so that ``esper --help`` lists the
tasks at once: a spec names its data loader by import path (``module:function``), and
`esper.training.builders` loads the data and builds the episode when a run needs them.
`run_config` is the one resolution of a run's configuration from layers of plain data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esper.config import (
    EpisodeConfig,
    HeuristicConfig,
    OptimConfig,
    RunConfig,
    from_dict,
    merge,
    to_dict,
)
from esper.contracts import TaskType, Topology
from esper.controller.registry import get_controller
from esper.lifecycle import LifecycleConfig
from esper.registry import Registry

if TYPE_CHECKING:
    from esper.data import SplitData

__all__ = ["LM_BLOCK", "TASKS", "TaskOptions", "TaskSpec", "get_task", "run_config"]


@dataclass(frozen=True)
class TaskOptions:
    """Where a task's data lives, for the tasks that read files."""

    data_dir: Path | None = None
    """Directory holding a downloadable data set (CIFAR-10, Fashion-MNIST)."""
    text_file: Path | None = None
    """UTF-8 text file for the ``text`` task."""
    decision_fraction: float | None = None
    """Share of the training data held out as the decision split (None: the loader's)."""


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: data, host and the training defaults that suit them."""

    name: str
    help: str
    task_type: TaskType
    topology: Topology
    host: str
    """Registered host name."""
    loader: str
    """Import path ``module:function`` of the data loader, a function of `TaskOptions`
    returning a `SplitData` (named, not imported: the catalogue stays torch-free)."""
    host_kwargs: Callable[[SplitData, float], dict[str, Any]]
    """(data, width multiplier) -> host constructor arguments."""
    batch_size: int
    epochs: int
    optim: OptimConfig = field(default_factory=OptimConfig)
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    augment: bool = False
    """Random crop + flip on training batches (images only)."""
    heuristic: HeuristicConfig = field(default_factory=HeuristicConfig)
    """The rule-based controller's settings for this task (tuned on the seeds the README
    names)."""

    def default_config(self) -> EpisodeConfig:
        """An episode configuration with this task's epochs, optimizer and gates."""
        return EpisodeConfig(epochs=self.epochs, optim=self.optim, lifecycle=self.lifecycle)

    def run_defaults(self) -> RunConfig:
        """A run of this task with its own batch size, epochs, optimizer and gates."""
        return RunConfig(
            task=self.name,
            batch_size=self.batch_size,
            episode=self.default_config(),
            heuristic=self.heuristic,
        )


TASKS: Registry[TaskSpec] = Registry("task")


def get_task(name: str) -> TaskSpec:
    """The task ``name``; unknown names raise an error listing the valid tasks."""
    return TASKS.get(name)


def run_config(*layers: Mapping[str, Any]) -> RunConfig:
    """The one resolution of a run's configuration, for every command and the RL
    environment: the task's defaults (`TaskSpec.run_defaults`), then each of ``layers``
    (plain data: a policy's training environment, a ``--config`` file, flags) merged in
    order (`esper.config.merge`), strictly validated (`esper.config.from_dict`), as its
    controller needs it (`esper.controller.ControllerSpec.configure`). The task is the
    last layer's that names one (digits if none does)."""
    named = [str(layer["task"]) for layer in layers if layer.get("task") is not None]
    spec = get_task(named[-1] if named else "digits")
    config: RunConfig = from_dict(RunConfig, merge(to_dict(spec.run_defaults()), *layers))
    return get_controller(config.controller).configure(config)


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


LM_BLOCK = 64
"""Context length (characters) of the language-modelling tasks."""


def _image_task(
    name: str,
    help: str,
    host: str,
    widths: tuple[int, ...],
    loader: str,
    *,
    batch_size: int,
    epochs: int,
    augment: bool = False,
    heuristic: HeuristicConfig = HeuristicConfig(),  # noqa: B008 (frozen: safe to share)
) -> TaskSpec:
    """Image classification on a small CNN host (SGD at 0.05 for host and seeds)."""
    return TaskSpec(
        name=name,
        help=help,
        task_type=TaskType.CLASSIFICATION,
        topology=Topology.CNN,
        host=host,
        loader=loader,
        host_kwargs=_image_host(widths),
        batch_size=batch_size,
        epochs=epochs,
        optim=OptimConfig(host_lr=0.05, seed_lr=0.05),
        augment=augment,
        heuristic=heuristic,
    )


def _language_task(name: str, help: str, loader: str) -> TaskSpec:
    """Character-level language modelling on a small GPT-style host (AdamW, 10 epochs)."""
    return TaskSpec(
        name=name,
        help=help,
        task_type=TaskType.LANGUAGE_MODEL,
        topology=Topology.TRANSFORMER,
        host="transformer",
        loader=loader,
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
        "esper.training.builders:digits",
        batch_size=64,
        epochs=40,
        # Tuned on seeds 1000-1004 (benchmarks/results/width-digits-tuning.md): this
        # host is too narrow, and widening from epoch 8 costs less than from epoch 1.
        heuristic=HeuristicConfig(growth="width", start_epoch=8),
    ),
    _image_task(
        "cifar10",
        "CIFAR-10 from --data-dir (python-pickle or image-folder tree)",
        "cnn",
        (8, 16, 32),
        "esper.training.builders:cifar10",
        batch_size=128,
        epochs=25,
        augment=True,
        # Chosen on seeds 10-14 (benchmarks/results/width-cifar10.md), untuned: widening
        # the two narrow blocks and deepening after the last beat depth only by 1.9 pp.
        heuristic=HeuristicConfig(growth="both"),
    ),
    _image_task(
        "fashion_mnist",
        "Fashion-MNIST IDX files from --data-dir or /usr/share/datasets/fashion-mnist",
        "cnn_28",
        (4, 8, 16),
        "esper.training.builders:fashion_mnist",
        batch_size=128,
        epochs=15,
    ),
    _language_task(
        "text",
        "character-level language model on any UTF-8 file given with --text-file",
        "esper.training.builders:text",
    ),
    _language_task(
        "shakespeare",
        "character-level language model on 38 Shakespeare plays (extra: shakespeare)",
        "esper.training.builders:shakespeare",
    ),
    _language_task(
        "tinystories",
        "character-level TinyStories through Hugging Face datasets (extra: tinystories)",
        "esper.training.builders:tinystories",
    ),
):
    TASKS.add(_spec.name, _spec)
