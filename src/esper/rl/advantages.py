"""Generalised advantage estimation, GAE(lambda) (Schulman et al., 2016)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["Advantages", "gae"]


class Advantages(NamedTuple):
    """Advantages and value targets (returns = advantages + values), both ``[T, N]``."""

    advantages: Tensor
    returns: Tensor


def gae(
    rewards: Tensor,
    values: Tensor,
    last_value: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    final_values: Tensor,
    gamma: float,
    lam: float,
) -> Advantages:
    """GAE over T steps of N environments, each environment on its own.

    With ``V'_t`` the value of the observation that followed step t,

        delta_t = r_t + gamma * V'_t - V(s_t)
        A_t     = delta_t + gamma * lam * (1 - end_t) * A_{t+1}

    where ``V'_t`` is ``values[t + 1]`` inside an episode (``last_value`` after the last
    step), 0 after a terminal step, and ``final_values[t]`` (the value of the episode's
    final observation) after a truncated one; ``end_t`` cuts the trace at either ending.
    A step both terminated and truncated counts as terminated.

    Args:
        rewards: ``[T, N]``.
        values: ``[T, N]``, V(s_t) as estimated during the rollout.
        last_value: ``[N]``, value of the observation after step T-1 (the rollout's cut).
        terminated: ``[T, N]`` 0/1, step t ended its episode in a terminal state.
        truncated: ``[T, N]`` 0/1, step t ended its episode by a time limit.
        final_values: ``[T, N]``, value of the final observation where truncated.
        gamma: discount.
        lam: GAE's lambda (0: one-step TD error; 1: Monte-Carlo return minus value).
    """
    terminated, truncated = terminated.float(), truncated.float()
    ends = torch.maximum(terminated, truncated)
    following = torch.cat([values[1:], last_value[None]])
    next_values = torch.where(ends.bool(), (1.0 - terminated) * final_values, following)
    deltas = rewards + gamma * next_values - values
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(last_value)
    for t in reversed(range(rewards.shape[0])):
        running = deltas[t] + gamma * lam * (1.0 - ends[t]) * running
        advantages[t] = running
    return Advantages(advantages, advantages + values)
