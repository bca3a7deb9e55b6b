"""HeuristicController: the rule-based baseline that decides when, where and what to grow.

Rules, in order of precedence, each epoch:

1. **Judge a live seed** (the first in slot order that has something to decide):
   on probation, FOSSILIZE once its measured counterfactual contribution clears the
   fossilization threshold (gate G5), CULL if it has not after ``probation_patience``
   epochs; in training or blending, CULL if validation accuracy has fallen by more than
   ``cull_accuracy_drop`` since the stage began (judged after ``cull_after_epochs``).
2. **Germinate** when some slot may take a seed (`legal_ops` says so: empty, not
   embargoed, within the seed budgets), the run is past ``min_epoch_to_germinate`` with
   at least ``min_epochs_left`` epochs to go,
   accuracy has plateaued for ``plateau_epochs`` and (optionally) the host has
   stabilised. The blueprint is the next one in the rotation whose cull penalty is
   below the threshold (else the least penalised); the slot is the first that may
   take it.
3. Otherwise **WAIT**.

Blueprints for the host's topology are passed in, so the rules work for CNN and
transformer hosts alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from esper.config import HeuristicConfig
from esper.contracts import SlotReport, TrainingSignals
from esper.lifecycle import FactoredAction, LifecycleOp, SeedStage

__all__ = ["HeuristicController"]

_CULLED_STAGES = (SeedStage.CULLED, SeedStage.EMBARGOED)


class HeuristicController:
    """Rule-based controller; ``last_reason`` says why it chose its last action."""

    def __init__(
        self,
        blueprints: Sequence[str],
        config: HeuristicConfig | None = None,
        fossilize_threshold: float = 1.0,
    ) -> None:
        self.config = config or HeuristicConfig()
        rotation = list(self.config.blueprints) or list(blueprints)
        unknown = [b for b in rotation if b not in blueprints]
        if unknown or not rotation:
            raise ValueError(
                f"heuristic blueprints {unknown or rotation} do not fit this host; "
                f"choose from: {', '.join(blueprints)}"
            )
        self.rotation = rotation
        self.fossilize_threshold = fossilize_threshold
        self.penalties: dict[str, float] = {}
        self.next_index = 0
        self.last_reason = ""
        self._seen: dict[str, SeedStage] = {}

    def decide(self, signals: TrainingSignals, slots: Sequence[SlotReport]) -> FactoredAction:
        self._learn_from_culls(slots)
        action, self.last_reason = self._judge_live(signals, slots) or self._germinate(
            signals, slots
        )
        return action

    # ------------------------------------------------------------ rules

    def _judge_live(
        self, signals: TrainingSignals, slots: Sequence[SlotReport]
    ) -> tuple[FactoredAction, str] | None:
        cfg = self.config
        for report in slots:
            state = report.state
            if state.stage is SeedStage.PROBATIONARY:
                c = state.contribution
                if c is not None and c >= self.fossilize_threshold:
                    return self._op(LifecycleOp.FOSSILIZE, report), f"contribution {c:+.2f} pp"
                if state.epochs_in_stage >= cfg.probation_patience:
                    why = "unmeasured" if c is None else f"{c:+.2f} pp"
                    return self._op(LifecycleOp.CULL, report), f"contribution {why} on probation"
            elif state.stage in (SeedStage.TRAINING, SeedStage.BLENDING):
                start = report.accuracy_at_stage_start
                if start is None or state.epochs_in_stage < cfg.cull_after_epochs:
                    continue
                drop = start - signals.val_accuracy
                if drop > cfg.cull_accuracy_drop:
                    reason = f"accuracy fell {drop:.2f} pp during {state.stage.name}"
                    return self._op(LifecycleOp.CULL, report), reason
        return None

    def _germinate(
        self, signals: TrainingSignals, slots: Sequence[SlotReport]
    ) -> tuple[FactoredAction, str]:
        cfg = self.config
        open_slots = [r for r in slots if LifecycleOp.GERMINATE in r.legal]
        if not open_slots:
            return FactoredAction.wait(), "no slot may take a seed"
        if signals.epoch < cfg.min_epoch_to_germinate:
            return FactoredAction.wait(), f"before epoch {cfg.min_epoch_to_germinate}"
        left = signals.max_epochs - signals.epoch
        if left < cfg.min_epochs_left:
            return FactoredAction.wait(), f"{left} epoch(s) left, fewer than {cfg.min_epochs_left}"
        if cfg.require_stable_host and not signals.host_stabilized:
            return FactoredAction.wait(), "host not yet stable"
        if signals.plateau_epochs < cfg.plateau_epochs:
            waiting = f"plateau of {signals.plateau_epochs} epoch(s), needs {cfg.plateau_epochs}"
            return FactoredAction.wait(), waiting
        blueprint = self._next_blueprint()
        action = FactoredAction(LifecycleOp.GERMINATE, open_slots[0].slot_id, blueprint, cfg.blend)
        return action, f"plateau of {signals.plateau_epochs} epochs"

    # ------------------------------------------------------------ blueprint rotation

    def _next_blueprint(self) -> str:
        n = len(self.rotation)
        for offset in range(n):
            name = self.rotation[(self.next_index + offset) % n]
            if self.penalties.get(name, 0.0) < self.config.penalty_threshold:
                self.next_index = (self.next_index + offset + 1) % n
                return name
        name = min(self.rotation, key=lambda b: self.penalties.get(b, 0.0))
        self.next_index = (self.rotation.index(name) + 1) % n
        return name

    def _learn_from_culls(self, slots: Sequence[SlotReport]) -> None:
        for name in list(self.penalties):
            self.penalties[name] *= self.config.penalty_decay
        for report in slots:
            before = self._seen.get(report.slot_id)
            stage = report.state.stage
            culled_now = stage in _CULLED_STAGES and before not in _CULLED_STAGES
            if culled_now and before is not None and report.state.blueprint_id is not None:
                name = report.state.blueprint_id
                self.penalties[name] = self.penalties.get(name, 0.0) + self.config.cull_penalty
            self._seen[report.slot_id] = stage

    # ------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        return {
            "penalties": dict(self.penalties),
            "next_index": self.next_index,
            "seen": {sid: int(stage) for sid, stage in self._seen.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.penalties = dict(state["penalties"])
        self.next_index = int(state["next_index"])
        self._seen = {sid: SeedStage(stage) for sid, stage in state["seen"].items()}

    @staticmethod
    def _op(op: LifecycleOp, report: SlotReport) -> FactoredAction:
        return FactoredAction(op, report.slot_id)
