"""The only batch loop in Esper: `train_one_epoch` and `evaluate`.

Stage differences (incubation, blending, probation) live in `SeedSlot.forward`; which
parameters move lives in `OptimizerSet`. Nothing here branches on a seed's stage
except to decide which seeds' gradient statistics to record.

Metrics are accumulated as device tensors and read back once per epoch: a ``.item()``
per batch would force a host-device sync on every step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from esper.contracts import Contribution, GradientStats, TaskType
from esper.lifecycle import SeedStage
from esper.model.morphogenetic import MorphogeneticModel
from esper.training.optim import OptimizerSet

__all__ = [
    "EPS",
    "EXPLODING_NORM",
    "VANISHING_NORM",
    "Batch",
    "EpochMetrics",
    "EvalMetrics",
    "TrainStep",
    "compiled_train_step",
    "compute_task_loss_with_metrics",
    "evaluate",
    "train_one_epoch",
]

log = logging.getLogger(__name__)

Batch = tuple[Tensor, Tensor]
VANISHING_NORM = 1e-7
"""A batch whose seed gradient norm (pre-clip) is below this counts as vanishing."""
EXPLODING_NORM = 100.0
"""A batch whose seed gradient norm (pre-clip) is above this counts as exploding."""
EPS = 1e-12


def compute_task_loss_with_metrics(
    outputs: Tensor, targets: Tensor, criterion: nn.Module, task_type: TaskType
) -> tuple[Tensor, Tensor, int]:
    """Mean loss, number of correct predictions (a device tensor) and number scored.

    Classification scores one label per sample (``outputs [B, K]``, ``targets [B]``);
    language modelling scores every token (``outputs [B, T, V]``, ``targets [B, T]``).
    """
    if task_type is TaskType.LANGUAGE_MODEL:
        outputs = outputs.reshape(-1, outputs.shape[-1])
        targets = targets.reshape(-1)
    loss: Tensor = criterion(outputs, targets)
    correct = (outputs.argmax(dim=-1) == targets).sum()
    return loss, correct, targets.numel()


StepFn = Callable[[nn.Module, Tensor, Tensor, nn.Module, TaskType], tuple[Tensor, Tensor, int]]


def _forward_loss(
    model: nn.Module, inputs: Tensor, targets: Tensor, criterion: nn.Module, task_type: TaskType
) -> tuple[Tensor, Tensor, int]:
    return compute_task_loss_with_metrics(model(inputs), targets, criterion, task_type)


class TrainStep:
    """Forward + loss, compiled with ``torch.compile`` when asked.

    If compilation (which happens lazily, on the first call) fails, one warning is
    logged and every later call runs eagerly. A lifecycle event changes the slot's
    Python branches (stage, alpha), so Dynamo recompiles once per event, never per
    batch; ``recompile_limit`` bounds the cached graphs, after which PyTorch itself
    falls back to eager for new ones. ``backend`` is passed to ``torch.compile``.
    """

    def __init__(
        self, compile: bool = False, recompile_limit: int = 64, backend: Any = "inductor"
    ) -> None:
        self.compiled = compile
        self._fn: StepFn = _forward_loss
        if compile:
            # Imported here, for start-up time only: Dynamo takes about a second to import
            # and only a compiled run needs it (its config lives in a private module).
            from torch import _dynamo as dynamo

            dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, recompile_limit)
            self._fn = torch.compile(_forward_loss, dynamic=False, backend=backend)

    def __call__(
        self,
        model: nn.Module,
        inputs: Tensor,
        targets: Tensor,
        criterion: nn.Module,
        task_type: TaskType,
    ) -> tuple[Tensor, Tensor, int]:
        if not self.compiled:
            return _forward_loss(model, inputs, targets, criterion, task_type)
        try:
            return self._fn(model, inputs, targets, criterion, task_type)
        except Exception as error:  # any backend failure: same maths, eagerly
            log.warning("torch.compile failed (%s); training continues eagerly", error)
            self.compiled = False
            self._fn = _forward_loss
            return _forward_loss(model, inputs, targets, criterion, task_type)


def compiled_train_step(
    step: TrainStep,
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    criterion: nn.Module,
    task_type: TaskType,
) -> tuple[Tensor, Tensor, int]:
    """One forward + loss through ``step`` (compiled or eager): (loss, correct, count)."""
    return step(model, inputs, targets, criterion, task_type)


@dataclass(frozen=True)
class EpochMetrics:
    """What one training epoch measured. Loss is sample- (or token-) weighted."""

    loss: float
    accuracy: float
    batches: int
    samples: int
    host_grad_norm: float
    """Mean pre-clip gradient norm of the host group over the epoch."""
    seed_gradients: Mapping[str, GradientStats]
    """Per slot, for every seed that trained this epoch (TRAINING, BLENDING, PROBATIONARY)."""


@dataclass(frozen=True)
class EvalMetrics:
    loss: float
    accuracy: float
    samples: int
    """Scored items: samples, or tokens for language models."""
    contributions: Mapping[str, Contribution] = field(default_factory=dict)
    """Per slot asked for: the paired counterfactual of removing its seed."""


class _SeedAccumulator:
    """Device-side running sums for one seed's gradient statistics."""

    def __init__(self, device: torch.device, host_count: int, seed_count: int) -> None:
        zero = torch.zeros((), device=device)
        self.sum, self.ratio_sum = zero.clone(), zero.clone()
        self.max = zero.clone()
        self.min = torch.full((), math.inf, device=device)
        self.vanishing, self.exploding = zero.clone(), zero.clone()
        self.batches = 0
        self.scale = math.sqrt(host_count / max(seed_count, 1))

    def add(self, seed_norm: Tensor, host_norm: Tensor) -> None:
        self.sum += seed_norm
        self.max = torch.maximum(self.max, seed_norm)
        self.min = torch.minimum(self.min, seed_norm)
        self.vanishing += (seed_norm < VANISHING_NORM).float()
        self.exploding += (seed_norm > EXPLODING_NORM).float()
        self.ratio_sum += seed_norm / host_norm.clamp_min(EPS) * self.scale
        self.batches += 1

    def result(self) -> GradientStats:
        n = max(self.batches, 1)
        return GradientStats(
            batches=self.batches,
            mean_norm=self.sum.item() / n,
            max_norm=self.max.item(),
            min_norm=self.min.item() if self.batches else 0.0,
            vanishing_batches=int(self.vanishing.item()),
            exploding_batches=int(self.exploding.item()),
            ratio=self.ratio_sum.item() / n,
        )


