"""SignalTracker: one sign convention, plateau counting, and a noise-tolerant latch."""

from __future__ import annotations

from esper.config import SignalConfig
from esper.training.signals import SignalTracker


def _feed(tracker: SignalTracker, losses: list[float], accs: list[float]) -> list[bool]:
    stable = []
    for epoch, (loss, acc) in enumerate(zip(losses, accs, strict=True), 1):
        signals = tracker.update(epoch, loss, acc, loss, acc, 100, 0)
        stable.append(signals.host_stabilized)
    return stable


def test_deltas_are_positive_when_things_get_better() -> None:
    tracker = SignalTracker(10)
    first = tracker.update(1, 2.0, 10.0, 2.0, 10.0, 100, 0)
    second = tracker.update(2, 1.5, 30.0, 1.5, 30.0, 100, 0)
    assert (first.loss_delta, first.accuracy_delta) == (0.0, 0.0)
    assert second.loss_delta == 0.5 and second.accuracy_delta == 20.0
    assert second.best_val_loss == 1.5 and second.best_val_accuracy == 30.0


def test_plateau_counts_epochs_without_a_clear_gain() -> None:
    tracker = SignalTracker(10, SignalConfig(plateau_threshold=0.5))
    plateaus = [
        tracker.update(e, 1.0, a, 1.0, a, 100, 0).plateau_epochs
        for e, a in enumerate([50.0, 60.0, 60.2, 60.3, 62.0, 62.1], 1)
    ]
    assert plateaus == [0, 0, 1, 2, 0, 1]


def test_host_stabilises_after_epochs_without_a_new_best_and_noise_does_not_reset() -> None:
    tracker = SignalTracker(20, SignalConfig(stabilization_threshold=0.03, stabilization_epochs=3))
    # Big gains, then a noisy rise and small wiggles that never beat the best by 3%.
    losses = [2.0, 1.0, 0.5, 0.6, 0.49, 0.55, 0.52]
    stable = _feed(tracker, losses, [50.0] * len(losses))
    assert stable == [False, False, False, False, False, True, True]


def test_a_clear_new_best_restarts_the_count() -> None:
    tracker = SignalTracker(20, SignalConfig(stabilization_threshold=0.03, stabilization_epochs=3))
    losses = [1.0, 1.0, 1.0, 0.8, 0.8, 0.8, 0.8]
    stable = _feed(tracker, losses, [50.0] * len(losses))
    assert stable == [False, False, False, False, False, False, True]
