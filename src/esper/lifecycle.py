"""The seed lifecycle: stages, the transition table, quality gates and legal operations.

Pure Python, no torch. Everything that decides *whether* a seed may move lives here;
the slot (`esper.model.slot`) holds one `SeedState` and asks. Both controllers ask
`legal_ops` what they may do, so the heuristic and the PPO action masks cannot disagree.

A seed's life::

    DORMANT -germinate-> GERMINATED -G1-> TRAINING -G2-> BLENDING -G3-> PROBATIONARY
    PROBATIONARY -fossilize (G5)-> FOSSILIZED
      any live stage (GERMINATED .. PROBATIONARY) -cull or probation failure-> CULLED
    CULLED -> EMBARGOED -(embargo_epochs)-> RESETTING -> DORMANT

Units: accuracies and contributions are percentage points (0–100 scale); epochs count
whole training epochs spent in a stage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum, StrEnum

__all__ = [
    "ACTIVE_STAGES",
    "LIVE_STAGES",
    "OCCUPIED_STAGES",
    "TRANSITIONS",
    "BlendAlgorithm",
    "FactoredAction",
    "Gate",
    "GateResult",
    "LifecycleConfig",
    "LifecycleError",
    "LifecycleOp",
    "SeedStage",
    "SeedState",
    "StepOutcome",
    "alpha_for_step",
    "can_transition",
    "gate_end_blending",
    "gate_fossilize",
    "gate_germinate",
    "gate_start_blending",
    "gate_start_training",
    "legal_ops",
    "probation_verdict",
    "seed_blends",
    "step_epoch",
    "transition",
]


class SeedStage(IntEnum):
    """Where a slot is in the seed lifecycle. Values are contiguous and stable."""

    DORMANT = 0
    GERMINATED = 1
    TRAINING = 2
    BLENDING = 3
    PROBATIONARY = 4
    FOSSILIZED = 5
    CULLED = 6
    EMBARGOED = 7
    RESETTING = 8


# The contract. Anything not listed here is refused by `transition`.
TRANSITIONS: Mapping[SeedStage, frozenset[SeedStage]] = {
    SeedStage.DORMANT: frozenset({SeedStage.GERMINATED}),
    SeedStage.GERMINATED: frozenset({SeedStage.TRAINING, SeedStage.CULLED}),
    SeedStage.TRAINING: frozenset({SeedStage.BLENDING, SeedStage.CULLED}),
    SeedStage.BLENDING: frozenset({SeedStage.PROBATIONARY, SeedStage.CULLED}),
    SeedStage.PROBATIONARY: frozenset({SeedStage.FOSSILIZED, SeedStage.CULLED}),
    SeedStage.FOSSILIZED: frozenset(),
    SeedStage.CULLED: frozenset({SeedStage.EMBARGOED}),
    SeedStage.EMBARGOED: frozenset({SeedStage.RESETTING}),
    SeedStage.RESETTING: frozenset({SeedStage.DORMANT}),
}

#: Stages in which the seed module exists and runs in the forward pass.
ACTIVE_STAGES = frozenset(
    {SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.PROBATIONARY, SeedStage.FOSSILIZED}
)
#: Stages in which a seed is alive but not yet kept: it can still be culled.
LIVE_STAGES = frozenset(
    {SeedStage.GERMINATED, SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.PROBATIONARY}
)
#: Stages in which the slot holds a seed module (live or fossil).
OCCUPIED_STAGES = LIVE_STAGES | {SeedStage.FOSSILIZED}


class LifecycleOp(IntEnum):
    """What a controller can ask of one slot in one epoch."""

    WAIT = 0
    GERMINATE = 1
    FOSSILIZE = 2
    CULL = 3


class BlendAlgorithm(StrEnum):
    """How alpha rises during BLENDING (see `alpha_for_step`)."""

    LINEAR = "linear"
    SIGMOID = "sigmoid"
    GATED = "gated"


def seed_blends(width: bool) -> frozenset[BlendAlgorithm]:
    """The blends a seed may use: every one for a depth seed; linear and sigmoid for a
    width seed (its units widen a layer, and a gate reads a depth seed's features)."""
    every = frozenset(BlendAlgorithm)
    return every - {BlendAlgorithm.GATED} if width else every


class Gate(StrEnum):
    """Quality gates, named by the transition they guard."""

    G0_GERMINATE = "G0"
    G1_START_TRAINING = "G1"
    G2_START_BLENDING = "G2"
    G3_END_BLENDING = "G3"
    G5_FOSSILIZE = "G5"


class LifecycleError(ValueError):
    """A transition or operation the lifecycle refuses; the message says why."""


@dataclass(frozen=True)
class FactoredAction:
    """One controller decision: an op on a slot, with what to grow when germinating.

    ``blueprint`` and ``blend`` matter only for GERMINATE; ``slot`` is ignored for WAIT.
    """

    op: LifecycleOp
    slot: str | None = None
    blueprint: str | None = None
    blend: BlendAlgorithm = BlendAlgorithm.LINEAR

    @classmethod
    def wait(cls) -> FactoredAction:
        return cls(LifecycleOp.WAIT)


@dataclass(frozen=True)
class LifecycleConfig:
    """Thresholds of the quality gates and timers. Accuracies in percentage points."""

    min_training_epochs: int = 1
    """G2: epochs a seed must spend in TRAINING before it may start blending. One: with
    its change capped (``incubation_radius``), longer incubation only delays a seed's use
    while the learning rate is highest (see the README's growth results)."""
    min_gradient_ratio: float = 0.10
    """G2: the seed's per-parameter gradient norm relative to the host's, averaged over
    the last training epoch, must reach this (the seed is really learning)."""
    incubation_radius: float = 0.25
    """In TRAINING a seed learns as if fully blended while the host never sees it, so
    no loss feedback limits how far it pushes the features: measured on the CIFAR host,
    a seed's change grew to 300 times the features in 3 epochs and blending it in then
    wrecked training. It learns through its change capped at this fraction of the
    features' norm instead (a trust region; 0 turns the cap off)."""
    blending_steps: int = 5
    """Epochs the alpha ramp takes to go from its first value to 1."""
    min_blending_epochs: int = 3
    """G3: epochs a seed must spend in BLENDING before probation."""
    alpha_complete: float = 0.95
    """G3: alpha the seed must have trained at before probation."""
    min_fossilize_contribution: float = 1.0
    """G5: counterfactual contribution (accuracy with the seed minus accuracy with its
    alpha forced to 0, in pp) needed to fossilize: the smallest gain worth keeping..."""
    fossilize_z: float = 2.5
    """...and G5 also needs the contribution to be this many paired standard errors above
    0 (McNemar's z on the validation samples that flip), so noise is never kept. 2.5
    rather than 2 because the seed is judged again every epoch of its probation."""
    cull_z: float = 2.5
    """A seed on probation whose contribution is this many paired standard errors below 0
    is culled by the lifecycle itself (it measurably hurts)."""
    max_probation_epochs: int = 5
    """A seed still in PROBATIONARY after this many epochs is culled."""
    embargo_epochs: int = 3
    """Epochs a slot stays EMBARGOED after a cull before it can take a new seed."""

    def __post_init__(self) -> None:
        for name in (
            "min_training_epochs",
            "blending_steps",
            "min_blending_epochs",
            "max_probation_epochs",
            "embargo_epochs",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"LifecycleConfig.{name} must be >= 0")
        if self.blending_steps < 1:
            raise ValueError("LifecycleConfig.blending_steps must be >= 1")
        if not self.min_fossilize_contribution >= 0.0:
            raise ValueError("LifecycleConfig.min_fossilize_contribution must be >= 0")
        for name in ("fossilize_z", "cull_z"):
            # Positive, so that "significantly above 0" and "significantly below 0" can
            # never both hold: a seed is never fossilizable and due for a cull at once.
            if not 0.0 < getattr(self, name) < math.inf:
                raise ValueError(f"LifecycleConfig.{name} must be a positive number")
        if not 0.0 <= self.incubation_radius < math.inf:
            raise ValueError("LifecycleConfig.incubation_radius must be >= 0 and finite")
        if self.min_gradient_ratio < 0.0:
            raise ValueError("LifecycleConfig.min_gradient_ratio must be >= 0")
        if not 0.0 < self.alpha_complete <= 1.0:
            raise ValueError("LifecycleConfig.alpha_complete must be in (0, 1]")


@dataclass(frozen=True)
class SeedState:
    """Lifecycle record of one slot: stage, clocks and the latest measurements.

    ``gradient_ratio``, ``contribution`` and ``contribution_se`` are written by the
    episode every epoch (`with_measurements`); the gates read them. ``None`` means not
    measured yet. ``contribution_se`` is the paired standard error of ``contribution``
    (pp), so ``contribution / contribution_se`` is its z (`contribution_z`).
    """

    stage: SeedStage = SeedStage.DORMANT
    seed_id: str | None = None
    blueprint_id: str | None = None
    blend: BlendAlgorithm = BlendAlgorithm.LINEAR
    epochs_in_stage: int = 0
    epochs_total: int = 0
    blend_step: int = 0
    gradient_ratio: float | None = None
    contribution: float | None = None
    contribution_se: float | None = None
    history: tuple[tuple[SeedStage, int], ...] = field(default_factory=tuple)
    """(stage left, epochs spent in it), oldest first."""

    @property
    def occupied(self) -> bool:
        """The slot holds a seed module (live or fossilized)."""
        return self.stage in OCCUPIED_STAGES

    @property
    def live(self) -> bool:
        """A seed that is alive and can still be culled."""
        return self.stage in LIVE_STAGES

    @property
    def contribution_z(self) -> float | None:
        """Contribution in paired standard errors (None when not measured).

        A contribution of exactly 0 with no flipped sample (standard error 0) has z 0."""
        c, se = self.contribution, self.contribution_se
        if c is None:
            return None
        if se is None or se <= 0.0:
            return 0.0 if c == 0.0 else math.copysign(math.inf, c)
        return c / se

    def with_measurements(
        self,
        *,
        gradient_ratio: float | None = None,
        contribution: float | None = None,
        contribution_se: float | None = None,
    ) -> SeedState:
        """Record this epoch's measurements; a ``None`` argument keeps the old value.

        A new ``contribution`` without a standard error clears the old one (a value
        measured without its error bar is not judged against the old error bar)."""
        if contribution is None:
            contribution, contribution_se = self.contribution, self.contribution_se
        return replace(
            self,
            gradient_ratio=self.gradient_ratio if gradient_ratio is None else gradient_ratio,
            contribution=contribution,
            contribution_se=contribution_se,
        )

    def to_dict(self) -> dict[str, object]:
        """Primitive-only form, safe for ``torch.load(weights_only=True)``."""
        return {
            "stage": int(self.stage),
            "seed_id": self.seed_id,
            "blueprint_id": self.blueprint_id,
            "blend": self.blend.value,
            "epochs_in_stage": self.epochs_in_stage,
            "epochs_total": self.epochs_total,
            "blend_step": self.blend_step,
            "gradient_ratio": self.gradient_ratio,
            "contribution": self.contribution,
            "contribution_se": self.contribution_se,
            "history": [[int(s), n] for s, n in self.history],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> SeedState:
        def opt_float(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)  # type: ignore[arg-type]

        def opt_str(key: str) -> str | None:
            value = data.get(key)
            return None if value is None else str(value)

        history = data.get("history", [])
        assert isinstance(history, list)
        return cls(
            stage=SeedStage(int(data["stage"])),  # type: ignore[call-overload]
            seed_id=opt_str("seed_id"),
            blueprint_id=opt_str("blueprint_id"),
            blend=BlendAlgorithm(str(data.get("blend", "linear"))),
            epochs_in_stage=int(data["epochs_in_stage"]),  # type: ignore[call-overload]
            epochs_total=int(data["epochs_total"]),  # type: ignore[call-overload]
            blend_step=int(data["blend_step"]),  # type: ignore[call-overload]
            gradient_ratio=opt_float("gradient_ratio"),
            contribution=opt_float("contribution"),
            contribution_se=opt_float("contribution_se"),
            history=tuple((SeedStage(int(s)), int(n)) for s, n in history),
        )


@dataclass(frozen=True)
class GateResult:
    """Outcome of one quality gate: which checks passed and which failed, in words."""

    gate: Gate
    passed: bool
    checks_passed: tuple[str, ...] = ()
    checks_failed: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        return "; ".join(self.checks_failed) if self.checks_failed else "all checks passed"


def _gate(gate: Gate, checks: list[tuple[bool, str]]) -> GateResult:
    passed = tuple(text for ok, text in checks if ok)
    failed = tuple(text for ok, text in checks if not ok)
    return GateResult(gate, not failed, passed, failed)


# ---------------------------------------------------------------- transitions


def can_transition(current: SeedStage, target: SeedStage) -> str | None:
    """None if the table allows ``current -> target``, else the reason it does not."""
    if target in TRANSITIONS[current]:
        return None
    allowed = ", ".join(s.name for s in sorted(TRANSITIONS[current])) or "nothing"
    return (
        f"{current.name} -> {target.name} is not a lifecycle transition "
        f"({current.name} may go to {allowed})"
    )


def transition(state: SeedState, target: SeedStage) -> SeedState:
    """Move ``state`` to ``target``, or raise `LifecycleError` with the reason.

    Resets the per-stage clock and appends the stage left to the history. Leaving the
    lifecycle for DORMANT (after RESETTING) clears the seed's identity and measurements.
    """
    target = SeedStage(target)
    reason = can_transition(state.stage, target)
    if reason is not None:
        raise LifecycleError(reason)
    history = (*state.history, (state.stage, state.epochs_in_stage))
    if target is SeedStage.DORMANT:
        return SeedState(history=history)
    return replace(state, stage=target, epochs_in_stage=0, history=history)


# ---------------------------------------------------------------- gates


def gate_germinate(state: SeedState, seed_id: str, blueprint_id: str) -> GateResult:
    """G0: ids present, the slot is empty and not embargoed."""
    return _gate(
        Gate.G0_GERMINATE,
        [
            (bool(seed_id), "seed id is present"),
            (bool(blueprint_id), "blueprint id is present"),
            (
                state.stage is SeedStage.DORMANT,
                f"slot is empty (stage {state.stage.name})",
            ),
        ],
    )


def gate_start_training(state: SeedState) -> GateResult:
    """G1: the seed is GERMINATED."""
    return _gate(
        Gate.G1_START_TRAINING,
        [(state.stage is SeedStage.GERMINATED, f"stage is GERMINATED (is {state.stage.name})")],
    )


def gate_start_blending(state: SeedState, config: LifecycleConfig) -> GateResult:
    """G2: trained long enough in isolation, and its gradients show it is learning."""
    ratio = state.gradient_ratio
    return _gate(
        Gate.G2_START_BLENDING,
        [
            (state.stage is SeedStage.TRAINING, f"stage is TRAINING (is {state.stage.name})"),
            (
                state.epochs_in_stage >= config.min_training_epochs,
                f"trained {state.epochs_in_stage}/{config.min_training_epochs} epochs",
            ),
            (
                ratio is not None and ratio >= config.min_gradient_ratio,
                f"gradient ratio {_fmt(ratio)} >= {config.min_gradient_ratio}",
            ),
        ],
    )


def gate_end_blending(state: SeedState, config: LifecycleConfig) -> GateResult:
    """G3: alpha has reached (nearly) 1 and the seed blended long enough."""
    alpha = alpha_for_step(state.blend, state.blend_step, config.blending_steps)
    return _gate(
        Gate.G3_END_BLENDING,
        [
            (state.stage is SeedStage.BLENDING, f"stage is BLENDING (is {state.stage.name})"),
            (alpha >= config.alpha_complete, f"alpha {alpha:.3f} >= {config.alpha_complete}"),
            (
                state.epochs_in_stage >= config.min_blending_epochs,
                f"blended {state.epochs_in_stage}/{config.min_blending_epochs} epochs",
            ),
        ],
    )


def gate_fossilize(state: SeedState, config: LifecycleConfig) -> GateResult:
    """G5: on probation, with a measured contribution at or above the threshold and
    significantly above 0 (``fossilize_z`` paired standard errors)."""
    c, z = state.contribution, state.contribution_z
    return _gate(
        Gate.G5_FOSSILIZE,
        [
            (
                state.stage is SeedStage.PROBATIONARY,
                f"stage is PROBATIONARY (is {state.stage.name})",
            ),
            (
                c is not None and c >= config.min_fossilize_contribution,
                f"contribution {_fmt(c)} pp >= {config.min_fossilize_contribution} pp",
            ),
            (
                z is not None and z >= config.fossilize_z,
                f"contribution z {_fmt(z)} >= {config.fossilize_z}",
            ),
        ],
    )


def probation_verdict(state: SeedState, config: LifecycleConfig) -> str | None:
    """Why a seed on probation must be culled now, or None if it may stay.

    A seed is culled when its contribution is significantly negative (``cull_z``
    paired standard errors below 0) or when probation times out; a contribution within
    noise of 0 is not a verdict."""
    if state.stage is not SeedStage.PROBATIONARY:
        return None
    z = state.contribution_z
    if state.contribution is not None and z is not None and z <= -config.cull_z:
        return f"harmful: counterfactual {state.contribution:+.2f} pp (z {z:+.1f})"
    if state.epochs_in_stage >= config.max_probation_epochs:
        return f"probation timeout ({state.epochs_in_stage} epochs)"
    return None


def _fmt(value: float | None) -> str:
    return "unmeasured" if value is None else f"{value:.3f}"


# ---------------------------------------------------------------- alpha


def alpha_for_step(blend: BlendAlgorithm, step: int, total_steps: int) -> float:
    """Scalar alpha (ramp progress) after ``step`` of ``total_steps`` blending steps.

    Linear rises in equal steps; sigmoid is slow, fast, slow, centred on the ramp's
    middle; gated uses the linear progress (its per-sample gate modulates it in the
    forward pass). Every ramp reaches exactly 1.0 at ``step >= total_steps``.
    """
    if step <= 0:
        return 0.0
    if step >= total_steps:
        return 1.0
    progress = step / total_steps
    if blend is BlendAlgorithm.SIGMOID:
        return 1.0 / (1.0 + math.exp(-12.0 * (progress - 0.5)))
    return progress


# ---------------------------------------------------------------- the epoch clock


@dataclass(frozen=True)
class StepOutcome:
    """What one epoch tick did to a slot."""

    state: SeedState
    transitions: tuple[tuple[SeedStage, SeedStage], ...] = ()
    gate: GateResult | None = None
    cull_reason: str | None = None
    """Set when the tick culled the seed (probation failure)."""


def step_epoch(state: SeedState, config: LifecycleConfig) -> StepOutcome:
    """Advance one slot's clock by one trained epoch and apply mechanical transitions.

    Called once per epoch after the measurements for that epoch were recorded. At most
    one stage transition happens per tick, so every stage a seed passes through is
    observable for at least one epoch (GERMINATED is left on the first tick).
    """
    counted = replace(
        state,
        epochs_in_stage=state.epochs_in_stage + 1,
        epochs_total=state.epochs_total + (1 if state.occupied else 0),
    )
    stage = counted.stage
    if stage is SeedStage.GERMINATED:
        return _advance(counted, SeedStage.TRAINING, gate_start_training(counted))
    if stage is SeedStage.TRAINING:
        return _advance(counted, SeedStage.BLENDING, gate_start_blending(counted, config))
    if stage is SeedStage.BLENDING:
        result = gate_end_blending(counted, config)
        if result.passed:
            return _advance(counted, SeedStage.PROBATIONARY, result)
        ramped = replace(counted, blend_step=min(counted.blend_step + 1, config.blending_steps))
        return StepOutcome(ramped, gate=result)
    if stage is SeedStage.PROBATIONARY:
        reason = probation_verdict(counted, config)
        if reason is None:
            return StepOutcome(counted)
        culled = transition(counted, SeedStage.CULLED)
        return StepOutcome(culled, ((stage, SeedStage.CULLED),), cull_reason=reason)
    if stage is SeedStage.CULLED:
        return _moved(counted, SeedStage.EMBARGOED)
    if stage is SeedStage.EMBARGOED:
        if counted.epochs_in_stage >= config.embargo_epochs:
            return _moved(counted, SeedStage.RESETTING)
        return StepOutcome(counted)
    if stage is SeedStage.RESETTING:
        return _moved(counted, SeedStage.DORMANT)
    return StepOutcome(counted)  # DORMANT, FOSSILIZED: nothing moves


def _advance(state: SeedState, target: SeedStage, result: GateResult) -> StepOutcome:
    if not result.passed:
        return StepOutcome(state, gate=result)
    moved = transition(state, target)
    if target is SeedStage.BLENDING:
        # The first blending epoch already trains at the ramp's first step, not at 0.
        moved = replace(moved, blend_step=1)
    return StepOutcome(moved, ((state.stage, target),), gate=result)


def _moved(state: SeedState, target: SeedStage) -> StepOutcome:
    return StepOutcome(transition(state, target), ((state.stage, target),))


# ---------------------------------------------------------------- legal ops


def legal_ops(state: SeedState, *, seed_budget_left: bool = True) -> frozenset[LifecycleOp]:
    """The ops a controller may choose for this slot now.

    GERMINATE needs an empty, non-embargoed slot and room in the seed budget; FOSSILIZE
    needs a seed on probation (G5 still decides at execution); CULL needs a live seed.
    WAIT is always legal.
    """
    ops = {LifecycleOp.WAIT}
    if state.stage is SeedStage.DORMANT and seed_budget_left:
        ops.add(LifecycleOp.GERMINATE)
    if state.stage is SeedStage.PROBATIONARY:
        ops.add(LifecycleOp.FOSSILIZE)
    if state.stage in LIVE_STAGES:
        ops.add(LifecycleOp.CULL)
    return frozenset(ops)
