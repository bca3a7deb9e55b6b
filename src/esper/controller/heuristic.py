"""HeuristicController: the rule-based baseline that decides when, where and what to grow.

Growth pays when it happens early, while the learning rate is high and the network is
still small, in the places where capacity is cheap, and when keeping or removing a seed
rests on evidence rather than on a sample or two. The rules, in order, each epoch:

1. **Judge the live seeds** (slot order). A seed on probation is FOSSILIZED as soon as
   gate G5 passes: its paired counterfactual contribution is at least
   ``min_fossilize_contribution`` pp and ``fossilize_z`` standard errors above 0; one
   ``cull_z`` standard errors below 0 is culled by the lifecycle itself. A contribution
   within noise is neither: the seed stays until the evidence is clear or probation
   times out. A seed still blending is not judged: early in the ramp its contribution
   measures how surprised the host still is, not what the seed can do (a CIFAR-10 seed
   measured at -1.9 pp at alpha 0.2 was culled twice by an earlier rule). A seed that
   G2 keeps in TRAINING for ``stalled_training_epochs`` is CULLED: its gradients are too
   weak to blend it in, and it holds the slot; that blueprint (for a width seed: any
   width blueprint) is not grown in that slot again.
2. **Grow on a schedule, within a budget.** From ``start_epoch`` on, while at least
   ``min_epochs_left`` epochs remain (time for a seed to be trained, blended and judged),
   GERMINATE one seed per epoch into an open slot while the seeds' parameters and
   training FLOPs stay within the budget (multiples of the host's own).
3. **Where and what: expected gain per cost.** The gain of a seed is taken to be the
   capacity it adds (its parameters) and its cost the training FLOPs it adds per sample.
   Slots are ranked by the parameters per FLOP of the largest blueprint that fits the
   budget there: in a CNN the deepest slot is the widest and has the fewest positions,
   so capacity is cheapest there. In the chosen slot the largest fitting blueprint is
   grown, skipping blueprints recently culled (a penalty that decays every epoch).
   Width growth (``growth``): a width candidate widens the block before the slot by its
   largest fitting width blueprint. With ``width`` every block is a candidate; with
   ``both`` a block is widened instead of deepened after when it is a bottleneck (its
   units at most ``width_bottleneck`` times the host's mean units per block), since what
   a narrow block drops is gone before any seed after it could use it.
4. Otherwise **WAIT**.

All thresholds are fields of `HeuristicConfig`; the significance thresholds are the
lifecycle's (`LifecycleConfig`), so the heuristic and gate G5 never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from esper.config import HeuristicConfig
from esper.contracts import Decision, SeedCost, SlotReport, TrainingSignals, mean_width_units
from esper.controller.registry import ControllerContext
from esper.lifecycle import (
    FactoredAction,
    LifecycleConfig,
    LifecycleOp,
    SeedStage,
    gate_fossilize,
)

__all__ = ["HeuristicController", "build"]

_CULLED_STAGES = (SeedStage.CULLED, SeedStage.EMBARGOED)


class HeuristicController:
    """Rule-based controller; each `Decision` says which rule chose it and why.

    ``blueprints`` are the names that fit the host's topology; ``lifecycle`` holds the
    gates the episode uses (G5's thresholds decide fossilization here too).
    """

    def __init__(
        self,
        blueprints: Sequence[str],
        config: HeuristicConfig | None = None,
        lifecycle: LifecycleConfig | None = None,
        width_blueprints: Sequence[str] = (),
    ) -> None:
        self.config = config or HeuristicConfig()
        self.lifecycle = lifecycle or LifecycleConfig()
        allowed = list(self.config.blueprints) or list(blueprints)
        unknown = [b for b in allowed if b not in blueprints]
        if unknown or not allowed:
            raise ValueError(
                f"heuristic blueprints {unknown or allowed} do not fit this host; "
                f"choose from: {', '.join(blueprints)}"
            )
        self.allowed = allowed
        self.width = list(width_blueprints)
        """Width blueprints, grown where the block widens (``growth``)."""
        self.penalties: dict[str, float] = {}
        self.stalled: set[tuple[str, str]] = set()
        """(slot, blueprint) pairs G2 kept from blending: never grown there again."""
        self._seen: dict[str, SeedStage] = {}

    def decide(self, signals: TrainingSignals, slots: Sequence[SlotReport]) -> Decision:
        self._learn_from_culls(slots)
        return self._judge_live(slots) or self._grow(signals, slots)

    # ------------------------------------------------------------ rule 1: judge

    def _judge_live(self, slots: Sequence[SlotReport]) -> Decision | None:
        for report in slots:
            state = report.state
            c, z = state.contribution, state.contribution_z
            stage = state.stage
            if stage is SeedStage.PROBATIONARY and gate_fossilize(state, self.lifecycle).passed:
                return self._op(LifecycleOp.FOSSILIZE, report, f"G5: {c:+.2f} pp, z {z:+.1f}")
            if (
                stage is SeedStage.TRAINING
                and state.epochs_in_stage >= self.config.stalled_training_epochs
            ):
                why = f"stalled in TRAINING for {state.epochs_in_stage} epochs (G2)"
                self._remember_stall(report.slot_id, state.blueprint_id)
                return self._op(LifecycleOp.CULL, report, why)
        return None

    def _remember_stall(self, slot: str, blueprint: str | None) -> None:
        """Never grow ``blueprint`` at ``slot`` again; for a width blueprint, no width
        blueprint at all: what G2 reads there is the widened layers' gradient, which a
        smaller width seed shares (on digits the last block's width_50, retried after its
        width_100 stalled, stalled too on four of the five tuning seeds)."""
        if blueprint is None:
            return
        names = self.width if blueprint in self.width else [blueprint]
        self.stalled.update((slot, name) for name in names)

    # ------------------------------------------------------------ rules 2-3: grow

    def _grow(self, signals: TrainingSignals, slots: Sequence[SlotReport]) -> Decision:
        cfg = self.config
        open_slots = [r for r in slots if LifecycleOp.GERMINATE in r.legal]
        if not open_slots:
            return Decision(FactoredAction.wait(), "no slot may take a seed")
        if signals.epoch < cfg.start_epoch:
            return Decision(FactoredAction.wait(), f"growth starts at epoch {cfg.start_epoch}")
        left = signals.max_epochs - signals.epoch
        if left < cfg.min_epochs_left:
            why = f"{left} epoch(s) left, fewer than {cfg.min_epochs_left}"
            return Decision(FactoredAction.wait(), why)
        params_left, flops_left = self._budget_left(signals, slots)
        candidates = []
        for report in reversed(open_slots):  # deepest first, so it wins ties
            name = self._largest_fitting(
                report, self._names(report, slots), params_left, flops_left
            )
            if name is not None:
                cost = report.costs[name]
                candidates.append(
                    (cost.params / max(cost.train_flops, 1.0), cost.params, report.slot_id, name)
                )
        if not candidates:
            return Decision(FactoredAction.wait(), "growth budget spent")
        # Gain per cost: parameters per training FLOP; within 10% of the best, the
        # larger seed (more capacity) wins.
        top = max(c[0] for c in candidates)
        best = max((c for c in candidates if c[0] >= 0.9 * top), key=lambda c: c[1])
        _, params, sid, name = best
        action = FactoredAction(LifecycleOp.GERMINATE, sid, name, cfg.blend)
        return Decision(action, f"most capacity per FLOP: {name} in {sid} (+{params:,} params)")

    def _budget_left(
        self, signals: TrainingSignals, slots: Sequence[SlotReport]
    ) -> tuple[float, float]:
        """Parameters and training FLOPs per sample that seeds may still add."""
        cfg = self.config
        grown = [self._cost(r) for r in slots if r.state.occupied]
        params_left = flops_left = float("inf")
        if cfg.max_growth_params is not None:
            params_left = cfg.max_growth_params * signals.host_params - sum(c.params for c in grown)
        if cfg.max_growth_flops is not None:
            flops_left = cfg.max_growth_flops * signals.host_train_flops - sum(
                c.train_flops for c in grown
            )
        return params_left, flops_left

    def _names(self, report: SlotReport, slots: Sequence[SlotReport]) -> Sequence[str]:
        """The blueprints that may grow at ``report``'s slot: width ones where the block
        before it widens (`_widens`), depth ones elsewhere (none with growth ``width``)."""
        if self._widens(report, slots):
            return self.width
        return () if self.config.growth == "width" else self.allowed

    def _widens(self, report: SlotReport, slots: Sequence[SlotReport]) -> bool:
        """Whether the block before ``report``'s slot grows wider rather than deeper."""
        growth = self.config.growth
        mean = mean_width_units(slots)
        if growth == "depth" or report.width_units is None or not self.width or mean is None:
            return False
        return growth == "width" or report.width_units <= self.config.width_bottleneck * mean

    def _largest_fitting(
        self, report: SlotReport, names: Sequence[str], params_left: float, flops_left: float
    ) -> str | None:
        """The unpenalised blueprint of ``names`` with most parameters that fits the budget."""
        fitting = [
            name
            for name in names
            if name in report.costs
            and report.costs[name].params <= params_left
            and report.costs[name].train_flops <= flops_left
            and self.penalties.get(name, 0.0) < self.config.penalty_threshold
            and (report.slot_id, name) not in self.stalled
        ]
        return max(fitting, key=lambda name: report.costs[name].params, default=None)

    @staticmethod
    def _cost(report: SlotReport) -> SeedCost:
        """What the seed in an occupied slot costs (its blueprint's cost there)."""
        name = report.state.blueprint_id
        if name is not None and name in report.costs:
            return report.costs[name]
        return SeedCost(report.seed_params, 0.0, 0.0)

    # ------------------------------------------------------------ cull penalties

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
            "stalled": sorted([slot, name] for slot, name in self.stalled),
            "seen": {sid: int(stage) for sid, stage in self._seen.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.penalties = dict(state["penalties"])
        self.stalled = {(str(slot), str(name)) for slot, name in state.get("stalled", [])}
        self._seen = {sid: SeedStage(stage) for sid, stage in state["seen"].items()}

    @staticmethod
    def _op(op: LifecycleOp, report: SlotReport, reason: str) -> Decision:
        return Decision(FactoredAction(op, report.slot_id), reason)


def build(context: ControllerContext) -> HeuristicController:
    """The heuristic of a run: the blueprints that fit its host, its ``heuristic``
    settings, its gates. ValueError when the settings name blueprints the host lacks."""
    config = context.config
    return HeuristicController(
        context.blueprints, config.heuristic, config.episode.lifecycle, context.width_blueprints
    )
