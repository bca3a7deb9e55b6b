"""Property tests for the seed lifecycle (`esper.lifecycle`).

A hypothesis state machine drives one slot's `SeedState` through random controller ops
(germinate, cull, fossilize), random measurements, random attempted transitions and
epoch ticks under a random (valid) `LifecycleConfig`, and checks the lifecycle contract
after every step. Plain example tests below pin the timings of the default config.

The expected sets and table are spelled out here rather than imported, so a silent edit
of the module's constants shows up as a failure.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from esper.contracts import Contribution
from esper.lifecycle import (
    TRANSITIONS,
    BlendAlgorithm,
    LifecycleConfig,
    LifecycleError,
    LifecycleOp,
    SeedStage,
    SeedState,
    StepOutcome,
    alpha_for_step,
    gate_end_blending,
    gate_fossilize,
    gate_germinate,
    gate_start_blending,
    gate_start_training,
    legal_ops,
    step_epoch,
    transition,
)

S = SeedStage

EXPECTED_TABLE: dict[SeedStage, frozenset[SeedStage]] = {
    S.DORMANT: frozenset({S.GERMINATED}),
    S.GERMINATED: frozenset({S.TRAINING, S.CULLED}),
    S.TRAINING: frozenset({S.BLENDING, S.CULLED}),
    S.BLENDING: frozenset({S.PROBATIONARY, S.CULLED}),
    S.PROBATIONARY: frozenset({S.FOSSILIZED, S.CULLED}),
    S.FOSSILIZED: frozenset(),
    S.CULLED: frozenset({S.EMBARGOED}),
    S.EMBARGOED: frozenset({S.RESETTING}),
    S.RESETTING: frozenset({S.DORMANT}),
}
LIVE = frozenset({S.GERMINATED, S.TRAINING, S.BLENDING, S.PROBATIONARY})
OCCUPIED = LIVE | {S.FOSSILIZED}
RECOVERING = frozenset({S.CULLED, S.EMBARGOED, S.RESETTING})
PRE_BLEND = frozenset({S.DORMANT, S.GERMINATED, S.TRAINING})


# ---------------------------------------------------------------- strategies

configs = st.builds(
    LifecycleConfig,
    min_training_epochs=st.integers(0, 4),
    min_gradient_ratio=st.floats(0.0, 2.0),
    blending_steps=st.integers(1, 6),
    min_blending_epochs=st.integers(0, 4),
    alpha_complete=st.floats(0.0, 1.0, exclude_min=True),
    min_fossilize_contribution=st.floats(0.0, 5.0),
    fossilize_z=st.floats(0.5, 5.0),
    cull_z=st.floats(0.5, 5.0),
    max_probation_epochs=st.integers(0, 5),
    embargo_epochs=st.integers(0, 4),
)


def gradient_ratios(config: LifecycleConfig) -> st.SearchStrategy[float | None]:
    thr = config.min_gradient_ratio
    return st.none() | st.floats(-1.0, 5.0) | st.sampled_from([thr, math.nextafter(thr, -math.inf)])


def contributions(config: LifecycleConfig) -> st.SearchStrategy[float | None]:
    thr = config.min_fossilize_contribution
    near = [0.0, -0.0, thr, math.nextafter(thr, -math.inf), math.nextafter(0.0, 1.0)]
    # Biased towards positive values so that probations do not all end in a cull.
    return st.none() | st.floats(-20.0, 20.0) | st.floats(0.0, 10.0) | st.sampled_from(near)


def standard_errors() -> st.SearchStrategy[float | None]:
    """Paired standard errors (pp), including 0 (nothing flipped) and unknown."""
    return st.none() | st.floats(0.0, 5.0) | st.sampled_from([0.0, 0.25, 1.0])


seed_states = st.builds(
    SeedState,
    stage=st.sampled_from(SeedStage),
    seed_id=st.none() | st.text(max_size=4),
    blueprint_id=st.none() | st.text(max_size=4),
    blend=st.sampled_from(BlendAlgorithm),
    epochs_in_stage=st.integers(0, 10),
    epochs_total=st.integers(0, 50),
    blend_step=st.integers(0, 10),
    gradient_ratio=st.none() | st.floats(allow_nan=False),
    contribution=st.none() | st.floats(allow_nan=False),
    contribution_se=st.none() | st.floats(0.0, 1e6),
    history=st.lists(st.tuples(st.sampled_from(SeedStage), st.integers(0, 10)), max_size=5).map(
        tuple
    ),
)


# ---------------------------------------------------------------- shared checks


def check_roundtrip(state: SeedState) -> None:
    data = state.to_dict()
    assert SeedState.from_dict(data) == state
    # Primitive-only, so it also survives JSON (and torch.load(weights_only=True)).
    assert SeedState.from_dict(json.loads(json.dumps(data))) == state
    assert type(data["stage"]) is int


def check_legal_ops(state: SeedState) -> None:
    for budget in (True, False):
        ops = legal_ops(state, seed_budget_left=budget)
        assert LifecycleOp.WAIT in ops
        assert (LifecycleOp.GERMINATE in ops) == (budget and state.stage is S.DORMANT)
        assert (LifecycleOp.CULL in ops) == (state.stage in LIVE)
        assert (LifecycleOp.FOSSILIZE in ops) == (state.stage is S.PROBATIONARY)


def check_every_transition(state: SeedState) -> None:
    """Table transitions succeed (and do what they say); all others raise, naming both."""
    snapshot = replace(state)
    for target in SeedStage:
        if target in TRANSITIONS[state.stage]:
            moved = transition(state, target)
            assert moved.stage is target
            assert moved.epochs_in_stage == 0
            assert moved.history == (*state.history, (state.stage, state.epochs_in_stage))
            if target is S.DORMANT:
                assert moved == SeedState(history=moved.history)
            else:
                assert replace(moved, stage=state.stage, epochs_in_stage=0) == replace(
                    state, epochs_in_stage=0, history=moved.history
                )
        else:
            # try/except rather than pytest.raises: this runs after every machine step.
            try:
                transition(state, target)
            except LifecycleError as err:
                message = str(err)
            else:
                raise AssertionError(f"{state.stage.name} -> {target.name} was allowed")
            assert state.stage.name in message and target.name in message, message
        assert state == snapshot


def check_gates(state: SeedState, config: LifecycleConfig) -> None:
    """Each gate passes exactly when its documented conditions hold."""
    ratio, contrib = state.gradient_ratio, state.contribution
    g1 = gate_start_training(state)
    assert g1.passed == (state.stage is S.GERMINATED)
    g2 = gate_start_blending(state, config)
    assert g2.passed == (
        state.stage is S.TRAINING
        and state.epochs_in_stage >= config.min_training_epochs
        and ratio is not None
        and ratio >= config.min_gradient_ratio
    )
    g3 = gate_end_blending(state, config)
    alpha = alpha_for_step(state.blend, state.blend_step, config.blending_steps)
    assert g3.passed == (
        state.stage is S.BLENDING
        and alpha >= config.alpha_complete
        and state.epochs_in_stage >= config.min_blending_epochs
    )
    g5 = gate_fossilize(state, config)
    z = state.contribution_z
    assert g5.passed == (
        state.stage is S.PROBATIONARY
        and contrib is not None
        and contrib >= config.min_fossilize_contribution
        and z is not None
        and z >= config.fossilize_z
    )
    for result in (g1, g2, g3, g5):
        assert result.passed == (not result.checks_failed)
        assert (result.reason == "all checks passed") == result.passed


def expected_recovery_stage(ticks_since_cull: int, embargo_epochs: int) -> SeedStage:
    """CULLED -> EMBARGOED on the next tick; EMBARGOED -> RESETTING once its per-stage
    clock reaches embargo_epochs (but at least one tick, as every stage is observable);
    RESETTING -> DORMANT on the next tick. Total: 2 + max(1, embargo_epochs) ticks."""
    held = max(1, embargo_epochs)
    if ticks_since_cull == 0:
        return S.CULLED
    if ticks_since_cull < 1 + held:
        return S.EMBARGOED
    if ticks_since_cull == 1 + held:
        return S.RESETTING
    assert ticks_since_cull == 2 + held, "a culled slot took too long to come back"
    return S.DORMANT


# ---------------------------------------------------------------- the state machine


class LifecycleMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.config = LifecycleConfig()
        self.state = SeedState()
        self.expected_history: list[tuple[SeedStage, int]] = []
        self.fossilized = False
        self.ticks_since_cull: int | None = None
        self.seeds = 0
        self.ratios = gradient_ratios(self.config)
        self.contributions = contributions(self.config)

    @initialize(config=configs)
    def choose_config(self, config: LifecycleConfig) -> None:
        self.config = config
        self.ratios = gradient_ratios(config)
        self.contributions = contributions(config)

    # -- ops ---------------------------------------------------------------

    @rule(
        seed_id=st.sampled_from(["", "seed-a", "seed-b"]),
        blueprint=st.sampled_from(["", "conv", "attention"]),
        blend=st.sampled_from(BlendAlgorithm),
    )
    def germinate(self, seed_id: str, blueprint: str, blend: BlendAlgorithm) -> None:
        before = self.state
        gate = gate_germinate(before, seed_id, blueprint)
        assert gate.passed == (before.stage is S.DORMANT and bool(seed_id) and bool(blueprint))
        if not gate.passed:
            assert gate.checks_failed
            if before.stage is not S.DORMANT:
                with pytest.raises(LifecycleError):
                    transition(before, S.GERMINATED)
            return
        moved = transition(before, S.GERMINATED)
        self.state = replace(moved, seed_id=seed_id, blueprint_id=blueprint, blend=blend)
        self.expected_history.append((before.stage, before.epochs_in_stage))
        assert self.state.epochs_in_stage == 0
        assert self.state.epochs_total == 0
        assert self.state.blend_step == 0
        self.seeds += 1
        event(f"germinated seed #{min(self.seeds, 3)}")

    @rule()
    def cull(self) -> None:
        before = self.state
        if before.stage in LIVE:
            self.state = transition(before, S.CULLED)
            self.expected_history.append((before.stage, before.epochs_in_stage))
            self.ticks_since_cull = 0
            event(f"culled from {before.stage.name}")
        else:
            with pytest.raises(LifecycleError):
                transition(before, S.CULLED)
            assert self.state == before

    @rule()
    def fossilize(self) -> None:
        before = self.state
        gate = gate_fossilize(before, self.config)
        if gate.passed:
            c, z = before.contribution, before.contribution_z
            assert before.stage is S.PROBATIONARY
            assert c is not None and c >= self.config.min_fossilize_contribution
            assert z is not None and z >= self.config.fossilize_z
            self.state = transition(before, S.FOSSILIZED)
            self.expected_history.append((before.stage, before.epochs_in_stage))
            self.fossilized = True
            event("fossilized")
        elif before.stage is not S.PROBATIONARY:
            with pytest.raises(LifecycleError):
                transition(before, S.FOSSILIZED)

    @rule(data=st.data())
    def measure(self, data: st.DataObject) -> None:
        self._measure(data)

    @rule(goal=st.sampled_from(SeedStage))
    def attempt_transition(self, goal: SeedStage) -> None:
        """Any target: table ones succeed, others raise and leave the state alone.

        A successful bypass (e.g. TRAINING -> BLENDING without G2) is checked but not
        adopted: the machine's own path only moves through the gated ops and ticks."""
        before = self.state
        snapshot = before.to_dict()
        if goal in EXPECTED_TABLE[before.stage]:
            assert transition(before, goal).stage is goal
        else:
            with pytest.raises(LifecycleError, match=before.stage.name):
                transition(before, goal)
        assert self.state is before and before.to_dict() == snapshot

    # -- the clock -----------------------------------------------------------

    @rule(n=st.integers(1, 4))
    def tick(self, n: int) -> None:
        for _ in range(n):
            self._tick()

    @rule(data=st.data(), n=st.integers(1, 4))
    def measure_then_tick(self, data: st.DataObject, n: int) -> None:
        """The training loop's order: record each epoch's measurements, then tick."""
        for _ in range(n):
            self._measure(data)
            self._tick()

    def _measure(self, data: st.DataObject) -> None:
        before = self.state
        ratio = data.draw(self.ratios, label="gradient_ratio")
        contrib = data.draw(self.contributions, label="contribution")
        se = data.draw(standard_errors(), label="contribution_se")
        after = before.with_measurements(
            gradient_ratio=ratio, contribution=contrib, contribution_se=se
        )
        assert after.gradient_ratio == (before.gradient_ratio if ratio is None else ratio)
        assert after.contribution == (before.contribution if contrib is None else contrib)
        assert after.contribution_se == (before.contribution_se if contrib is None else se)
        assert after.stage is before.stage and after.history == before.history
        self.state = after

    def _tick(self) -> None:
        cfg = self.config
        before = self.state
        out: StepOutcome = step_epoch(before, cfg)
        after = out.state
        clock = before.epochs_in_stage + 1  # the per-stage clock the tick judged on

        assert len(out.transitions) <= 1
        moved = bool(out.transitions)
        if moved:
            ((src, dst),) = out.transitions
            assert src is before.stage and dst is after.stage
            assert dst in TRANSITIONS[src] and dst in EXPECTED_TABLE[src]
            assert dst is not S.FOSSILIZED, "ticks never fossilize; only the controller does"
            assert after.epochs_in_stage == 0
            assert after.history == (*before.history, (src, clock))
            self.expected_history.append((src, clock))
            event(f"tick {src.name} -> {dst.name}")
        else:
            assert after.stage is before.stage
            assert after.epochs_in_stage == clock
            assert after.history == before.history

        if moved and after.stage is S.DORMANT:
            assert after == SeedState(history=after.history)
        else:
            assert after.epochs_total == before.epochs_total + (before.stage in OCCUPIED)
            assert after.seed_id == before.seed_id
            assert after.gradient_ratio == before.gradient_ratio
            assert after.contribution == before.contribution
            assert after.contribution_se == before.contribution_se

        stage = before.stage
        if stage in (S.DORMANT, S.FOSSILIZED):
            assert not moved
        if stage is S.GERMINATED:
            assert moved and after.stage is S.TRAINING
        if stage is S.TRAINING:
            # G2 judges the clock including this epoch and the last measured ratio.
            ratio = before.gradient_ratio
            g2_ok = (
                clock >= cfg.min_training_epochs
                and ratio is not None
                and ratio >= cfg.min_gradient_ratio
            )
            assert moved == g2_ok
            assert out.gate is not None and out.gate.passed == g2_ok
            if moved:
                assert after.stage is S.BLENDING and after.blend_step == 1
        if stage is S.BLENDING:
            alpha = alpha_for_step(before.blend, before.blend_step, cfg.blending_steps)
            g3_ok = alpha >= cfg.alpha_complete and clock >= cfg.min_blending_epochs
            assert moved == g3_ok
            assert out.gate is not None and out.gate.passed == g3_ok
            if moved:
                assert after.stage is S.PROBATIONARY
            else:
                assert after.blend_step == min(before.blend_step + 1, cfg.blending_steps)
        if stage is S.PROBATIONARY:
            z = before.contribution_z
            harmful = z is not None and z <= -cfg.cull_z
            must_cull = harmful or clock >= cfg.max_probation_epochs
            assert moved == must_cull
            assert (out.cull_reason is not None) == must_cull
            if harmful:
                assert after.stage is S.CULLED
                assert out.cull_reason is not None and "harmful" in out.cull_reason
            if must_cull:
                assert after.stage is S.CULLED
        else:
            assert out.cull_reason is None

        self.state = after
        if self.ticks_since_cull is not None:
            self.ticks_since_cull += 1
            expected = expected_recovery_stage(self.ticks_since_cull, cfg.embargo_epochs)
            assert after.stage is expected, (self.ticks_since_cull, after.stage, cfg)
            if expected is S.DORMANT:
                held = max(1, cfg.embargo_epochs)
                assert after.history[-3:] == ((S.CULLED, 1), (S.EMBARGOED, held), (S.RESETTING, 1))
                self.ticks_since_cull = None
                event("culled slot back to DORMANT")
        elif moved and after.stage is S.CULLED:
            self.ticks_since_cull = 0

    # -- invariants ----------------------------------------------------------

    @invariant()
    def table_is_the_contract(self) -> None:
        check_every_transition(self.state)

    @invariant()
    def fossilized_is_absorbing(self) -> None:
        if self.fossilized:
            assert self.state.stage is S.FOSSILIZED

    @invariant()
    def legal_ops_match_stage(self) -> None:
        check_legal_ops(self.state)

    @invariant()
    def gates_match_their_conditions(self) -> None:
        check_gates(self.state, self.config)

    @invariant()
    def history_records_every_stage_left(self) -> None:
        assert self.state.history == tuple(self.expected_history)

    @invariant()
    def roundtrips(self) -> None:
        check_roundtrip(self.state)

    @invariant()
    def recovery_tracking_is_consistent(self) -> None:
        state = self.state
        assert (self.ticks_since_cull is not None) == (state.stage in RECOVERING)
        assert (state.seed_id is None) == (state.stage is S.DORMANT)
        if state.stage in PRE_BLEND:
            assert state.blend_step == 0
        if state.stage is S.BLENDING:
            assert 1 <= state.blend_step <= self.config.blending_steps


LifecycleMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLifecycleMachine = LifecycleMachine.TestCase


# ---------------------------------------------------------------- stand-alone properties


def test_transition_table_is_the_documented_one() -> None:
    assert dict(TRANSITIONS) == EXPECTED_TABLE


@pytest.mark.parametrize("source", list(SeedStage))
def test_every_pair_is_allowed_or_refused(source: SeedStage) -> None:
    state = SeedState(stage=source, seed_id="s", blueprint_id="b", epochs_in_stage=2)
    check_every_transition(state)


@given(state=seed_states, config=configs)
def test_gates_and_legal_ops_on_arbitrary_states(state: SeedState, config: LifecycleConfig) -> None:
    check_gates(state, config)
    check_legal_ops(state)


@given(state=seed_states)
def test_roundtrip_arbitrary_states(state: SeedState) -> None:
    check_roundtrip(state)


@given(blend=st.sampled_from(BlendAlgorithm), total=st.integers(1, 10_000), data=st.data())
def test_alpha_is_a_monotone_ramp_from_0_to_1(
    blend: BlendAlgorithm, total: int, data: st.DataObject
) -> None:
    assert alpha_for_step(blend, 0, total) == 0.0
    assert alpha_for_step(blend, total, total) == 1.0
    steps = data.draw(st.lists(st.integers(-5, total + 5), min_size=2, max_size=10))
    steps.sort()
    alphas = [alpha_for_step(blend, s, total) for s in steps]
    assert alphas == sorted(alphas)
    for s, a in zip(steps, alphas, strict=True):
        assert 0.0 <= a <= 1.0
        assert (a == 1.0) == (s >= total)
        if s <= 0:
            assert a == 0.0


