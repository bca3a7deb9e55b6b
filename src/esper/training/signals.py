"""SignalTracker: turns each epoch's metrics into the `TrainingSignals` controllers read.

Corrected from the original: one sign convention for deltas (positive = better), the
first epoch has deltas of 0 instead of infinities, best values are over the whole run
rather than a sliding window, and the host counts as stabilised after
``stabilization_epochs`` epochs in a row without a new best validation loss by more than
``stabilization_threshold`` (relative), so one noisy epoch does not restart the count.
"""

from __future__ import annotations

import math
from collections import deque

from esper.config import SignalConfig
from esper.contracts import TrainingSignals

__all__ = ["SignalTracker"]


class SignalTracker:
    """Stateful per-run tracker; call `update` once per epoch."""

    def __init__(self, max_epochs: int, config: SignalConfig | None = None) -> None:
        self.max_epochs = max_epochs
        self.config = config or SignalConfig()
        self._prev_loss: float | None = None
        self._prev_acc: float | None = None
        self._plateau = 0
        self._stable_run = 0
        self._stabilized = False
        self._best_acc = -math.inf
        self._best_loss = math.inf
        self._losses: deque[float] = deque(maxlen=self.config.history)
        self._accs: deque[float] = deque(maxlen=self.config.history)

    def update(
        self,
        epoch: int,
        train_loss: float,
        train_accuracy: float,
        val_loss: float,
        val_accuracy: float,
        host_params: int,
        seed_params: int,
        *,
        host_train_flops: float = 0.0,
    ) -> TrainingSignals:
        cfg = self.config
        prev_loss, prev_acc = self._prev_loss, self._prev_acc
        loss_delta = 0.0 if prev_loss is None else prev_loss - val_loss
        acc_delta = 0.0 if prev_acc is None else val_accuracy - prev_acc
        if prev_acc is not None:
            self._plateau = self._plateau + 1 if acc_delta < cfg.plateau_threshold else 0
        if not self._stabilized and prev_loss is not None and math.isfinite(val_loss):
            # Stable = no new best loss by a clear margin. Judged against the best rather
            # than the previous epoch, so a noisy rise does not restart the count.
            stable = val_loss > self._best_loss * (1.0 - cfg.stabilization_threshold)
            self._stable_run = self._stable_run + 1 if stable else 0
            self._stabilized = self._stable_run >= cfg.stabilization_epochs
        self._best_acc = max(self._best_acc, val_accuracy)
        if math.isfinite(val_loss):
            self._best_loss = min(self._best_loss, val_loss)
        self._losses.append(val_loss)
        self._accs.append(val_accuracy)
        self._prev_loss, self._prev_acc = val_loss, val_accuracy
        return TrainingSignals(
            epoch=epoch,
            max_epochs=self.max_epochs,
            train_loss=train_loss,
            train_accuracy=train_accuracy,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            loss_delta=loss_delta,
            accuracy_delta=acc_delta,
            plateau_epochs=self._plateau,
            host_stabilized=self._stabilized,
            best_val_accuracy=self._best_acc,
            best_val_loss=self._best_loss,
            loss_history=tuple(self._losses),
            accuracy_history=tuple(self._accs),
            host_params=host_params,
            seed_params=seed_params,
            host_train_flops=host_train_flops,
        )

    def state_dict(self) -> dict[str, object]:
        return {
            k: (list(v) if isinstance(v, deque) else v)
            for k, v in vars(self).items()
            if k != "config"
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        for key, value in state.items():
            current = getattr(self, key)
            if isinstance(current, deque):
                assert isinstance(value, list)
                current.clear()
                current.extend(value)
            else:
                setattr(self, key, value)
