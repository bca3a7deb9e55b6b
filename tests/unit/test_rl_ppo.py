"""The PPO update and iteration: ratios move after the first minibatch, the KL of the
last minibatch, target-KL stop, annealing; the discount set once."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
from pathlib import Path

import gymnasium as gym
import pytest
import torch

from esper.cli.ppo import _status
from esper.config import ConfigError, from_dict, to_dict
from esper.rl.buffer import RolloutBuffer
from esper.rl.policy import ActorCritic, MLPPolicy, RecurrentFactoredPolicy
from esper.rl.ppo import (
    PPOConfig,
    adam,
    annealed_lr,
    clone_update,
    explained_variance,
    ppo_update,
)
from esper.rl.rollout import RolloutCollector
from esper.rl.training import PPOTrainConfig, load_train_config, resolve_train_config
from esper.rl.workers import EnvPool
from esper.telemetry.tensorboard import update_scalars
from esper.telemetry.updates import parse_update
from tests.rl_envs import SPEC, CountingEnv, RandomMaskEnv, train

GAMMA = 0.99


def _recurrent_rollout(envs: int = 8) -> tuple[ActorCritic, RolloutBuffer]:
    torch.manual_seed(0)
    policy = RecurrentFactoredPolicy(5, SPEC.n_slot, SPEC.n_blueprint, SPEC.n_blend, hidden=16)
    collector = RolloutCollector(EnvPool(RandomMaskEnv, envs), policy)
    return policy, collector.collect(16, itertools.count(), restart=False).buffer


@pytest.mark.parametrize("recurrent", [True, False], ids=["recurrent", "mlp"])
def test_ratios_move_after_the_first_minibatch(recurrent: bool) -> None:
    if recurrent:
        policy, buffer = _recurrent_rollout()
    else:
        torch.manual_seed(0)
        policy = MLPPolicy(4, 2)
        pool = EnvPool(functools.partial(gym.make, "CartPole-v1"), 4)
        buffer = RolloutCollector(pool, policy).collect(32, itertools.count(), restart=False).buffer
    config = PPOConfig(learning_rate=3e-3)
    stats = ppo_update(policy, adam(policy, config), buffer, config, GAMMA)

    assert (stats.epochs, stats.minibatches, stats.stopped_early) == (4, 16, False)
    # The first minibatch still sees the rollout's policy: every ratio is 1 ...
    assert stats.approx_kl_per_minibatch[0] == pytest.approx(0.0, abs=1e-7)
    assert stats.clip_fraction_per_minibatch[0] == 0.0
    # ... and every later one sees an updated policy.
    assert all(kl > 1e-7 for kl in stats.approx_kl_per_minibatch[1:])
    assert stats.ratio_min < 1 < stats.ratio_max
    assert max(stats.clip_fraction_per_minibatch) > 0
    # The mean, with the first minibatch's 0 in it; and the last minibatch's alone.
    assert stats.approx_kl == pytest.approx(sum(stats.approx_kl_per_minibatch) / 16)
    assert stats.approx_kl_last == stats.approx_kl_per_minibatch[-1]


def test_target_kl_stops_the_update() -> None:
    policy, buffer = _recurrent_rollout()
    config = PPOConfig(learning_rate=3e-3, target_kl=1e-9)
    stats = ppo_update(policy, adam(policy, config), buffer, config, GAMMA)
    assert (stats.epochs, stats.minibatches, stats.stopped_early) == (1, 1, True)
    # The last KL is the one that stopped the update: the policy after its one step.
    assert stats.approx_kl == stats.approx_kl_per_minibatch[0] == pytest.approx(0, abs=1e-7)
    assert stats.approx_kl_last > 1e-9


def test_the_update_changes_the_policy_and_reports_finite_numbers() -> None:
    policy, buffer = _recurrent_rollout()
    before = [p.detach().clone() for p in policy.parameters()]
    config = PPOConfig()
    stats = ppo_update(policy, adam(policy, config), buffer, config, GAMMA)
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))
    numbers = [stats.policy_loss, stats.value_loss, stats.entropy, stats.approx_kl]
    assert all(torch.isfinite(torch.tensor([*numbers, stats.approx_kl_last])))
    assert stats.entropy > 0


def test_more_minibatches_than_sequences_is_an_error() -> None:
    policy, buffer = _recurrent_rollout(envs=2)
    config = PPOConfig(num_minibatches=4)
    with pytest.raises(ValueError, match="more environments or fewer minibatches"):
        ppo_update(policy, adam(policy, config), buffer, config, GAMMA)


def test_learning_rate_anneals_linearly_to_zero() -> None:
    torch.manual_seed(0)
    config = PPOConfig(num_steps=8, num_minibatches=2, update_epochs=1)
    collector = RolloutCollector(EnvPool(functools.partial(CountingEnv, 5), 2), MLPPolicy(1, 2))
    records = train(collector, config, updates=4)
    rates = [r.learning_rate for r in records]
    assert rates == pytest.approx([2.5e-4, 2.5e-4 * 3 / 4, 2.5e-4 / 2, 2.5e-4 / 4])
    assert rates == [annealed_lr(config, update, 4) for update in range(4)]
    assert collector.global_step == 64
    # 64 steps of 5-step episodes in 2 envs: 12 finished (4 steps of each env left).
    assert sum(len(r.episodes) for r in records) == 12
    unannealed = PPOConfig(anneal_lr=False)
    assert annealed_lr(unannealed, 3, 4) == unannealed.learning_rate


def test_a_fixed_seed_gives_the_same_policy() -> None:
    def trained() -> list[torch.Tensor]:
        torch.manual_seed(0)
        policy = RecurrentFactoredPolicy(5, SPEC.n_slot, SPEC.n_blueprint, SPEC.n_blend, hidden=8)
        generator = torch.Generator().manual_seed(3)
        train(
            RolloutCollector(EnvPool(RandomMaskEnv, 4), policy, generator),
            PPOConfig(num_steps=8),
            2,
        )
        return [p.detach().clone() for p in policy.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(trained(), trained(), strict=True))


def test_config_loads_strictly_and_validates() -> None:
    config = from_dict(PPOConfig, {"learning_rate": 1e-3, "target_kl": 0.02})
    assert config.learning_rate == 1e-3 and config.target_kl == 0.02
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(PPOConfig, {"lr": 1e-3})
    with pytest.raises(ConfigError, match="num_minibatches"):
        from_dict(PPOConfig, {"num_minibatches": 0})
    # The discount is not PPO's: it is passed in (Esper's: run.episode.reward.gamma).
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(PPOConfig, {"gamma": 0.99})
    # Cloning that keeps exploring: its settings are checked as strictly.
    for bad, message in (
        ({"clone_held_out": 1.0}, "clone_held_out must be in"),
        ({"clone_entropy_floor": -0.1}, "clone_entropy_floor must be at least 0"),
        ({"clone_kl_updates": 0.0}, "clone_kl_updates must be in"),
        ({"clone_patience": 0}, "clone_patience must be at least 1"),
    ):
        with pytest.raises(ConfigError, match=message):
            from_dict(PPOTrainConfig, bad)
    weights = PPOTrainConfig(episodes=40, envs=4, clone_kl=0.2, clone_kl_updates=0.5)
    assert [weights.kl_weight(u) for u in (0, 1, 5, 9)] == pytest.approx([0.2, 0.16, 0, 0])


def test_the_discount_is_set_once(tmp_path: Path) -> None:
    default = PPOTrainConfig()  # its own defaults agree
    assert default.run.episode.reward.gamma == 1.0
    with pytest.raises(ValueError, match=r"run\.episode\.reward\.gamma") as error:
        resolve_train_config({"ppo": {"gamma": 0.9}}, {}, {})
    assert len(str(error.value).splitlines()) == 1
    # A config.json of an older training holds ppo.gamma, equal to the run's: it loads.
    saved = to_dict(default)
    saved["ppo"]["gamma"] = 1.0
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved))
    assert load_train_config(path) == default
    saved["ppo"]["gamma"] = 0.99  # one that disagrees is refused, in one line
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"differs from run\.episode\.reward\.gamma") as error:
        load_train_config(path)
    assert len(str(error.value).splitlines()) == 1


OLD_ROW = (
    '{"update": 1, "episodes": 8, "mean_return": -2.25, "mean_final_accuracy": 46.06, '
    '"mean_added_params": 1476.0, "mean_seeds_kept": 0.0, "illegal_fraction": 0.0, '
    '"learning_rate": 0.001, "policy_loss": -0.05, "value_loss": 3.66, "entropy": 1.86, '
    '"approx_kl": 0.0177, "clip_fraction": 0.218, "ratio_min": 0.39, "ratio_max": 2.01, '
    '"explained_variance": 0.0077, "rollout_seconds": 131.7, "update_seconds": 0.31}'
)


def test_the_last_minibatch_kl_is_recorded_beside_the_mean() -> None:
    old = parse_update(OLD_ROW)  # written before approx_kl_last was: still reads
    assert old.approx_kl == 0.0177 and math.isnan(old.approx_kl_last)
    row = dataclasses.replace(old, approx_kl_last=0.0312)
    assert parse_update(row.to_json()) == row
    assert update_scalars(row)["ppo/approx_kl_last"] == 0.0312
    assert "KL 0.0177 (last 0.0312)" in _status(row)


def test_explained_variance() -> None:
    target = torch.tensor([1.0, 2.0, 3.0])
    assert explained_variance(target, target) == 1.0
    assert explained_variance(torch.full((3,), 2.0), target) == 0.0
    assert explained_variance(target, torch.ones(3)) != explained_variance(target, torch.ones(3))


def _demonstrated_rollout() -> tuple[ActorCritic, RolloutBuffer]:
    """A rollout whose actions are all WAIT (legal at every step): a demonstrator a
    policy can learn to copy to certainty."""
    policy, buffer = _recurrent_rollout()
    buffer.actions.zero_()
    return policy, buffer


def test_cloning_keeps_the_entropy_above_its_floor() -> None:
    config = PPOConfig(learning_rate=1e-2, num_minibatches=2)
    policy, buffer = _demonstrated_rollout()
    plain = clone_update(policy, adam(policy, config), buffer, config, GAMMA, 150)
    assert (plain.stopped, plain.kept_epoch, plain.held_out) == ("epochs", 150, 0)
    assert plain.entropy_after["op"] < 0.05  # cloned to certainty

    policy, buffer = _demonstrated_rollout()
    floored = clone_update(
        policy, adam(policy, config), buffer, config, GAMMA, 150, entropy_floor=0.3
    )
    assert floored.stopped == "entropy floor" and 0 < floored.kept_epoch < floored.epochs
    # Only the op head applies to WAIT: its entropy is the decision's.
    assert floored.entropy_before["op"] > floored.entropy_after["op"] >= 0.3
    assert floored.entropy_after["slot"] == 0.0


def test_cloning_stops_when_the_held_out_likelihood_stops_rising() -> None:
    # Random actions: what the fitted demonstrations teach does not carry over.
    config = PPOConfig(learning_rate=1e-2, num_minibatches=2)
    policy, buffer = _recurrent_rollout()
    generator = torch.Generator().manual_seed(0)
    stats = clone_update(
        policy,
        adam(policy, config),
        buffer,
        config,
        GAMMA,
        200,
        generator,
        held_out=0.25,
        patience=5,
    )
    assert stats.held_out == 2 and stats.stopped == "held-out likelihood"
    assert stats.epochs == stats.kept_epoch + 5 < 200
    assert stats.held_out_likelihood > 0