@pytest.mark.parametrize("blend", list(BlendAlgorithm))
@pytest.mark.parametrize("total", [1, 2, 3, 5, 8, 50])
def test_alpha_ramp_exhaustively(blend: BlendAlgorithm, total: int) -> None:
    alphas = [alpha_for_step(blend, s, total) for s in range(-2, total + 3)]
    assert alphas == sorted(alphas)
    assert alphas[:3] == [0.0, 0.0, 0.0]
    assert alphas[-3:] == [1.0, 1.0, 1.0]


# ---------------------------------------------------------------- pinned default timings


def germinated(blend: BlendAlgorithm = BlendAlgorithm.LINEAR) -> SeedState:
    state = transition(SeedState(), S.GERMINATED)
    return replace(state, seed_id="seed-0", blueprint_id="conv", blend=blend)


def run(
    state: SeedState,
    ticks: int,
    *,
    gradient_ratio: float | None = 1.0,
    measured: Contribution | None = None,
    config: LifecycleConfig | None = None,
) -> tuple[SeedState, list[StepOutcome]]:
    cfg = config or LifecycleConfig()
    outcomes = []
    c = None if measured is None else measured.pp
    se = None if measured is None else measured.se
    for _ in range(ticks):
        state = state.with_measurements(
            gradient_ratio=gradient_ratio, contribution=c, contribution_se=se
        )
        outcome = step_epoch(state, cfg)
        outcomes.append(outcome)
        state = outcome.state
    return state, outcomes


