"""The per-epoch reward: three small terms, the same for every controller.

``reward = contribution + rent + terminal``:

* **contribution** — the measured counterfactual contribution (pp) of the seed the
  action acted on, paid once when the controller commits: ``+w·c`` for FOSSILIZE,
  ``-w·c`` for CULL (culling a seed that helps costs what it gave; culling one that
  hurts earns it). WAIT and GERMINATE act on no measured seed and earn nothing here.
* **rent** — every epoch, ``-rent_weight · ln(1 + seed_params / host_params)`` for the
  parameters seeds have added (live and fossilized): growth is not free.
* **terminal** — on the last epoch only, ``terminal_weight · val_accuracy`` (pp), so the
  episode's return rewards the accuracy it ends with.

Heuristic runs record the same reward so their returns compare with the PPO agent's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from esper.config import RewardConfig
from esper.lifecycle import LifecycleOp

__all__ = ["RewardTerms", "epoch_reward"]


@dataclass(frozen=True)
class RewardTerms:
    contribution: float
    rent: float
    terminal: float

    @property
    def total(self) -> float:
        return self.contribution + self.rent + self.terminal


def epoch_reward(
    op: LifecycleOp,
    contribution: float | None,
    seed_params: int,
    host_params: int,
    val_accuracy: float,
    is_last_epoch: bool,
    config: RewardConfig,
) -> RewardTerms:
    """The reward for one epoch. ``contribution`` is that of the acted-on seed (pp)."""
    c = 0.0 if contribution is None else contribution
    if op is LifecycleOp.FOSSILIZE:
        paid = config.contribution_weight * c
    elif op is LifecycleOp.CULL:
        paid = -config.contribution_weight * c
    else:
        paid = 0.0
    rent = -config.rent_weight * math.log1p(seed_params / max(host_params, 1))
    terminal = config.terminal_weight * val_accuracy if is_last_epoch else 0.0
    return RewardTerms(paid, rent, terminal)