class _Totals:
    """Sample-weighted loss and correct counts, kept on the device until `read`."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.samples = self.batches = 0

    def add(self, loss: Tensor, correct: Tensor, count: int) -> None:
        self.loss += loss.detach() * count
        self.correct += correct
        self.samples += count
        self.batches += 1

    def read(self, split: str) -> tuple[float, float]:
        """(mean loss, accuracy in %); reading them is the host sync."""
        if self.batches == 0:
            raise ValueError(
                f"the {split} data yielded no batches: check the dataset and batch size"
            )
        return self.loss.item() / self.samples, 100.0 * self.correct.item() / self.samples


def _batches(
    loader: Iterable[Batch],
    max_batches: int | None,
    device: torch.device,
    channels_last: bool = False,
) -> Iterator[Batch]:
    """The first ``max_batches`` batches of ``loader`` (all if None), moved to ``device``;
    image batches (4-D) in channels_last memory format when asked."""
    for index, (inputs, targets) in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            return
        inputs = inputs.to(device, non_blocking=True)
        if channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        yield inputs, targets.to(device, non_blocking=True)


_TRAINED_STAGES = (SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.PROBATIONARY)


def train_one_epoch(
    model: MorphogeneticModel,
    loader: Iterable[Batch],
    optimizers: OptimizerSet,
    criterion: nn.Module,
    task_type: TaskType,
    device: torch.device,
    *,
    max_batches: int | None = None,
    max_grad_norm: float = 1.0,
    step: TrainStep | None = None,
    channels_last: bool = False,
) -> EpochMetrics:
    """Train every live parameter for one pass over ``loader`` (at most ``max_batches``).

    Per batch: zero grads, forward + loss, backward, clip the host group and each seed
    separately to ``max_grad_norm`` (pre-clip norms are recorded), step every optimizer.
    """
    step = step or TrainStep()
    model.train()
    groups = optimizers.clip_groups()
    host_params = groups.pop("host")
    host_count = sum(p.numel() for p in host_params)
    trained = [
        sid for sid, params in groups.items() if params and model.slot(sid).stage in _TRAINED_STAGES
    ]
    seed_stats = {
        sid: _SeedAccumulator(device, host_count, sum(p.numel() for p in groups[sid]))
        for sid in trained
    }
    totals = _Totals(device)
    host_norm_sum = torch.zeros((), device=device)
    for inputs, targets in _batches(loader, max_batches, device, channels_last):
        optimizers.zero_grad()
        loss, correct, count = step(model, inputs, targets, criterion, task_type)
        loss.backward()  # type: ignore[no-untyped-call]
        host_norm = nn.utils.clip_grad_norm_(host_params, max_grad_norm)
        for sid, stats in seed_stats.items():
            stats.add(nn.utils.clip_grad_norm_(groups[sid], max_grad_norm), host_norm)
        optimizers.step()
        totals.add(loss, correct, count)
        host_norm_sum += host_norm
    loss_mean, accuracy = totals.read("training")  # the one host sync of the epoch
    return EpochMetrics(
        loss=loss_mean,
        accuracy=accuracy,
        batches=totals.batches,
        samples=totals.samples,
        host_grad_norm=host_norm_sum.item() / totals.batches,
        seed_gradients={sid: stats.result() for sid, stats in seed_stats.items()},
    )


class _Flips:
    """Device-side counts of the items a counterfactual flips, one pair per slot."""

    def __init__(self, slots: Sequence[str], device: torch.device) -> None:
        self.gained = {sid: torch.zeros((), device=device, dtype=torch.long) for sid in slots}
        self.lost = {sid: torch.zeros((), device=device, dtype=torch.long) for sid in slots}

    def add(self, sid: str, right: Tensor, right_without: Tensor) -> None:
        self.gained[sid] += (right & ~right_without).sum()
        self.lost[sid] += (~right & right_without).sum()

    def read(self, items: int) -> dict[str, Contribution]:
        return {
            sid: Contribution(int(self.gained[sid].item()), int(self.lost[sid].item()), items)
            for sid in self.gained
        }


def _right(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per scored item (sample or token): is the prediction right? Flat bool [N]."""
    return (outputs.argmax(dim=-1) == targets).reshape(-1)