def test_default_path_reaches_blending_after_2_ticks() -> None:
    # 1 tick leaves GERMINATED (G1), then min_training_epochs=1 tick in TRAINING (G2).
    cfg = LifecycleConfig()
    assert 1 + cfg.min_training_epochs == 2
    state, _ = run(germinated(), 1)
    assert state.stage is S.TRAINING and state.epochs_in_stage == 0
    state, outcomes = run(state, 1)
    assert state.stage is S.BLENDING
    assert outcomes[-1].transitions == ((S.TRAINING, S.BLENDING),)
    assert state.blend_step == 1


def test_default_path_reaches_blending_never_without_gradient_ratio() -> None:
    state, _ = run(germinated(), 20, gradient_ratio=None)
    assert state.stage is S.TRAINING
    state, _ = run(germinated(), 20, gradient_ratio=0.099)
    assert state.stage is S.TRAINING


def test_default_linear_ramp_reaches_probation_after_7_ticks() -> None:
    # BLENDING trains at blend_step 1..5 (alpha 0.2 .. 1.0); G3 needs alpha >= 0.95, i.e.
    # step 5, so blending lasts blending_steps=5 ticks: probation after 2 + 5 = 7 ticks.
    state, _ = run(germinated(), 6)
    assert state.stage is S.BLENDING and state.blend_step == 5 and state.epochs_in_stage == 4
    state, outcomes = run(state, 1)
    assert state.stage is S.PROBATIONARY
    assert outcomes[-1].transitions == ((S.BLENDING, S.PROBATIONARY),)


