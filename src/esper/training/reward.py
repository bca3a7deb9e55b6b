"""The reward: what a run's final accuracy bought, net of the compute it spent.

Every run records it, epoch by epoch, whatever its controller, so a learned controller's
return compares with the heuristic's and the static host's. Epoch ``t``'s reward is the
reward for *reaching* epoch ``t`` (the action taken after epoch ``t - 1`` led there):

* **terminal** - on the last epoch, ``accuracy_weight x`` its validation accuracy (pp):
  the accuracy the controller bought. A seed's contribution is in it once: it is never
  paid per step or again on fossilization.
* **compute** - every epoch, ``-compute_weight x`` the compute spent beyond the static
  host's (training and evaluation FLOPs, counterfactual passes included), as a fraction
  of what the static host spends over the whole episode. Summed over the episode:
  ``-compute_weight x (spent / static - 1)``.
* **shaping** - potential-based (Ng, Harada & Russell 1999): ``gamma Phi(s') - Phi(s)``
  with ``Phi(s) = shaping_weight x`` the validation accuracy after the epoch and
  ``Phi = 0`` once the episode has ended, so over any episode the discounted shaping sums
  to ``-Phi(first state)``, whatever the controller did: it speeds learning up without
  changing which policy is best. Nothing is paid on reaching epoch 1 (no action led there).

An episode the governor stops early ends like any other (`epoch_reward` with
``stopped``): the shaping is paid back and the final accuracy paid for.

Each term is a small pure function of numbers the episode measured.
"""

from __future__ import annotations

from dataclasses import dataclass

from esper.config import RewardConfig

__all__ = [
    "RewardTerms",
    "compute_charge",
    "epoch_reward",
    "potential",
    "shaping",
    "terminal_reward",
]


@dataclass(frozen=True)
class RewardTerms:
    shaping: float
    compute: float
    terminal: float

    @property
    def total(self) -> float:
        return self.shaping + self.compute + self.terminal


def potential(val_accuracy: float, ended: bool, config: RewardConfig) -> float:
    """Phi of the state after an epoch: ``shaping_weight x`` accuracy, 0 once ended."""
    return 0.0 if ended else config.shaping_weight * val_accuracy


def shaping(before: float, after: float, ended: bool, config: RewardConfig) -> float:
    """``gamma Phi(s') - Phi(s)`` for a step from accuracy ``before`` to ``after``."""
    return config.gamma * potential(after, ended, config) - potential(before, False, config)


def compute_charge(
    spent_flops: float, static_flops: float, epochs: int, config: RewardConfig
) -> float:
    """Charge for one epoch's compute beyond the static host's ``static_flops`` (the
    same epoch's), in units of the static host's whole episode (``epochs`` epochs)."""
    extra = (spent_flops - static_flops) / max(static_flops * epochs, 1.0)
    return -config.compute_weight * extra


def terminal_reward(final_accuracy: float, config: RewardConfig) -> float:
    """``accuracy_weight x`` the final validation accuracy (pp)."""
    return config.accuracy_weight * final_accuracy


def epoch_reward(
    previous_accuracy: float | None,
    accuracy: float,
    spent_flops: float,
    static_flops: float,
    epoch: int,
    epochs: int,
    config: RewardConfig,
    *,
    stopped: bool = False,
) -> RewardTerms:
    """The reward for reaching ``epoch`` (1-based) of ``epochs``.

    An episode ends on its last epoch, or earlier when it is ``stopped`` (the governor
    met a fault that rolling back does not fix): the step into a stop pays what any end
    pays, the shaping back (``-Phi`` of the state it left: the shaping still sums to
    ``-Phi(start)``) and the terminal reward of ``accuracy``, the accuracy the run ends
    with, plus the compute the failed epoch spent.

    Args:
        previous_accuracy: validation accuracy after the previous epoch (None on epoch 1).
        accuracy: validation accuracy after this epoch (after a stop: of the model the
            run ends with, its last good snapshot).
        spent_flops: training and evaluation FLOPs this epoch spent.
        static_flops: what the static host would have spent on the same epoch.
    """
    ended = stopped or epoch == epochs
    return RewardTerms(
        shaping=0.0
        if previous_accuracy is None
        else shaping(previous_accuracy, accuracy, ended, config),
        compute=compute_charge(spent_flops, static_flops, epochs, config),
        terminal=terminal_reward(accuracy, config) if ended else 0.0,
    )
