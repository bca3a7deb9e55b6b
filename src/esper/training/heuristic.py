"""The heuristic baseline's entry points: one episode, or several on a registered task."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from esper.config import EpisodeConfig, HeuristicConfig
from esper.contracts import Controller
from esper.controller.heuristic import HeuristicController
from esper.model.blueprints import blueprint_names
from esper.model.morphogenetic import MorphogeneticModel
from esper.telemetry import Telemetry
from esper.training.batches import SplitBatches
from esper.training.builders import build_model, load_data
from esper.training.episode import EpisodeData, EpisodeResult, EpisodeRunner, run_episode
from esper.training.tasks import TaskOptions, get_task

__all__ = ["run_heuristic_episode", "train_heuristic"]


def run_heuristic_episode(
    controller: Controller,
    model: MorphogeneticModel,
    data: EpisodeData,
    config: EpisodeConfig,
    telemetry: Telemetry | None = None,
    device: torch.device | str = "cpu",
) -> EpisodeResult:
    """Run one episode of ``model`` on ``data`` under a rule-based ``controller``.

    Args:
        controller: decides one action per epoch (`HeuristicController`,
            `ScriptedController`, or anything with ``decide(signals, slots)``).
        model: a freshly built model; it is trained in place.
        data: training batches per epoch and the validation batches.
        config: epochs, limits, optimizer, lifecycle gates, governor and reward.
        telemetry: where events go (default: nowhere). It only observes.
        device: where to train; ``model`` must already be there.

    Returns:
        The episode's `EpisodeResult`: final and best accuracy, action counts by op,
        per-epoch rewards (epoch 1 first, terminal bonus on the last) and history.
    """
    runner = EpisodeRunner(model, data, config, telemetry, device)
    return run_episode(runner, controller)


def train_heuristic(
    task: str = "digits",
    n_episodes: int = 1,
    config: EpisodeConfig | None = None,
    heuristic: HeuristicConfig | None = None,
    slots: Sequence[str] | None = None,
    options: TaskOptions | None = None,
    telemetry: Telemetry | None = None,
    device: torch.device | str = "cpu",
) -> list[EpisodeResult]:
    """Run ``n_episodes`` heuristic episodes on a registered task, each from a fresh host.

    Args:
        task: registered task name (`esper.training.tasks.TASKS`).
        n_episodes: episodes to run; episode ``i`` uses seed ``config.seed + 1000 * i``.
        config: episode settings; default: the task's (`TaskSpec.default_config`).
        heuristic: the controller's thresholds; default `HeuristicConfig()`.
        slots: enabled slot ids; default: every injection point of the task's host.
        options: where file-based tasks find their data.
        telemetry: where events go (default: nowhere).
        device: where to train.

    Returns:
        One `EpisodeResult` per episode, in order.
    """
    spec = get_task(task)
    config = config or spec.default_config()
    split = load_data(spec, options or TaskOptions())
    results = []
    for episode in range(n_episodes):
        seed = config.seed + 1000 * episode
        torch.manual_seed(seed)
        model = build_model(spec, split, slots, config.lifecycle).to(device)
        data = SplitBatches(split, spec.batch_size, seed, augment=spec.augment)
        controller = HeuristicController(
            blueprint_names(spec.topology),
            heuristic,
            config.lifecycle,
        )
        results.append(run_heuristic_episode(controller, model, data, config, telemetry, device))
    return results
