"""The ledger of an episode: one `EpochRecord` per epoch, built once by the runner.

Every output of a run is a view of it: `EpochRecord.event` is the `EpochCompleted` that
telemetry sinks receive (the line of ``history.jsonl``, the console's progress, the
TensorBoard scalars, what ``esper watch`` and ``esper report`` read), ``info["record"]``
of the RL environment is its plain data, and `EpisodeResult` sums it up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from esper.contracts import Contribution, Decision
from esper.lifecycle import FactoredAction, LifecycleOp, SeedStage
from esper.telemetry import EpochCompleted, SlotSnapshot
from esper.training.loop import EpochMetrics, EvalMetrics
from esper.training.reward import RewardTerms

__all__ = ["EpisodeResult", "EpochRecord", "describe_action"]


def describe_action(action: FactoredAction) -> str:
    """The action as the history shows it: op and slot, and the blueprint of a
    germination (``GERMINATE r0c1 conv_heavy``, ``FOSSILIZE r0c2``, ``WAIT``)."""
    words = [action.op.name, action.slot or ""]
    if action.op is LifecycleOp.GERMINATE:
        words.append(action.blueprint or "")
    return " ".join(w for w in words if w)


@dataclass(frozen=True)
class EpochRecord:
    """Everything that happened in one epoch, in the order it happened."""

    epoch: int
    train: EpochMetrics
    val: EvalMetrics
    rollback: str | None
    """Why the governor rolled the epoch back, if it did."""
    decision: Decision
    """The controller's action and its reason."""
    outcome: str
    """"applied", or why the action was refused."""
    reward: RewardTerms
    """The reward for reaching this epoch."""
    slots: Mapping[str, SlotSnapshot]
    """Every slot at the end of the epoch, in slot order."""
    host_params: int
    seed_params: int
    """Trainable parameters of the live and fossilized seeds at the end of the epoch."""
    germinated: int
    fossilized: int
    culled: int
    """Seeds germinated, fossilized and culled so far in the episode."""
    train_flops: float
    """FLOPs of this epoch's training steps (forward and backward)."""
    eval_flops: float
    """FLOPs of this epoch's evaluation passes, counterfactual branches included."""
    wall_seconds: float
    """Wall time of the episode up to the end of this epoch (across resumes)."""
    seconds: float
    """Wall time of the epoch, from the start of training to the end of `apply`."""
    test: EvalMetrics | None = None
    """The final model (after this epoch's decision) on the test split: on the episode's
    last planned epoch only, and None for data without a test split."""

    @property
    def action(self) -> FactoredAction:
        return self.decision.action

    @property
    def contributions(self) -> Mapping[str, Contribution]:
        """Per slot whose seed was measured this epoch: its paired counterfactual."""
        return self.val.contributions

    @property
    def stages(self) -> dict[str, SeedStage]:
        return {sid: slot.stage for sid, slot in self.slots.items()}

    @property
    def alphas(self) -> dict[str, float]:
        return {sid: slot.alpha for sid, slot in self.slots.items()}

    @property
    def params(self) -> int:
        """Trainable parameters at the end of the epoch (host and every seed)."""
        return self.host_params + self.seed_params

    def event(self) -> EpochCompleted:
        """The view every sink receives (and ``history.jsonl`` holds)."""
        return EpochCompleted(
            epoch=self.epoch,
            train_loss=self.train.loss,
            train_accuracy=self.train.accuracy,
            val_loss=self.val.loss,
            val_accuracy=self.val.accuracy,
            action=describe_action(self.action),
            outcome=self.outcome,
            reason=self.decision.reason,
            reward=self.reward.total,
            rollback=self.rollback,
            host_params=self.host_params,
            seed_params=self.seed_params,
            seconds=self.wall_seconds,
            germinated=self.germinated,
            fossilized=self.fossilized,
            culled=self.culled,
            slots=self.slots,
            train_flops=self.train_flops,
            eval_flops=self.eval_flops,
            epoch_seconds=self.seconds,
            test_loss=None if self.test is None else self.test.loss,
            test_accuracy=None if self.test is None else self.test.accuracy,
        )


@dataclass(frozen=True)
class EpisodeResult:
    """The outcome of one episode. ``action_counts`` are keyed by op, named only when
    serialised (`to_json`)."""

    final_accuracy: float
    """Decision-split accuracy at the last epoch (what the controller saw last)."""
    test_accuracy: float | None
    """The final model's accuracy on the test split (None: the data has none)."""
    best_accuracy: float
    action_counts: Mapping[LifecycleOp, int]
    rewards: tuple[float, ...]
    """Per epoch, epoch 1 first; the last holds the terminal bonus."""
    history: tuple[EpochRecord, ...]
    seeds_germinated: int
    seeds_fossilized: int
    seeds_culled: int
    host_params: int
    seed_params: int
    wall_seconds: float
    train_flops: float
    """Training FLOPs of the whole episode."""
    eval_flops: float
    """Evaluation FLOPs of the whole episode, counterfactuals included."""

    def to_json(self) -> dict[str, Any]:
        return {
            "final_accuracy": self.final_accuracy,
            "test_accuracy": self.test_accuracy,
            "best_accuracy": self.best_accuracy,
            "action_counts": {op.name: n for op, n in self.action_counts.items()},
            "total_reward": sum(self.rewards),
            "rewards": list(self.rewards),
            "seeds_germinated": self.seeds_germinated,
            "seeds_fossilized": self.seeds_fossilized,
            "seeds_culled": self.seeds_culled,
            "host_params": self.host_params,
            "seed_params": self.seed_params,
            "wall_seconds": self.wall_seconds,
            "train_flops": self.train_flops,
            "eval_flops": self.eval_flops,
        }
