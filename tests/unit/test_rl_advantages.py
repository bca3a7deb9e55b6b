"""GAE(lambda) against hand-computed values, and its two limits."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from esper.rl.advantages import gae


def test_gae_by_hand_with_truncated_and_terminated_endings() -> None:
    # gamma 0.9, lambda 0.5 (gamma * lambda = 0.45); three steps of four environments:
    #   env 0 runs on past the rollout's end (bootstrap from last_value 2.0);
    #   env 1 is truncated at step 1 (bootstrap from its final observation's value 3.0);
    #   env 2 terminates at step 1 (no bootstrap, even though a final value is given);
    #   env 3 is terminated *and* truncated at step 2: terminated wins, no bootstrap.
    rewards = torch.tensor([[1.0, 1, 1, 1], [0, 1, 1, 1], [2, 1, 1, 1]])
    values = torch.tensor([[0.5] * 4, [1.0] * 4, [1.5] * 4])
    last_value = torch.full((4,), 2.0)
    terminated = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    truncated = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    final_values = torch.tensor([[0.0, 0, 0, 0], [0, 3, 3, 0], [0, 0, 0, 3]])

    advantages, returns = gae(
        rewards, values, last_value, terminated, truncated, final_values, gamma=0.9, lam=0.5
    )

    # env 0: deltas 1 + .9*1 - .5 = 1.4, 0 + .9*1.5 - 1 = .35, 2 + .9*2 - 1.5 = 2.3
    #        A2 = 2.3, A1 = .35 + .45*2.3 = 1.385, A0 = 1.4 + .45*1.385 = 2.02325
    # env 1: deltas 1.4, 1 + .9*3 - 1 = 2.7, 1 + .9*2 - 1.5 = 1.3; the trace stops at 1:
    #        A2 = 1.3, A1 = 2.7, A0 = 1.4 + .45*2.7 = 2.615
    # env 2: deltas 1.4, 1 + 0 - 1 = 0, 1.3:  A2 = 1.3, A1 = 0, A0 = 1.4
    # env 3: deltas 1.4, 1 + .9*1.5 - 1 = 1.35, 1 + 0 - 1.5 = -.5:
    #        A2 = -.5, A1 = 1.35 - .225 = 1.125, A0 = 1.4 + .45*1.125 = 1.90625
    expected = torch.tensor(
        [[2.02325, 2.615, 1.4, 1.90625], [1.385, 2.7, 0.0, 1.125], [2.3, 1.3, 1.3, -0.5]]
    )
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected + values)


@st.composite
def rollouts(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    steps, envs = draw(st.integers(1, 6)), draw(st.integers(1, 3))
    floats = st.floats(-5, 5)

    def tensor(*shape: int) -> torch.Tensor:
        n = int(torch.Size(shape).numel())
        return torch.tensor(draw(st.lists(floats, min_size=n, max_size=n))).reshape(shape)

    return {"rewards": tensor(steps, envs), "values": tensor(steps, envs), "last": tensor(envs)}


@settings(max_examples=100, deadline=None)
@given(rollouts(), st.floats(0, 1))
def test_lambda_one_is_the_discounted_return_and_lambda_zero_the_td_error(
    rollout: dict[str, torch.Tensor], gamma: float
) -> None:
    rewards, values, last = rollout["rewards"], rollout["values"], rollout["last"]
    zeros = torch.zeros_like(rewards)
    _, returns = gae(rewards, values, last, zeros, zeros, zeros, gamma, lam=1.0)
    expected, running = torch.zeros_like(rewards), last
    for t in reversed(range(rewards.shape[0])):
        running = rewards[t] + gamma * running
        expected[t] = running
    torch.testing.assert_close(returns, expected, atol=1e-4, rtol=1e-4)

    advantages, _ = gae(rewards, values, last, zeros, zeros, zeros, gamma, lam=0.0)
    following = torch.cat([values[1:], last[None]])
    torch.testing.assert_close(advantages, rewards + gamma * following - values)
