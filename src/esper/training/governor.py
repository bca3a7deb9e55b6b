"""The governor: a catastrophic-failure watchdog that rolls the run back.

After each epoch's evaluation the governor checks the validation loss and accuracy.
A NaN/inf loss, a loss above ``loss_multiplier`` times the task's random-guess loss, or
an accuracy collapse (more than ``collapse_drop`` pp below the best seen) fails the
check. On failure the episode restores the last snapshot that *passed* a check (model
and optimizer state), culls every live seed and goes on. Snapshots are taken only after
a passed check, so a broken model is never saved as "good".
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch

from esper.config import GovernorConfig

__all__ = ["Governor", "Snapshot"]


@dataclass(frozen=True)
class Snapshot:
    """Everything needed to put the run back: epoch, model and optimizer state (on CPU)."""

    epoch: int
    model: dict[str, Any]
    optimizers: dict[str, Any]


def _to_cpu(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return {k: _to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_to_cpu(v) for v in tree)
    return copy.deepcopy(tree)


class Governor:
    """Checks vital signs once per epoch and keeps the last good snapshot."""

    def __init__(self, config: GovernorConfig, random_guess_loss: float) -> None:
        self.config = config
        self.random_guess_loss = random_guess_loss
        self.best_accuracy = -math.inf
        self.snapshot: Snapshot | None = None

    def check(self, val_loss: float, val_accuracy: float) -> str | None:
        """None if the epoch is healthy, else the reason to roll back."""
        if not self.config.enabled:
            return None
        if not math.isfinite(val_loss):
            return f"validation loss is {val_loss}"
        limit = self.config.loss_multiplier * self.random_guess_loss
        if val_loss > limit:
            factor = self.config.loss_multiplier
            return f"validation loss {val_loss:.3f} above {limit:.3f} (random guess x{factor})"
        if val_accuracy < self.best_accuracy - self.config.collapse_drop:
            best = self.best_accuracy
            return f"accuracy collapsed to {val_accuracy:.2f}% from a best of {best:.2f}%"
        return None

    def passed(
        self,
        epoch: int,
        val_accuracy: float,
        model_state: dict[str, Any],
        optimizer_state: dict[str, Any],
    ) -> None:
        """Record a healthy epoch: update the best accuracy and take the snapshot."""
        self.best_accuracy = max(self.best_accuracy, val_accuracy)
        if self.config.enabled:
            self.snapshot = Snapshot(epoch, _to_cpu(model_state), _to_cpu(optimizer_state))
