"""The reward: each term against hand-computed values, shaping that telescopes over any
trajectory (random and real), and the same reward recorded for every controller."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from esper.config import RewardConfig
from esper.contracts import Topology
from esper.controller import HeuristicController, StaticController
from esper.data import load_digits
from esper.model.blueprints import blueprint_names
from esper.training.batches import SplitBatches
from esper.training.builders import build_model
from esper.training.episode import EpisodeRunner, run_episode
from esper.training.ledger import EpisodeResult
from esper.training.reward import (
    compute_charge,
    epoch_reward,
    potential,
    shaping,
    terminal_reward,
)
from esper.training.tasks import get_task

CONFIG = RewardConfig(accuracy_weight=0.1, compute_weight=0.2, shaping_weight=0.05, gamma=0.9)


def test_each_term_against_hand_computed_values() -> None:
    assert terminal_reward(72.5, CONFIG) == pytest.approx(7.25)
    assert potential(60.0, False, CONFIG) == pytest.approx(3.0)
    assert potential(60.0, True, CONFIG) == 0.0  # the episode has ended
    # 0.9 * 0.05 * 62 - 0.05 * 60 = 2.79 - 3.0
    assert shaping(60.0, 62.0, False, CONFIG) == pytest.approx(-0.21)
    assert shaping(60.0, 62.0, True, CONFIG) == pytest.approx(-3.0)
    # An epoch spending 1.5x the static host's, in a 25-epoch episode: 0.5 / 25 of a run.
    assert compute_charge(150.0, 100.0, 25, CONFIG) == pytest.approx(-0.2 * 0.5 / 25)
    assert compute_charge(100.0, 100.0, 25, CONFIG) == 0.0
    first = epoch_reward(None, 40.0, 100.0, 100.0, 1, 25, CONFIG)
    assert (first.shaping, first.compute, first.terminal) == (0.0, 0.0, 0.0)
    last = epoch_reward(70.0, 72.5, 200.0, 100.0, 25, 25, CONFIG)
    assert last.shaping == pytest.approx(-3.5)
    assert last.compute == pytest.approx(-0.2 / 25)
    assert last.terminal == pytest.approx(7.25)
    assert last.total == pytest.approx(-3.5 - 0.008 + 7.25)


@given(
    accuracies=st.lists(st.floats(0.0, 100.0), min_size=2, max_size=40),
    gamma=st.floats(0.5, 1.0),
    weight=st.floats(0.0, 2.0),
)
def test_shaping_telescopes_over_any_trajectory(
    accuracies: list[float], gamma: float, weight: float
) -> None:
    config = RewardConfig(shaping_weight=weight, gamma=gamma)
    epochs = len(accuracies)
    rewards = [
        epoch_reward(
            accuracies[t - 2] if t > 1 else None, accuracies[t - 1], 1.0, 1.0, t, epochs, config
        )
        for t in range(1, epochs + 1)
    ]
    # The agent's steps are epochs 2..E: sum_t gamma^t F_t = -Phi(s_0), s_0 = epoch 1.
    discounted = sum(gamma**k * r.shaping for k, r in enumerate(rewards[1:]))
    assert discounted == pytest.approx(-potential(accuracies[0], False, config), abs=1e-9)


@given(
    accuracies=st.lists(st.floats(0.0, 100.0), min_size=2, max_size=40),
    stop=st.integers(2, 40),
    final=st.floats(0.0, 100.0),
    gamma=st.floats(0.5, 1.0),
)
def test_shaping_telescopes_when_the_governor_stops_the_episode(
    accuracies: list[float], stop: int, final: float, gamma: float
) -> None:
    # The governor stops the run at epoch `stop` (of more): the step into the stop pays
    # the shaping back, so it still sums to -Phi(s_0), and pays the final accuracy.
    config = RewardConfig(gamma=gamma)
    epochs = len(accuracies) + 1
    stop = min(stop, epochs - 1)
    rewards = [
        epoch_reward(
            accuracies[t - 2] if t > 1 else None, accuracies[t - 1], 1.0, 1.0, t, epochs, config
        )
        for t in range(1, stop)
    ]
    rewards.append(
        epoch_reward(accuracies[stop - 2], final, 3.0, 1.0, stop, epochs, config, stopped=True)
    )
    discounted = sum(gamma**k * r.shaping for k, r in enumerate(rewards[1:]))
    assert discounted == pytest.approx(-potential(accuracies[0], False, config), abs=1e-9)
    assert rewards[-1].terminal == pytest.approx(terminal_reward(final, config))
    assert rewards[-1].compute == pytest.approx(compute_charge(3.0, 1.0, epochs, config))
    assert all(r.terminal == 0.0 for r in rewards[:-1])


def _episode(controller: str, seed: int = 3) -> EpisodeResult:
    task = get_task("digits")
    split = load_digits()
    config = dataclasses.replace(task.default_config(), epochs=14, seed=seed)
    torch.manual_seed(seed)
    model = build_model(task, split, lifecycle=config.lifecycle)
    runner = EpisodeRunner(model, SplitBatches(split, task.batch_size, seed), config)
    heuristic = HeuristicController(blueprint_names(Topology.CNN), lifecycle=config.lifecycle)
    policy = heuristic if controller == "heuristic" else StaticController()
    return run_episode(runner, policy)


@pytest.mark.parametrize("controller", ["heuristic", "static"])
def test_real_episodes_telescope_and_pay_accuracy_net_of_compute(controller: str) -> None:
    result = _episode(controller)
    config = RewardConfig()
    records = result.history
    discounted = sum(config.gamma**k * r.reward.shaping for k, r in enumerate(records[1:]))
    assert discounted == pytest.approx(-potential(records[0].val.accuracy, False, config))
    assert records[-1].reward.terminal == pytest.approx(0.1 * result.final_accuracy)
    charged = sum(r.reward.compute for r in records)
    if controller == "static":
        assert charged == pytest.approx(0.0, abs=1e-12)  # the static host is the unit
    else:
        assert result.seeds_germinated >= 1
        static = _episode("static")
        extra = (result.train_flops + result.eval_flops) / (
            static.train_flops + static.eval_flops
        ) - 1.0
        assert charged == pytest.approx(-0.2 * extra, rel=1e-6)
        assert not math.isclose(charged, 0.0)
