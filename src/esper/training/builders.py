"""The heavy half of a task (`esper.training.tasks` is the torch-free catalogue): load
its data through the loader its spec names, and build its model.

The functions named after the built-in tasks are the loaders their specs name; a task of
your own can name any function of `TaskOptions` that returns a `SplitData`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

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
from esper.training.tasks import LM_BLOCK, TaskOptions, TaskSpec

__all__ = [
    "build_model",
    "cifar10",
    "digits",
    "fashion_mnist",
    "load_data",
    "loader",
    "shakespeare",
    "text",
    "tinystories",
]

Loader = Callable[[TaskOptions], SplitData]


def loader(spec: TaskSpec) -> Loader:
    """The function ``spec.loader`` names (``module:function``)."""
    module, _, name = spec.loader.partition(":")
    function: Loader = getattr(importlib.import_module(module), name)
    return function


def load_data(spec: TaskSpec, options: TaskOptions) -> SplitData:
    """The task's train and validation splits, read from where ``options`` say."""
    return loader(spec)(options)


def build_model(
    spec: TaskSpec,
    split: SplitData,
    slots: Sequence[str] | None = None,
    lifecycle: LifecycleConfig | None = None,
    width_multiplier: float = 1.0,
) -> MorphogeneticModel:
    """The task's host (widths scaled by ``width_multiplier``) with seed slots at
    ``slots`` (None: every injection point), under ``lifecycle`` (default: the task's)."""
    host = build_host(spec.host, **spec.host_kwargs(split, width_multiplier))
    return MorphogeneticModel(host, slots, lifecycle or spec.lifecycle)


# ---------------------------------------------------------------- the built-in tasks' loaders


def digits(options: TaskOptions) -> SplitData:
    return load_digits()


def cifar10(options: TaskOptions) -> SplitData:
    return load_cifar10(options.data_dir)


def fashion_mnist(options: TaskOptions) -> SplitData:
    return load_fashion_mnist(options.data_dir)


def text(options: TaskOptions) -> SplitData:
    if options.text_file is None:
        raise DataUnavailableError("the text task reads a file: pass --text-file PATH")
    return load_text_file(options.text_file, LM_BLOCK)


def shakespeare(options: TaskOptions) -> SplitData:
    return load_shakespeare(LM_BLOCK)


def tinystories(options: TaskOptions) -> SplitData:
    return load_tinystories(LM_BLOCK)
