"""The governor: a catastrophic-failure watchdog that rolls the run back.

After each epoch's evaluation the governor checks the validation loss and accuracy.
A NaN/inf loss, a loss above ``loss_multiplier`` times the task's random-guess loss, or
an accuracy collapse (more than ``collapse_drop`` pp below the best seen) fails the
check. On failure the episode restores the last snapshot that *passed* a check (model
and optimizer state), culls every live seed and goes on. Snapshots are taken only after
a passed check, so a broken model is never saved as "good". After
``max_consecutive_rollbacks`` failures in a row the fault is persistent: the episode
raises `GovernorStopError` instead of rolling back for ever.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch

from esper.config import GovernorConfig

__all__ = ["Governor", "GovernorStopError", "Snapshot"]


class GovernorStopError(RuntimeError):
    """Too many rollbacks in a row: the run cannot make progress; the message says why."""


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
        self.consecutive_rollbacks = 0

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
        self.consecutive_rollbacks = 0
        if self.config.enabled:
            self.snapshot = Snapshot(epoch, _to_cpu(model_state), _to_cpu(optimizer_state))

    def failed(self, epoch: int, reason: str) -> None:
        """Count a rollback; raise `GovernorStopError` once there were too many in a row."""
        self.consecutive_rollbacks += 1
        limit = self.config.max_consecutive_rollbacks
        if self.consecutive_rollbacks >= limit:
            since = self.snapshot.epoch if self.snapshot is not None else 0
            raise GovernorStopError(
                f"the governor rolled back {self.consecutive_rollbacks} epochs in a row "
                f"(epoch {epoch}: {reason}); the fault persists after restoring epoch "
                f"{since} and culling every live seed, so the run stops "
                f"(governor.max_consecutive_rollbacks = {limit})"
            )

    # ------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        """Plain data and tensors only (loadable with ``torch.load(weights_only=True)``)."""
        snapshot = self.snapshot
        return {
            "best_accuracy": self.best_accuracy,
            "consecutive_rollbacks": self.consecutive_rollbacks,
            "snapshot": None
            if snapshot is None
            else {
                "epoch": snapshot.epoch,
                "model": snapshot.model,
                "optimizers": snapshot.optimizers,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_accuracy = float(state["best_accuracy"])
        self.consecutive_rollbacks = int(state["consecutive_rollbacks"])
        snapshot = state["snapshot"]
        self.snapshot = (
            None
            if snapshot is None
            else Snapshot(int(snapshot["epoch"]), snapshot["model"], snapshot["optimizers"])
        )
