"""ScheduleController: plays a scripted plan of growth (`esper.config.ScheduleConfig`).

A plan says what to grow where and when, one step per slot, and how long a seed waits on
probation before the controller asks to keep it. Each epoch, in order:

1. **Judge the live seeds** (slot order), as the heuristic does: a seed that has been on
   probation for ``fossilize_after`` epochs is FOSSILIZED as soon as gate G5 passes; a
   seed that G2 keeps in TRAINING for ``stalled_training_epochs`` is CULLED. Culling a
   harmful seed, or one whose probation times out, is the lifecycle's own.
2. **Germinate the plan's next step** whose epoch has come and whose slot is open (steps
   in epoch order, then plan order; a step waits while its slot is occupied or the
   seed budget is spent). Every step germinates at most once.
3. Otherwise **WAIT**.

It is the family ``esper search`` searches to measure how much better than the
heuristic a controller could do on a task, and a plan found there runs again with
``esper compare --arms heuristic,schedule --config best.config.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from esper.config import GrowthStep, ScheduleConfig
from esper.contracts import Decision, SlotReport, TrainingSignals
from esper.controller.registry import ControllerContext
from esper.lifecycle import (
    FactoredAction,
    LifecycleConfig,
    LifecycleOp,
    SeedStage,
    gate_fossilize,
    seed_blends,
)

__all__ = ["ScheduleController", "build", "check_plan"]


class ScheduleController:
    """Follows ``plan``; each `Decision` names the step or rule that chose it."""

    def __init__(self, plan: ScheduleConfig, lifecycle: LifecycleConfig | None = None) -> None:
        self.plan = plan
        self.lifecycle = lifecycle or LifecycleConfig()
        # Epoch order; a stable sort keeps the plan's order among steps of one epoch.
        self.order = sorted(range(len(plan.steps)), key=lambda i: plan.steps[i].epoch)
        self.done: set[int] = set()
        """Indices of the steps already germinated."""

    def decide(self, signals: TrainingSignals, slots: Sequence[SlotReport]) -> Decision:
        return self._judge(slots) or self._grow(signals, slots)

    def _judge(self, slots: Sequence[SlotReport]) -> Decision | None:
        for report in slots:
            state = report.state
            if (
                state.stage is SeedStage.PROBATIONARY
                and state.epochs_in_stage >= self.plan.fossilize_after
                and gate_fossilize(state, self.lifecycle).passed
            ):
                why = f"G5 after {state.epochs_in_stage} epoch(s) on probation"
                return Decision(FactoredAction(LifecycleOp.FOSSILIZE, report.slot_id), why)
            if (
                state.stage is SeedStage.TRAINING
                and state.epochs_in_stage >= self.plan.stalled_training_epochs
            ):
                why = f"stalled in TRAINING for {state.epochs_in_stage} epochs (G2)"
                return Decision(FactoredAction(LifecycleOp.CULL, report.slot_id), why)
        return None

    def _grow(self, signals: TrainingSignals, slots: Sequence[SlotReport]) -> Decision:
        by_id = {report.slot_id: report for report in slots}
        for index in self.order:
            step = self.plan.steps[index]
            report = by_id.get(step.slot)
            if index in self.done or step.epoch > signals.epoch or report is None:
                continue
            if LifecycleOp.GERMINATE not in report.legal:
                continue
            self.done.add(index)
            action = FactoredAction(LifecycleOp.GERMINATE, step.slot, step.blueprint, step.blend)
            return Decision(action, f"step {index + 1}: {step.blueprint} in {step.slot}")
        return Decision(FactoredAction.wait(), "nothing due")

    def state_dict(self) -> dict[str, Any]:
        return {"done": sorted(self.done)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done = {int(index) for index in state["done"]}


def check_plan(plan: ScheduleConfig, context: ControllerContext) -> None:
    """ValueError naming the fix for a step the run's host cannot take: an unknown slot
    or blueprint, or a width seed blended gated."""
    for number, step in enumerate(plan.steps, start=1):
        _check_step(number, step, context)


def _check_step(number: int, step: GrowthStep, context: ControllerContext) -> None:
    where = f"schedule step {number}"
    if step.slot not in context.slot_ids:
        raise ValueError(
            f"{where}: slot {step.slot!r} is not one of this run's slots "
            f"({', '.join(context.slot_ids)})"
        )
    known = (*context.blueprints, *context.width_blueprints)
    if step.blueprint not in known:
        raise ValueError(
            f"{where}: blueprint {step.blueprint!r} does not fit this host; choose from "
            f"{', '.join(known)}"
        )
    if step.blend not in seed_blends(step.blueprint in context.width_blueprints):
        raise ValueError(f"{where}: a width seed cannot blend gated; use linear or sigmoid")


def build(context: ControllerContext) -> ScheduleController:
    """The run's plan (its ``schedule`` section), checked against its host."""
    plan = context.config.schedule
    check_plan(plan, context)
    return ScheduleController(plan, context.config.episode.lifecycle)
