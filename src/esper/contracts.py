"""Small shared types that several packages need: topologies, task types, slot ids,
the signals a controller reads, its `Decision` and the `Controller` protocol, and the
gradient statistics that training measures and telemetry reports."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from esper.lifecycle import FactoredAction, LifecycleOp, SeedState

__all__ = [
    "Contribution",
    "Controller",
    "Decision",
    "GradientStats",
    "SeedCost",
    "SlotReport",
    "StatefulController",
    "TaskType",
    "Topology",
    "TrainingSignals",
    "mean_width_units",
    "parse_slot_id",
    "slot_id",
]


class Topology(StrEnum):
    """The family of host a blueprint fits: image feature maps or token sequences."""

    CNN = "cnn"
    TRANSFORMER = "transformer"


class TaskType(StrEnum):
    """How outputs are scored: one label per sample, or one per token."""

    CLASSIFICATION = "classification"
    LANGUAGE_MODEL = "language_model"


_SLOT_RE = re.compile(r"^r(\d+)c(\d+)$")


def slot_id(row: int, col: int) -> str:
    """Canonical slot id ``r{row}c{col}``; column is the injection point's depth order."""
    return f"r{row}c{col}"


def parse_slot_id(text: str) -> tuple[int, int]:
    """(row, col) of a canonical slot id, or ValueError naming the expected form."""
    match = _SLOT_RE.match(text)
    if match is None:
        raise ValueError(f"bad slot id {text!r}: slot ids look like r0c0, r0c1, ...")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class Contribution:
    """A seed's counterfactual contribution, measured as a paired comparison.

    The same validation items (samples, or tokens for language models) are scored with
    the seed and with its alpha forced to 0. Only the items whose outcome flips carry
    information: ``gained`` are right only with the seed, ``lost`` right only without.
    """

    gained: int
    lost: int
    items: int

    @property
    def pp(self) -> float:
        """Accuracy with the seed minus accuracy without it, in percentage points."""
        return 100.0 * (self.gained - self.lost) / max(self.items, 1)

    @property
    def se(self) -> float:
        """Paired standard error of `pp` under the null of no effect (McNemar), in pp."""
        return 100.0 * math.sqrt(self.gained + self.lost) / max(self.items, 1)

    @property
    def z(self) -> float:
        """McNemar's z, ``(gained - lost) / sqrt(gained + lost)``; 0 when nothing flips."""
        flips = self.gained + self.lost
        return (self.gained - self.lost) / math.sqrt(flips) if flips else 0.0


@dataclass(frozen=True)
class SeedCost:
    """What one blueprint would add in one slot, per sample (or per token)."""

    params: int
    train_flops: float
    """FLOPs of its forward and backward pass in a training step."""
    eval_flops: float
    """FLOPs of its forward pass."""
    width: bool = False
    """A width seed: new units of the layer before the slot (`esper.model.width`)."""


@dataclass(frozen=True)
class TrainingSignals:
    """What a controller sees of the whole run after an epoch's measurements.

    Deltas follow one convention: positive means better (``loss_delta`` = previous loss
    minus this loss; ``accuracy_delta`` = this accuracy minus the previous). Accuracies
    in percentage points. Epochs are 1-based.
    """

    epoch: int
    max_epochs: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    loss_delta: float
    accuracy_delta: float
    plateau_epochs: int
    host_stabilized: bool
    best_val_accuracy: float
    best_val_loss: float
    loss_history: tuple[float, ...]
    accuracy_history: tuple[float, ...]
    host_params: int
    seed_params: int
    host_train_flops: float = 0.0
    """Training FLOPs per sample (or token) of the host alone, the unit of compute budgets."""


@dataclass(frozen=True)
class SlotReport:
    """One slot as a controller sees it: its lifecycle record and what it may do now."""

    slot_id: str
    state: SeedState
    alpha: float
    seed_params: int
    legal: frozenset[LifecycleOp]
    accuracy_at_germination: float | None
    """Validation accuracy when the seed was germinated (None when the slot is empty)."""
    accuracy_at_stage_start: float | None
    """Validation accuracy when the seed entered its current stage (None when empty)."""
    costs: Mapping[str, SeedCost] = field(default_factory=dict)
    """What each blueprint that fits the host would cost in this slot."""
    width_units: int | None = None
    """Units of the host layer a width seed here would widen (None: it cannot widen)."""


def mean_width_units(slots: Sequence[SlotReport]) -> float | None:
    """Mean `SlotReport.width_units` over the slots whose block can widen (None if none
    can): the host's typical block width, against which a block reads as narrow."""
    widths = [r.width_units for r in slots if r.width_units is not None]
    return sum(widths) / len(widths) if widths else None


@dataclass(frozen=True)
class GradientStats:
    """One seed's gradients over every batch of an epoch (pre-clip L2 norms)."""

    batches: int
    mean_norm: float
    max_norm: float
    min_norm: float
    vanishing_batches: int
    exploding_batches: int
    ratio: float
    """Mean over batches of (seed norm / host norm) * sqrt(host params / seed params):
    per-parameter gradient intensity of the seed relative to the host. Gate G2 reads it."""


@dataclass(frozen=True)
class Decision:
    """A controller's choice for one epoch, and why (the history and the events say it)."""

    action: FactoredAction
    reason: str = ""


class Controller(Protocol):
    """Decides one action per epoch from the run's signals and the slots' reports."""

    def decide(self, signals: TrainingSignals, slots: Sequence[SlotReport]) -> Decision: ...


class StatefulController(Controller, Protocol):
    """A controller whose state goes into a run's checkpoints (tensors and plain data
    only, so they load with ``torch.load(weights_only=True)``)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
