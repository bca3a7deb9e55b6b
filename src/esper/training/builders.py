"""The heavy half of a task (`esper.training.tasks` is the torch-free catalogue): load
its data through the loader its spec names, build its model, and build an episode of a
run's configuration: `build_episode`, the one way every command, the RL environment,
the Python entry point (`run_episodes`) and the benchmarks build one.

The functions named after the built-in tasks are the loaders their specs name; a task of
your own can name any function of `TaskOptions` that returns a `SplitData`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from esper.config import ConfigError, RunConfig
from esper.contracts import StatefulController
from esper.controller import ControllerContext, build_controller
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
from esper.model.blueprints import GrowthKind, blueprint_names
from esper.model.hosts import build_host
from esper.model.morphogenetic import MorphogeneticModel
from esper.telemetry import Telemetry
from esper.training.batches import SplitBatches
from esper.training.episode import EpisodeRunner, run_episode
from esper.training.ledger import EpisodeResult
from esper.training.tasks import LM_BLOCK, TaskOptions, TaskSpec, get_task, run_config

__all__ = [
    "build_episode",
    "build_model",
    "build_run_controller",
    "cifar10",
    "digits",
    "fashion_mnist",
    "load_data",
    "loader",
    "run_device",
    "run_episodes",
    "shakespeare",
    "task_options",
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
    """The task's train, decision and test splits, read from where ``options`` say."""
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


def task_options(config: RunConfig) -> TaskOptions:
    """Where ``config`` says its task's data is."""
    return TaskOptions(
        data_dir=Path(config.data_dir) if config.data_dir else None,
        text_file=Path(config.text_file) if config.text_file else None,
        decision_fraction=config.decision_fraction,
    )


def run_device(name: str) -> torch.device:
    """The device ``name`` (``cpu``, ``cuda``, ``cuda:N``); `ConfigError` naming the fix
    when it is not one, or is CUDA on a machine without it."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device {name!r} asked for, but CUDA is not available here; use --device cpu"
        )
    return device


def build_episode(
    config: RunConfig,
    split: SplitData | None = None,
    *,
    seed: int | None = None,
    telemetry: Telemetry | None = None,
) -> EpisodeRunner:
    """The episode ``config`` describes, ready for its first epoch: a fresh host (initial
    weights from the seed: torch's global generator is seeded with it here) with its
    slots on the run's device, its batches and the runner.

    Args:
        config: the run: task, host width and slots, batch size, device, episode.
        split: the task's data, if already loaded (the RL environment loads it once for
            all its episodes); default: read from where ``config`` says.
        seed: the episode's seed (default: ``config.episode.seed``).
        telemetry: where the runner's events go (default: nowhere).
    """
    spec = get_task(config.task)
    if split is None:
        split = load_data(spec, task_options(config))
    episode = config.episode if seed is None else replace(config.episode, seed=seed)
    device = run_device(config.device)
    torch.manual_seed(episode.seed)
    model = build_model(spec, split, config.slots, episode.lifecycle, config.width_multiplier)
    model.to(device)
    data = SplitBatches(split, config.batch_size, episode.seed, augment=spec.augment)
    return EpisodeRunner(model, data, episode, telemetry, device)


def build_run_controller(config: RunConfig, runner: EpisodeRunner) -> StatefulController:
    """The controller ``config`` names (`esper.controller.CONTROLLERS`), built for the
    episode ``runner`` drives. ValueError, naming the fix, when it cannot drive it."""
    context = ControllerContext(
        config=config,
        blueprints=tuple(blueprint_names(runner.model.host.topology, GrowthKind.DEPTH)),
        slot_ids=tuple(runner.model.slot_ids),
        random_guess_loss=runner.data.random_guess_loss,
        width_blueprints=tuple(blueprint_names(runner.model.host.topology, GrowthKind.WIDTH)),
    )
    return build_controller(context)


def run_episodes(
    config: RunConfig | str = "digits",
    episodes: int = 1,
    telemetry: Telemetry | None = None,
) -> list[EpisodeResult]:
    """Run episodes of a run's configuration with its controller, each from a fresh host
    and controller; the data is read once.

    Args:
        config: a `RunConfig` (`esper.training.tasks.run_config` builds one from plain
            data), or a task's name for its defaults (the heuristic growing its host).
        episodes: how many; episode ``i`` has seed ``config.episode.seed + 1000 i``.
        telemetry: where every episode's events go (default: nowhere).

    Returns:
        One `EpisodeResult` per episode, in order.
    """
    if isinstance(config, str):
        config = run_config({"task": config})
    split = load_data(get_task(config.task), task_options(config))
    results = []
    for index in range(episodes):
        seed = config.episode.seed + 1000 * index
        runner = build_episode(config, split, seed=seed, telemetry=telemetry)
        results.append(run_episode(runner, build_run_controller(config, runner)))
    return results


# ---------------------------------------------------------------- the built-in tasks' loaders


def digits(options: TaskOptions) -> SplitData:
    return load_digits(decision_fraction=options.decision_fraction)


def cifar10(options: TaskOptions) -> SplitData:
    return load_cifar10(options.data_dir, options.decision_fraction)


def fashion_mnist(options: TaskOptions) -> SplitData:
    return load_fashion_mnist(options.data_dir, options.decision_fraction)


def text(options: TaskOptions) -> SplitData:
    if options.text_file is None:
        raise DataUnavailableError("the text task reads a file: pass --text-file PATH")
    return load_text_file(options.text_file, LM_BLOCK)


def shakespeare(options: TaskOptions) -> SplitData:
    return load_shakespeare(LM_BLOCK)


def tinystories(options: TaskOptions) -> SplitData:
    return load_tinystories(LM_BLOCK)