@torch.no_grad()
def evaluate(
    model: MorphogeneticModel,
    loader: Iterable[Batch],
    criterion: nn.Module,
    task_type: TaskType,
    device: torch.device,
    *,
    max_batches: int | None = None,
    alpha_override: Mapping[str, float] | None = None,
    counterfactual: Sequence[str] = (),
    channels_last: bool = False,
) -> EvalMetrics:
    """Loss and accuracy (0-100) over the whole ``loader`` unless ``max_batches`` is set.

    ``counterfactual`` names slots whose seed is also removed, one at a time, on the same
    batches (branching at the slot: `MorphogeneticModel.forward_counterfactual`); the
    result's ``contributions`` pair each item's outcome with and without the seed.
    ``alpha_override`` forces the named slots' alpha (e.g. ``{"r0c1": 0.0}``) for the
    whole pass.
    """
    model.eval()
    totals = _Totals(device)
    flips = _Flips(counterfactual, device)
    with model.forced_alpha(alpha_override or {}):
        for inputs, targets in _batches(loader, max_batches, device, channels_last):
            outputs, branches = model.forward_counterfactual(inputs, counterfactual)
            totals.add(*compute_task_loss_with_metrics(outputs, targets, criterion, task_type))
            if branches:
                right = _right(outputs, targets)
                for sid, without in branches.items():
                    flips.add(sid, right, _right(without, targets))
    loss_mean, accuracy = totals.read("validation")  # the one host sync of the pass
    return EvalMetrics(
        loss=loss_mean,
        accuracy=accuracy,
        samples=totals.samples,
        contributions=flips.read(totals.samples),
    )
