"""The rollout buffer and its view as sequences for the PPO update."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from esper.rl.policy import HEADS, ActionMasks, PolicyState

__all__ = ["RolloutBuffer", "Sequences"]


@dataclass(frozen=True)
class RolloutBuffer:
    """One rollout: T steps of N environments, as the policy saw and did them.

    Shapes (``A`` is the action shape: ``[4]`` factored, ``[]`` discrete)::

        obs            [T, N, obs_dim] float32  observation each action was chosen on
        actions        [T, N, *A]      int64    the actions taken (placeholder 0 for heads
                                                that did not apply)
        log_probs      [T, N]                   log pi_old(a_t | history), applying heads
        values         [T, N]                   V_old(s_t) from the rollout
        rewards        [T, N]                   reward of step t
        starts         [T, N]   0/1             obs[t] is an episode's first: the state is
                                                reset to zero before step t
        terminated     [T, N]   0/1             step t ended its episode in a terminal state
        truncated      [T, N]   0/1             step t ended its episode by a time limit
        final_values   [T, N]                   V(final observation) where truncated, else 0
        masks          ActionMasks, leading [T, N], or None (no masks)
        initial_state  PolicyState, each tensor [layers, N, H]: the state before step 0
                       (before step 0's reset), () for a stateless policy
        last_value     [N]                      V of the observation after step T-1
    """

    obs: Tensor
    actions: Tensor
    log_probs: Tensor
    values: Tensor
    rewards: Tensor
    starts: Tensor
    terminated: Tensor
    truncated: Tensor
    final_values: Tensor
    masks: ActionMasks | None
    initial_state: PolicyState
    last_value: Tensor

    @staticmethod
    def concat(buffers: Sequence[RolloutBuffer]) -> RolloutBuffer:
        """Rollouts of the same length side by side: their environments, in order."""
        first = buffers[0]
        columns = {
            name: torch.cat([getattr(b, name) for b in buffers], dim=1)
            for name in (
                "obs", "actions", "log_probs", "values", "rewards", "starts",
                "terminated", "truncated", "final_values",
            )
        }  # fmt: skip
        present = [b.masks for b in buffers if b.masks is not None]
        masks = None
        if len(present) == len(buffers):
            masks = ActionMasks(*(torch.cat([getattr(m, k) for m in present], 1) for k in HEADS))
        state = tuple(
            torch.cat([b.initial_state[i] for b in buffers], dim=1)
            for i in range(len(first.initial_state))
        )
        last_value = torch.cat([b.last_value for b in buffers])
        return RolloutBuffer(**columns, masks=masks, initial_state=state, last_value=last_value)

    @property
    def num_steps(self) -> int:
        """T."""
        return int(self.rewards.shape[0])

    @property
    def num_envs(self) -> int:
        """N."""
        return int(self.rewards.shape[1])

    def sequences(self, advantages: Tensor, returns: Tensor, keep_time: bool) -> Sequences:
        """The rollout as sequences to minibatch over.

        With ``keep_time`` (a recurrent policy) the N environments are N sequences of T
        steps, so minibatches are whole sequences starting from the stored state. Without
        it every step is its own sequence of length 1 (``[1, T * N]``), so minibatches
        mix steps of all environments, as CleanRL's feed-forward PPO does.

        Args:
            advantages: ``[T, N]``.
            returns: ``[T, N]``.
            keep_time: keep each environment's steps together and in order.
        """
        sequences = Sequences(
            self.obs,
            self.actions,
            self.masks,
            self.starts,
            self.initial_state,
            self.log_probs,
            self.values,
            advantages,
            returns,
        )
        return sequences if keep_time else sequences.flatten_time()


@dataclass(frozen=True)
class Sequences:
    """B sequences of L steps for the update; every tensor is ``[L, B, ...]``.

    Fields as in `RolloutBuffer`, plus ``advantages`` and ``returns`` ``[L, B]``;
    ``initial_state`` tensors are ``[layers, B, H]``.
    """

    obs: Tensor
    actions: Tensor
    masks: ActionMasks | None
    starts: Tensor
    initial_state: PolicyState
    log_probs: Tensor
    values: Tensor
    advantages: Tensor
    returns: Tensor

    @property
    def count(self) -> int:
        """B, the number of sequences."""
        return int(self.log_probs.shape[1])

    def select(self, columns: Tensor) -> Sequences:
        """The sequences at ``columns`` (int64 ``[b]``), each kept whole."""
        return Sequences(
            self.obs[:, columns],
            self.actions[:, columns],
            None if self.masks is None else self.masks.index((slice(None), columns)),
            self.starts[:, columns],
            tuple(s[:, columns] for s in self.initial_state),
            self.log_probs[:, columns],
            self.values[:, columns],
            self.advantages[:, columns],
            self.returns[:, columns],
        )

    def flatten_time(self) -> Sequences:
        """Every step its own sequence, ``[1, L * B, ...]`` (only for a stateless policy)."""
        if self.initial_state:
            raise ValueError("a recurrent policy's rollout must keep its sequences")

        def flat(x: Tensor) -> Tensor:
            return x.reshape(1, -1, *x.shape[2:])

        masks = self.masks
        if masks is not None:
            masks = ActionMasks(
                flat(masks.op), flat(masks.slot), flat(masks.blueprint), flat(masks.blend)
            )
        return Sequences(
            flat(self.obs),
            flat(self.actions),
            masks,
            flat(self.starts),
            (),
            flat(self.log_probs),
            flat(self.values),
            flat(self.advantages),
            flat(self.returns),
        )
