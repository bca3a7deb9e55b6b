"""One episode: a fresh host trained for ``epochs`` epochs while a controller grows it.

Every epoch is one transaction in one fixed order, whatever the controller::

    observe():  train one epoch -> evaluate, with a paired counterfactual for every
                seed on probation (or every blended one) -> governor check (rollback
                and re-evaluate if needed) -> the reward for reaching this epoch ->
                signals
    controller.decide(signals, slots) -> Decision (the action and why)
    apply(decision): apply the action -> lifecycle tick (gates) -> the epoch's record
                (`esper.training.ledger.EpochRecord`) -> its event to every sink

`run_episode` is that loop; ``esper heuristic`` (`esper.run`) and the RL environment
(`esper.rl.env`) drive the same `EpisodeRunner`, built by
`esper.training.builders.build_episode`. Epochs are 1-based everywhere; the terminal
reward falls on epoch ``epochs``, or on the epoch the governor stops the episode at.

Every epoch also records what it cost: training and evaluation FLOPs (`ComputeMeter`,
counted once per architecture) and wall time.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from esper import telemetry as ev
from esper.config import EpisodeConfig, from_dict, to_dict
from esper.contracts import (
    Controller,
    Decision,
    SlotReport,
    TaskType,
    Topology,
    TrainingSignals,
)
from esper.lifecycle import (
    FactoredAction,
    LifecycleError,
    LifecycleOp,
    SeedStage,
    SeedState,
    legal_ops,
)
from esper.model.morphogenetic import MorphogeneticModel
from esper.model.width import point_units
from esper.training.compute import ComputeMeter
from esper.training.governor import Governor, GovernorStopError
from esper.training.ledger import EpisodeResult, EpochRecord
from esper.training.loop import (
    Batch,
    EpochMetrics,
    EvalMetrics,
    TrainStep,
    evaluate,
    train_one_epoch,
)
from esper.training.optim import OptimizerSet, lr_factor
from esper.training.reward import RewardTerms, epoch_reward
from esper.training.signals import SignalTracker

__all__ = [
    "NON_FINITE_SEED",
    "EpisodeData",
    "EpisodeRunner",
    "Observation",
    "ScriptedController",
    "Stop",
    "run_episode",
]


NON_FINITE_SEED = "non-finite seed (NaN or inf in its weights or gradients)"
"""Why a seed is culled when its own numbers blow up (it is culled alone, no rollback)."""


class EpisodeData(Protocol):
    """Where an episode's batches come from. ``train_batches(epoch)`` must be a pure
    function of the epoch number (seeded order), so a resumed run sees the same data."""

    task_type: TaskType
    random_guess_loss: float
    """Loss of a uniform prediction, ln(classes) or ln(vocab): the governor's scale."""

    def train_batches(self, epoch: int) -> Iterable[Batch]: ...

    def val_batches(self) -> Iterable[Batch]:
        """The decision split: every epoch's evaluation, which the controller, the gates,
        the counterfactuals and the reward read."""
        ...

    def test_batches(self) -> Iterable[Batch] | None:
        """The test split, evaluated once, on the final model; None if there is none."""
        ...


@dataclass(frozen=True)
class Observation:
    """What the controller sees after an epoch's measurements."""

    signals: TrainingSignals
    slots: tuple[SlotReport, ...]
    reward: RewardTerms
    """The reward for reaching this epoch (see `esper.training.reward`)."""


@dataclass(frozen=True)
class Stop:
    """How an episode the governor stopped early ended (`EpisodeRunner.stop`)."""

    reason: str
    accuracy: float
    """Validation accuracy of the model the run ends with (its last good snapshot)."""
    reward: RewardTerms
    """The reward of the step into the stop (`esper.training.reward.epoch_reward`)."""


@dataclass
class _SeedBook:
    """Per-slot accuracies the reports need but the lifecycle record does not keep."""

    at_germination: dict[str, float] = field(default_factory=dict)
    at_stage_start: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Measured:
    """What `observe` measured, waiting for the controller's action."""

    train: EpochMetrics
    val: EvalMetrics
    rollback: str | None
    train_flops: float
    eval_flops: float
    reward: RewardTerms
    started: float


