"""The PPO update: ratios move after the first minibatch, target-KL stop, annealing."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

from esper.config import ConfigError, from_dict
from esper.rl.buffer import RolloutBuffer
from esper.rl.policy import ActorCritic, MLPPolicy, RecurrentFactoredPolicy
from esper.rl.ppo import PPOConfig, PPOTrainer, explained_variance, ppo_update, train_ppo
from esper.rl.rollout import RolloutCollector
from tests.rl_envs import SPEC, CountingEnv, RandomMaskEnv, vector_env


def _recurrent_rollout(envs: int = 8) -> tuple[ActorCritic, RolloutBuffer]:
    torch.manual_seed(0)
    policy = RecurrentFactoredPolicy(5, SPEC.n_slot, SPEC.n_blueprint, SPEC.n_blend, hidden=16)
    collector = RolloutCollector(vector_env(RandomMaskEnv, envs), policy, num_steps=16, seed=0)
    return policy, collector.collect().buffer


def _adam(policy: ActorCritic, config: PPOConfig) -> torch.optim.Adam:
    return torch.optim.Adam(policy.parameters(), lr=config.learning_rate, eps=config.adam_eps)


@pytest.mark.parametrize("recurrent", [True, False], ids=["recurrent", "mlp"])
def test_ratios_move_after_the_first_minibatch(recurrent: bool) -> None:
    if recurrent:
        policy, buffer = _recurrent_rollout()
    else:
        torch.manual_seed(0)
        policy = MLPPolicy(4, 2)
        envs = vector_env(lambda: gym.make("CartPole-v1"), 4)
        buffer = RolloutCollector(envs, policy, num_steps=32, seed=0).collect().buffer
    config = PPOConfig(learning_rate=3e-3)
    stats = ppo_update(policy, _adam(policy, config), buffer, config)

    assert (stats.epochs, stats.minibatches, stats.stopped_early) == (4, 16, False)
    # The first minibatch still sees the rollout's policy: every ratio is 1 ...
    assert stats.approx_kl_per_minibatch[0] == pytest.approx(0.0, abs=1e-7)
    assert stats.clip_fraction_per_minibatch[0] == 0.0
    # ... and every later one sees an updated policy.
    assert all(kl > 1e-7 for kl in stats.approx_kl_per_minibatch[1:])
    assert stats.ratio_min < 1 < stats.ratio_max
    assert max(stats.clip_fraction_per_minibatch) > 0


def test_target_kl_stops_the_update() -> None:
    policy, buffer = _recurrent_rollout()
    config = PPOConfig(learning_rate=3e-3, target_kl=1e-9)
    stats = ppo_update(policy, _adam(policy, config), buffer, config)
    assert (stats.epochs, stats.minibatches, stats.stopped_early) == (1, 1, True)


def test_the_update_changes_the_policy_and_reports_finite_numbers() -> None:
    policy, buffer = _recurrent_rollout()
    before = [p.detach().clone() for p in policy.parameters()]
    config = PPOConfig()
    stats = ppo_update(policy, _adam(policy, config), buffer, config)
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))
    numbers = [stats.policy_loss, stats.value_loss, stats.entropy, stats.approx_kl]
    assert all(torch.isfinite(torch.tensor(numbers)))
    assert stats.entropy > 0


def test_more_minibatches_than_sequences_is_an_error() -> None:
    policy, buffer = _recurrent_rollout(envs=2)
    config = PPOConfig(num_minibatches=4)
    with pytest.raises(ValueError, match="more environments or fewer minibatches"):
        ppo_update(policy, _adam(policy, config), buffer, config)


def test_learning_rate_anneals_linearly_to_zero() -> None:
    torch.manual_seed(0)
    envs = vector_env(lambda: CountingEnv(5), 2)
    config = PPOConfig(num_steps=8, num_minibatches=2, update_epochs=1)
    result = train_ppo(envs, MLPPolicy(1, 2), config, total_steps=4 * 16, seed=0)
    rates = [r.learning_rate for r in result.updates]
    assert rates == pytest.approx([2.5e-4, 2.5e-4 * 3 / 4, 2.5e-4 / 2, 2.5e-4 / 4])
    assert [r.global_step for r in result.updates] == [16, 32, 48, 64]
    assert len(result.episodes) == 12  # 64 steps of 5-step episodes, 2 envs (4 unfinished)


def test_a_fixed_seed_gives_the_same_policy() -> None:
    def trained() -> list[torch.Tensor]:
        torch.manual_seed(0)
        policy = RecurrentFactoredPolicy(5, SPEC.n_slot, SPEC.n_blueprint, SPEC.n_blend, hidden=8)
        trainer = PPOTrainer(vector_env(RandomMaskEnv, 4), policy, PPOConfig(num_steps=8), seed=3)
        trainer.update(total_updates=2)
        trainer.update(total_updates=2)
        return [p.detach().clone() for p in policy.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(trained(), trained(), strict=True))


def test_config_loads_strictly_and_validates() -> None:
    config = from_dict(PPOConfig, {"learning_rate": 1e-3, "target_kl": 0.02})
    assert config.learning_rate == 1e-3 and config.target_kl == 0.02 and config.gamma == 0.99
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(PPOConfig, {"lr": 1e-3})
    with pytest.raises(ConfigError, match="num_minibatches"):
        from_dict(PPOConfig, {"num_minibatches": 0})


def test_explained_variance() -> None:
    target = torch.tensor([1.0, 2.0, 3.0])
    assert explained_variance(target, target) == 1.0
    assert explained_variance(torch.full((3,), 2.0), target) == 0.0
    assert explained_variance(target, torch.ones(3)) != explained_variance(target, torch.ones(3))