def test_default_sigmoid_ramp_reaches_probation_after_6_ticks() -> None:
    # Sigmoid alpha at step 4/5 is 1/(1+e^-3.6) ~ 0.973 >= 0.95: one epoch earlier.
    state, _ = run(germinated(BlendAlgorithm.SIGMOID), 5)
    assert state.stage is S.BLENDING
    state, _ = run(state, 1)
    assert state.stage is S.PROBATIONARY


def test_default_probation_times_out_after_5_ticks_then_recovers_in_5() -> None:
    state, _ = run(germinated(), 7)
    assert state.stage is S.PROBATIONARY
    # A contribution within noise (+0.5 pp, z 1.6): neither kept nor culled early.
    unclear = Contribution(gained=7, lost=2, items=1000)
    state, _ = run(state, 4, measured=unclear)
    assert state.stage is S.PROBATIONARY and state.epochs_in_stage == 4
    assert not gate_fossilize(state, LifecycleConfig()).passed
    state, outcomes = run(state, 1, measured=unclear)
    assert state.stage is S.CULLED
    assert outcomes[-1].cull_reason == "probation timeout (5 epochs)"
    # CULLED 1 tick, EMBARGOED embargo_epochs=3 ticks, RESETTING 1 tick.
    state, _ = run(state, 4, gradient_ratio=None)
    assert state.stage is S.RESETTING
    state, _ = run(state, 1, gradient_ratio=None)
    assert state.stage is S.DORMANT
    assert state.history == (
        (S.DORMANT, 0),
        (S.GERMINATED, 1),
        (S.TRAINING, 1),
        (S.BLENDING, 5),
        (S.PROBATIONARY, 5),
        (S.CULLED, 1),
        (S.EMBARGOED, 3),
        (S.RESETTING, 1),
    )
    assert state == SeedState(history=state.history)