class EpisodeRunner:
    """Runs one episode epoch by epoch: `observe`, then `apply` the controller's action."""

    def __init__(
        self,
        model: MorphogeneticModel,
        data: EpisodeData,
        config: EpisodeConfig,
        telemetry: ev.Telemetry | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if model.lifecycle != config.lifecycle:
            raise ValueError(
                "the model's LifecycleConfig differs from config.lifecycle; build the model "
                "with lifecycle=config.lifecycle so the gates use the settings you saved"
            )
        self.model = model
        self.data = data
        self.config = config
        self.telemetry = telemetry or ev.Telemetry.off()
        self.channels_last = config.training.channels_last and model.host.topology is Topology.CNN
        if self.channels_last:  # before the optimizers take the parameters
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.device = torch.device(device)
        self.criterion = nn.CrossEntropyLoss()
        self.optimizers = OptimizerSet(model, config.optim)
        self.step_fn = TrainStep(compile=config.training.compile)
        self.tracker = SignalTracker(config.epochs, config.signals)
        self.governor = Governor(config.governor, data.random_guess_loss)
        self.epoch = 0
        self.records: list[EpochRecord] = []
        self.counts: Counter[LifecycleOp] = Counter()
        self.germinated = self.fossilized = self.culled = 0
        self.book = _SeedBook()
        probe = next(iter(data.val_batches()))
        self.compute = ComputeMeter(
            model,
            (probe[0].to(self.device), probe[1].to(self.device)),
            self.criterion,
            data.task_type,
        )
        self._pending: _Measured | None = None
        self.stop: Stop | None = None
        """Set when the governor stopped the episode early."""
        self._started = time.perf_counter()
        self._elapsed_before = 0.0  # wall time of earlier processes, for resumed runs
        self.governor.passed(0, 0.0, model.state_dict(), self.optimizers.state_dict())

    @property
    def done(self) -> bool:
        """Every epoch trained and applied, or the governor stopped the episode."""
        finished = self.epoch >= self.config.epochs and self._pending is None
        return finished or self.stop is not None

    # ------------------------------------------------------------ phase 1

    def observe(self) -> Observation:
        """Train and measure epoch ``self.epoch + 1``; return what the controller sees.

        Raises `esper.training.governor.GovernorStopError` when this epoch's rollback is one
        too many in a row; the runner is then finished (the model holds the snapshot, and
        `stop` says what the episode ended with).
        """
        if self._pending is not None:
            raise RuntimeError("observe() called twice without apply()")
        if self.done:
            raise RuntimeError("the episode is over")
        started = time.perf_counter()
        self.epoch += 1
        optim = self.config.optim
        self.optimizers.set_lr_scale(lr_factor(optim.lr_schedule, self.epoch, self.config.epochs))
        train_flops = self.compute.train_per_item(self.model)
        train = self._train_epoch()
        train_flops *= train.samples
        val, eval_flops, rollback = self._measure(train, train_flops)
        for sid, measured in val.contributions.items():
            self.model.slot(sid).record(contribution=measured.pp, contribution_se=measured.se)
        reward = self._reward(train, val, train_flops + eval_flops)
        self._pending = _Measured(train, val, rollback, train_flops, eval_flops, reward, started)
        signals = self.tracker.update(
            self.epoch,
            train.loss,
            train.accuracy,
            val.loss,
            val.accuracy,
            self.model.host_params,
            self.model.active_seed_params,
            host_train_flops=self.compute.host_train,
        )
        return Observation(signals, self.reports(), reward)

    def _train_epoch(self) -> EpochMetrics:
        """One epoch of the batch loop; record each seed's gradients, cull broken seeds."""
        cfg = self.config.training
        train = train_one_epoch(
            self.model,
            self.data.train_batches(self.epoch),
            self.optimizers,
            self.criterion,
            self.data.task_type,
            self.device,
            max_batches=cfg.max_batches,
            max_grad_norm=cfg.max_grad_norm,
            step=self.step_fn,
            channels_last=self.channels_last,
        )
        for sid, stats in train.seed_gradients.items():
            self.model.slot(sid).record(gradient_ratio=stats.ratio)
            self.telemetry.emit(ev.SeedGradients(self.epoch, sid, stats))
        self._cull_non_finite_seeds(train)
        return train

    def _measure(
        self, train: EpochMetrics, train_flops: float
    ) -> tuple[EvalMetrics, float, str | None]:
        """Validation and the governor's check (rollback and re-evaluation if it fails):
        the metrics, their FLOPs and the rollback's reason. A rollback one too many in a
        row stops the episode (`GovernorStopError`, after setting `stop`)."""
        val, eval_flops = self._evaluate()
        rollback = self.governor.check(val.loss, val.accuracy)
        if rollback is None:
            self.governor.passed(
                self.epoch, val.accuracy, self.model.state_dict(), self.optimizers.state_dict()
            )
            return val, eval_flops, None
        self._roll_back(rollback, val.loss)
        val, again = self._evaluate()  # the model the run goes on (or ends) with
        eval_flops += again
        try:
            self.governor.failed(self.epoch, rollback)
        except GovernorStopError as error:
            reward = self._reward(train, val, train_flops + eval_flops, stopped=True)
            self.stop = Stop(str(error), val.accuracy, reward)
            raise
        return val, eval_flops, rollback

    def _reward(
        self, train: EpochMetrics, val: EvalMetrics, spent: float, stopped: bool = False
    ) -> RewardTerms:
        """The reward for reaching this epoch (`esper.training.reward.epoch_reward`)."""
        static = self.compute.host_train * train.samples + self.compute.host_eval * val.samples
        return epoch_reward(
            self.records[-1].val.accuracy if self.records else None,
            val.accuracy,
            spent,
            static,
            self.epoch,
            self.config.epochs,
            self.config.reward,
            stopped=stopped,
        )

    def _measured_slots(self) -> list[str]:
        """Slots whose seed's counterfactual is measured this epoch: seeds on probation
        (G5 and the probation verdict read it), every other live seed with alpha > 0 if
        ``counterfactuals`` is 'live', and on the last epoch the fossils (what each kept
        seed is worth at the end). Verdicts only ever read a measurement taken on
        probation, so 'judged' and 'live' make the same decisions."""
        last = self.epoch == self.config.epochs
        every_live = self.config.training.counterfactuals == "live"
        return [
            s.slot_id
            for s in self.model.slots()
            if s.seed is not None
            and s.alpha > 0.0
            and (
                s.stage is SeedStage.PROBATIONARY
                or (every_live and s.state.live)
                or (last and s.stage is SeedStage.FOSSILIZED)
            )
        ]

    def _evaluate(self) -> tuple[EvalMetrics, float]:
        """Validation with the counterfactuals of `_measured_slots`, and its FLOPs."""
        measured = self._measured_slots()
        val = self._score(self.data.val_batches(), measured)
        return val, self.compute.eval_per_item(self.model, measured) * val.samples

    def _score(self, batches: Iterable[Batch], counterfactual: Sequence[str] = ()) -> EvalMetrics:
        """The model on ``batches`` (at most ``max_val_batches``), with ``counterfactual``
        slots' seeds removed in the same pass."""
        return evaluate(
            self.model,
            batches,
            self.criterion,
            self.data.task_type,
            self.device,
            max_batches=self.config.training.max_val_batches,
            counterfactual=counterfactual,
            channels_last=self.channels_last,
        )

    def _keep_channels_last(self) -> None:
        """The host's weights in channels_last format when the run asks for it, whether
        built with the host, widened by a merge or loaded: the format picks the kernel,
        and so the order of a convolution's sums, so a resumed run must use the same."""
        if self.channels_last:  # in place: the parameters stay the same objects
            self.model.host.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def _test(self) -> EvalMetrics | None:
        """The final model on the test split (None without one). Nothing the run decides
        reads it, and it is not part of the run's compute."""
        batches = self.data.test_batches()
        return None if batches is None else self._score(batches)

    def _cull_non_finite_seeds(self, train: EpochMetrics) -> None:
        """Cull, on its own, every live seed whose weights or gradients are not finite.

        A seed in TRAINING cannot harm the host (its slot passes ``h`` through exactly),
        so it goes alone, without a rollback. One that was blended in has already
        poisoned the host's output, which the governor's check then catches.
        """
        if not math.isfinite(train.host_grad_norm):
            return  # the host itself blew up (and every seed with it): the governor's case
        bad = []
        for slot in self.model.slots():
            params = slot.seed_parameters()
            if not slot.state.live or not params:
                continue
            stats = train.seed_gradients.get(slot.slot_id)
            grads_finite = stats is None or (
                math.isfinite(stats.mean_norm) and math.isfinite(stats.max_norm)
            )
            # One host sync per live seed per epoch.
            weights_finite = bool(torch.stack([torch.isfinite(p).all() for p in params]).all())
            if not (grads_finite and weights_finite):
                bad.append(slot.slot_id)
        for sid in bad:
            self._cull(sid, NON_FINITE_SEED, automatic=True)
        if bad:
            self.optimizers.sync(self.model)

    def _roll_back(self, reason: str, val_loss: float) -> None:
        """Restore the last good snapshot and record every seed the model lost as culled.

        Lost seeds are those alive or fossilized just before the rollback that are not a
        fossil of the snapshot: seeds live in the snapshot (culled now) and seeds that
        did not exist yet when it was taken (gone with the restore). Seeds the snapshot
        holds but that were already culled since are removed again without being
        counted twice. So ``germinated == fossilized + culled + live`` always holds.
        """
        snapshot = self.governor.snapshot
        assert snapshot is not None  # taken at construction
        before = {s.slot_id: s.state for s in self.model.slots()}
        self.model.load_state_dict(snapshot.model)
        self.optimizers = OptimizerSet.restore(self.model, self.config.optim, snapshot.optimizers)
        for slot in self.model.slots():
            if slot.state.live:
                self.model.cull_seed(slot.slot_id)
        fossils = {s.state.seed_id for s in self.model.slots() if s.stage is SeedStage.FOSSILIZED}
        lost = [
            (sid, old) for sid, old in before.items() if old.occupied and old.seed_id not in fossils
        ]
        for sid, old in lost:
            if old.stage is SeedStage.FOSSILIZED:
                self.fossilized -= 1  # fossilized after the snapshot: undone by the restore
            self._record_cull(sid, old, "governor rollback", automatic=True)
        self.optimizers.sync(self.model)
        self.telemetry.emit(
            ev.GovernorRollback(
                self.epoch, reason, val_loss, snapshot.epoch, tuple(sid for sid, _ in lost)
            )
        )

    def reports(self) -> tuple[SlotReport, ...]:
        live = sum(1 for s in self.model.slots() if s.state.live)
        budget = self.config.max_seeds is None or self.germinated < self.config.max_seeds
        most_live = self.config.max_live_seeds
        budget = budget and (most_live is None or live < most_live)
        return tuple(
            SlotReport(
                slot_id=s.slot_id,
                state=s.state,
                alpha=s.alpha,
                seed_params=s.seed_param_count(),
                legal=legal_ops(s.state, seed_budget_left=budget),
                accuracy_at_germination=self.book.at_germination.get(s.slot_id),
                accuracy_at_stage_start=self.book.at_stage_start.get(s.slot_id),
                costs=self.compute.seed_costs[s.slot_id],
                width_units=None
                if s.width_point is None
                else point_units(self.model.host, s.width_point),
            )
            for s in self.model.slots()
        )

    # ------------------------------------------------------------ phase 2

    def apply(self, decision: Decision) -> EpochRecord:
        """Apply the controller's decision, tick the lifecycle, record the epoch (the
        record's `EpochRecord.event` goes to every sink). The decision's reason is in
        the record, and a cull's events carry it."""
        if self._pending is None:
            raise RuntimeError("apply() called before observe()")
        measured, self._pending = self._pending, None
        action, val = decision.action, measured.val
        self.counts[action.op] += 1
        outcome = self._execute(action, val.accuracy, decision.reason)
        self._tick(val.accuracy)
        self.optimizers.sync(self.model)
        self.optimizers.check_ownership(self.model)
        last = self.epoch >= self.config.epochs
        record = EpochRecord(
            epoch=self.epoch,
            train=measured.train,
            val=val,
            rollback=measured.rollback,
            decision=decision,
            outcome=outcome,
            reward=measured.reward,
            slots=self._slot_snapshots(measured),
            host_params=self.model.host_params,
            seed_params=self.model.active_seed_params,
            germinated=self.germinated,
            fossilized=self.fossilized,
            culled=self.culled,
            train_flops=measured.train_flops,
            eval_flops=measured.eval_flops,
            wall_seconds=self.wall_seconds,
            seconds=time.perf_counter() - measured.started,
            test=self._test() if last else None,
        )
        self.records.append(record)
        self.telemetry.emit(record.event())
        return record

    def _slot_snapshots(self, measured: _Measured) -> dict[str, ev.SlotSnapshot]:
        """Every slot at the end of the epoch, with what this epoch measured of its seed."""
        snapshots = {}
        for slot in self.model.slots():
            contribution = measured.val.contributions.get(slot.slot_id)
            gradients = measured.train.seed_gradients.get(slot.slot_id)
            snapshots[slot.slot_id] = ev.SlotSnapshot(
                stage=slot.stage,
                blueprint=slot.state.blueprint_id,
                alpha=slot.alpha,
                contribution=None if contribution is None else contribution.pp,
                params=slot.seed_param_count(),
                contribution_se=None if contribution is None else contribution.se,
                gradient_ratio=None if gradients is None else gradients.ratio,
            )
        return snapshots

    def _execute(self, action: FactoredAction, accuracy: float, reason: str) -> str:
        if action.op is LifecycleOp.WAIT:
            return "applied"
        reports = {r.slot_id: r for r in self.reports()}
        if action.slot not in reports:
            return f"refused: no slot {action.slot!r} (enabled: {', '.join(reports)})"
        report = reports[action.slot]
        if action.op not in report.legal:
            stage = report.state.stage.name
            return f"refused: {action.op.name} is not legal in {action.slot} ({stage})"
        sid = action.slot
        if action.op is LifecycleOp.GERMINATE:
            return self._germinate(sid, action, accuracy)
        if action.op is LifecycleOp.CULL:
            self._cull(sid, reason or "controller", automatic=False)
            return "applied"
        slot = self.model.slot(sid)
        seed_id, blueprint = slot.state.seed_id or "", slot.state.blueprint_id or ""
        params = slot.seed_param_count()
        kept = self.model.fossilize_seed(sid)
        self._emit_gate(sid, seed_id, kept.gate)
        if not kept.passed:
            return f"refused: {kept.gate.reason}"
        if kept.swaps:  # a width seed merged into the host: its optimizer state follows
            self.optimizers.merge(sid, kept.swaps)
            self._keep_channels_last()  # the widened layers are new tensors
        self.fossilized += 1
        self._stage_changed(
            sid, seed_id, SeedStage.PROBATIONARY, SeedStage.FOSSILIZED, "G5 passed", accuracy
        )
        self.telemetry.emit(
            ev.SeedFossilized(
                self.epoch, sid, seed_id, blueprint, slot.state.contribution or 0.0, params
            )
        )
        return "applied"

    def _germinate(self, sid: str, action: FactoredAction, accuracy: float) -> str:
        if action.blueprint is None:
            return "refused: GERMINATE needs a blueprint"
        seed_id = f"seed{self.germinated + 1}"
        try:
            self.model.germinate_seed(action.blueprint, seed_id, slot=sid, blend=action.blend)
        except (LifecycleError, KeyError, ValueError) as error:
            return f"refused: {error}"
        self.germinated += 1
        self.book.at_germination[sid] = accuracy
        self.book.at_stage_start[sid] = accuracy
        slot = self.model.slot(sid)
        self.telemetry.emit(
            ev.SeedGerminated(
                self.epoch,
                sid,
                seed_id,
                action.blueprint,
                action.blend.value,
                slot.seed_param_count(),
            )
        )
        return "applied"

    def _cull(self, sid: str, reason: str, *, automatic: bool) -> None:
        state = self.model.slot(sid).state
        self.model.cull_seed(sid)
        self._record_cull(sid, state, reason, automatic=automatic)

    def _record_cull(self, sid: str, state: SeedState, reason: str, *, automatic: bool) -> None:
        """Book-keeping and events for a seed that was just culled (``state``: before)."""
        self.culled += 1
        self.book.at_germination.pop(sid, None)
        self.book.at_stage_start.pop(sid, None)
        seed_id = state.seed_id or ""
        self.telemetry.emit(
            ev.SeedStageChanged(self.epoch, sid, seed_id, state.stage, SeedStage.CULLED, reason)
        )
        self.telemetry.emit(
            ev.SeedCulled(
                self.epoch,
                sid,
                seed_id,
                state.blueprint_id or "",
                reason,
                automatic,
                state.contribution,
            )
        )

    def _tick(self, accuracy: float) -> None:
        before = {s.slot_id: s.state for s in self.model.slots()}
        for sid, outcome in self.model.step_epoch().items():
            seed_id = before[sid].seed_id or ""
            if outcome.gate is not None:
                self._emit_gate(sid, seed_id, outcome.gate)
            if outcome.cull_reason is not None:
                self._record_cull(sid, before[sid], outcome.cull_reason, automatic=True)
                continue
            for old, new in outcome.transitions:
                reason = outcome.gate.reason if outcome.gate is not None else "clock"
                self._stage_changed(sid, seed_id, old, new, reason, accuracy)

    def _stage_changed(
        self, sid: str, seed_id: str, old: SeedStage, new: SeedStage, reason: str, accuracy: float
    ) -> None:
        if self.model.slot(sid).state.live:
            self.book.at_stage_start[sid] = accuracy
        self.telemetry.emit(ev.SeedStageChanged(self.epoch, sid, seed_id, old, new, reason))

    def _emit_gate(self, sid: str, seed_id: str, result: Any) -> None:
        self.telemetry.emit(
            ev.GateEvaluated(
                self.epoch,
                sid,
                seed_id,
                result.gate,
                result.passed,
                result.checks_passed,
                result.checks_failed,
            )
        )

    # ------------------------------------------------------------ checkpointing

    @property
    def wall_seconds(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._started

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this episode exactly, between two epochs.

        Tensors and plain data only (dicts, lists, strings, numbers, None), so it loads
        with ``torch.load(weights_only=True)``: the per-epoch records are stored as
        `to_dict` data and rebuilt by `from_dict`, which follows the dataclasses' fields.
        """
        if self._pending is not None:
            raise RuntimeError("checkpoint between epochs: after apply(), before observe()")
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizers": self.optimizers.state_dict(),
            "records": [to_dict(record) for record in self.records],
            "counts": {op.name: n for op, n in self.counts.items()},
            "seeds": [self.germinated, self.fossilized, self.culled],
            "book": [dict(self.book.at_germination), dict(self.book.at_stage_start)],
            "tracker": self.tracker.state_dict(),
            "governor": self.governor.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "wall_seconds": self.wall_seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict` output; the runner must be freshly built."""
        self.model.load_state_dict(state["model"])
        self._keep_channels_last()  # layers a merge widened were built again for the load
        self.optimizers = OptimizerSet.restore(self.model, self.config.optim, state["optimizers"])
        self.epoch = int(state["epoch"])
        self.records = [from_dict(EpochRecord, record) for record in state["records"]]
        self.counts = Counter({LifecycleOp[name]: int(n) for name, n in state["counts"].items()})
        self.germinated, self.fossilized, self.culled = (int(n) for n in state["seeds"])
        self.book = _SeedBook(*(dict(d) for d in state["book"]))
        self.tracker.load_state_dict(state["tracker"])
        self.governor.load_state_dict(state["governor"])
        torch.set_rng_state(state["torch_rng"])
        self._elapsed_before = float(state["wall_seconds"])
        self._started = time.perf_counter()

    # ------------------------------------------------------------ result

    def result(self) -> EpisodeResult:
        accuracies = [r.val.accuracy for r in self.records]
        test = self.records[-1].test if self.records else None
        return EpisodeResult(
            final_accuracy=accuracies[-1] if accuracies else 0.0,
            test_accuracy=None if test is None else test.accuracy,
            best_accuracy=max(accuracies, default=0.0),
            action_counts={op: self.counts[op] for op in LifecycleOp},
            rewards=tuple(r.reward.total for r in self.records),
            history=tuple(self.records),
            seeds_germinated=self.germinated,
            seeds_fossilized=self.fossilized,
            seeds_culled=self.culled,
            host_params=self.model.host_params,
            seed_params=self.model.active_seed_params,
            wall_seconds=self.wall_seconds,
            train_flops=sum(r.train_flops for r in self.records),
            eval_flops=sum(r.eval_flops for r in self.records),
        )


class ScriptedController:
    """Plays a fixed schedule: ``{epoch: action}``; WAIT on every other epoch."""

    def __init__(self, schedule: Mapping[int, FactoredAction]) -> None:
        self.schedule = dict(schedule)

    def decide(self, signals: TrainingSignals, slots: Iterable[SlotReport]) -> Decision:
        if signals.epoch in self.schedule:
            return Decision(self.schedule[signals.epoch], f"scheduled for epoch {signals.epoch}")
        return Decision(FactoredAction.wait(), "nothing scheduled")


def run_episode(runner: EpisodeRunner, controller: Controller) -> EpisodeResult:
    """Drive ``runner`` to the end: observe, let ``controller`` decide, apply."""
    while not runner.done:
        observation = runner.observe()
        runner.apply(controller.decide(observation.signals, observation.slots))
    return runner.result()