def test_default_harmful_counterfactual_is_culled_on_the_first_probation_tick() -> None:
    state, _ = run(germinated(), 7)
    state, outcomes = run(state, 1, measured=Contribution(gained=1, lost=12, items=360))
    assert state.stage is S.CULLED
    assert outcomes[-1].cull_reason is not None
    assert outcomes[-1].cull_reason.startswith("harmful")


@pytest.mark.parametrize(("gained", "lost"), [(0, 1), (0, 2), (1, 3), (0, 0)])
def test_default_a_sample_or_two_against_a_seed_is_not_a_verdict(gained: int, lost: int) -> None:
    # One digits image is 0.28 pp: the old rule (cull at <= 0 pp) culled on one flip.
    state, _ = run(germinated(), 7)
    state, outcomes = run(state, 1, measured=Contribution(gained, lost, items=360))
    assert state.stage is S.PROBATIONARY and outcomes[-1].cull_reason is None


def test_default_fossilize_then_absorbing() -> None:
    state, _ = run(germinated(), 7, measured=Contribution(gained=60, lost=10, items=1000))
    assert state.stage is S.PROBATIONARY
    assert gate_fossilize(state, LifecycleConfig()).passed
    state = transition(state, S.FOSSILIZED)
    state, outcomes = run(state, 10, measured=Contribution(gained=0, lost=50, items=1000))
    assert state.stage is S.FOSSILIZED
    assert all(not o.transitions for o in outcomes)
    assert legal_ops(state) == {LifecycleOp.WAIT}


def test_zero_embargo_still_embargoes_for_one_tick() -> None:
    # Pins current behaviour: embargo_epochs=0 behaves like 1 (every stage lasts a tick),
    # so a cull takes 3 ticks, not embargo_epochs + 2 = 2, to come back to DORMANT.
    cfg = LifecycleConfig(embargo_epochs=0)
    state = transition(germinated(), S.CULLED)
    stages = []
    for _ in range(3):
        state = step_epoch(state, cfg).state
        stages.append(state.stage)
    assert stages == [S.EMBARGOED, S.RESETTING, S.DORMANT]


@pytest.mark.parametrize("name", ["fossilize_z", "cull_z"])
@pytest.mark.parametrize("value", [0.0, -1.0, math.inf, math.nan])
def test_config_rejects_significance_thresholds_that_would_contradict(
    name: str, value: float
) -> None:
    # Positive z thresholds mean "significantly above 0" (keep) and "significantly
    # below 0" (cull) can never hold together.
    with pytest.raises(ValueError, match=name):
        LifecycleConfig(**{name: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_fossilize_contribution"):
        LifecycleConfig(min_fossilize_contribution=-1.0)
