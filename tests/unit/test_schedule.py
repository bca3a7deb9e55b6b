"""The scripted plans ``esper search`` searches: the schedule controller that plays one,
the plan's configuration, and the family (`PlanSpace`) plans are drawn and mutated in."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esper.config import ConfigError, GrowthStep, RunConfig, ScheduleConfig, from_dict, to_dict
from esper.contracts import Contribution, SlotReport
from esper.controller import ControllerContext, ScheduleController, build_controller
from esper.lifecycle import (
    BlendAlgorithm,
    FactoredAction,
    LifecycleOp,
    SeedStage,
    SeedState,
    legal_ops,
)
from esper.search import PlanSpace, SlotOptions, canonical
from tests.unit.test_heuristic import _costs, _signals

SLOTS = ("r0c0", "r0c1", "r0c2")
DEPTH = ("norm", "conv_heavy")
WIDTH = ("width_50", "width_100")
STRONG = Contribution(gained=60, lost=2, items=287)


def _reports(*states: SeedState) -> list[SlotReport]:
    return [
        SlotReport(
            slot_id=SLOTS[col],
            state=state,
            alpha=0.0,
            seed_params=0,
            legal=legal_ops(state),
            accuracy_at_germination=None,
            accuracy_at_stage_start=None,
            costs=_costs(col),
        )
        for col, state in enumerate(states)
    ]


def _seed(stage: SeedStage, epochs: int, measured: Contribution | None = None) -> SeedState:
    return SeedState(
        stage=stage,
        seed_id="seed1",
        blueprint_id="norm",
        epochs_in_stage=epochs,
        contribution=None if measured is None else measured.pp,
        contribution_se=None if measured is None else measured.se,
    )


def _plan(*steps: GrowthStep, fossilize_after: int = 0) -> ScheduleConfig:
    return ScheduleConfig(steps, fossilize_after)


EMPTY = SeedState()


def test_each_step_germinates_once_at_its_epoch_or_when_its_slot_opens() -> None:
    plan = _plan(
        GrowthStep(3, "r0c2", "conv_heavy", BlendAlgorithm.GATED),
        GrowthStep(2, "r0c0", "width_100"),
    )
    controller = ScheduleController(plan)
    assert (
        controller.decide(_signals(1), _reports(EMPTY, EMPTY, EMPTY)).action.op is LifecycleOp.WAIT
    )
    second = controller.decide(_signals(2), _reports(EMPTY, EMPTY, EMPTY)).action
    assert second == FactoredAction(
        LifecycleOp.GERMINATE, "r0c0", "width_100", BlendAlgorithm.LINEAR
    )
    # r0c2 is taken (a seed from elsewhere): its step waits for it, then germinates.
    busy = _seed(SeedStage.TRAINING, 1)
    taken = _reports(_seed(SeedStage.BLENDING, 1), EMPTY, busy)
    assert controller.decide(_signals(3), taken).action.op is LifecycleOp.WAIT
    third = controller.decide(_signals(4), _reports(_seed(SeedStage.BLENDING, 2), EMPTY, EMPTY))
    assert third.action == FactoredAction(
        LifecycleOp.GERMINATE, "r0c2", "conv_heavy", BlendAlgorithm.GATED
    )
    assert third.reason == "step 1: conv_heavy in r0c2"
    # Nothing is germinated twice.
    later = controller.decide(_signals(5), _reports(EMPTY, EMPTY, EMPTY))
    assert later.action.op is LifecycleOp.WAIT


@pytest.mark.parametrize("after", [0, 1, 3])
def test_a_seed_is_kept_only_after_fossilize_after_epochs_on_probation(after: int) -> None:
    controller = ScheduleController(_plan(fossilize_after=after))
    for epochs in range(after + 2):
        slots = _reports(_seed(SeedStage.PROBATIONARY, epochs, STRONG), EMPTY, EMPTY)
        op = controller.decide(_signals(10), slots).action.op
        assert op is (LifecycleOp.FOSSILIZE if epochs >= after else LifecycleOp.WAIT)


def test_a_weak_seed_is_not_kept_however_long_it_waits() -> None:
    weak = Contribution(gained=5, lost=4, items=287)
    slots = _reports(_seed(SeedStage.PROBATIONARY, 4, weak), EMPTY, EMPTY)
    assert ScheduleController(_plan()).decide(_signals(10), slots).action.op is LifecycleOp.WAIT


def test_a_seed_stalled_in_training_is_culled() -> None:
    plan = ScheduleConfig(stalled_training_epochs=3)
    stalled = _reports(EMPTY, _seed(SeedStage.TRAINING, 3), EMPTY)
    decision = ScheduleController(plan).decide(_signals(10), stalled)
    assert decision.action == FactoredAction(LifecycleOp.CULL, "r0c1")


def test_the_steps_done_survive_a_checkpoint() -> None:
    plan = _plan(GrowthStep(1, "r0c0", "norm"), GrowthStep(1, "r0c1", "norm"))
    first = ScheduleController(plan)
    first.decide(_signals(1), _reports(EMPTY, EMPTY, EMPTY))
    resumed = ScheduleController(plan)
    resumed.load_state_dict(first.state_dict())
    action = resumed.decide(_signals(2), _reports(_seed(SeedStage.TRAINING, 0), EMPTY, EMPTY))
    assert (action.action.op, action.action.slot) == (LifecycleOp.GERMINATE, "r0c1")


def _context(plan: dict[str, object]) -> ControllerContext:
    config = from_dict(RunConfig, {"controller": "schedule", "schedule": plan})
    return ControllerContext(config, DEPTH, SLOTS, 2.3, WIDTH)


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"epoch": 1, "slot": "r9c9", "blueprint": "norm"}, "slot 'r9c9' is not one of"),
        ({"epoch": 1, "slot": "r0c0", "blueprint": "huge"}, "blueprint 'huge' does not fit"),
        (
            {"epoch": 1, "slot": "r0c0", "blueprint": "width_50", "blend": "gated"},
            "a width seed cannot blend gated",
        ),
    ],
)
def test_a_plan_the_host_cannot_take_is_one_clear_error(
    step: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_controller(_context({"steps": [step]}))


def test_a_plan_is_plain_configuration_with_one_step_per_slot() -> None:
    step = {"epoch": 2, "slot": "r0c1", "blueprint": "width_100"}
    data = {"steps": [step], "fossilize_after": 1}
    config = from_dict(RunConfig, {"controller": "schedule", "schedule": data})
    assert config.schedule == _plan(GrowthStep(2, "r0c1", "width_100"), fossilize_after=1)
    assert from_dict(RunConfig, to_dict(config)) == config
    twice = {"steps": [step, {"epoch": 5, "slot": "r0c1", "blueprint": "norm"}]}
    with pytest.raises(ConfigError, match="grows slot r0c1 twice"):
        from_dict(RunConfig, {"schedule": twice})
    with pytest.raises(ConfigError, match="epoch must be at least 1"):
        from_dict(
            RunConfig, {"schedule": {"steps": [{"epoch": 0, "slot": "r0c0", "blueprint": "norm"}]}}
        )


# ---------------------------------------------------------------- the family

SPACE = PlanSpace(
    (
        SlotOptions(
            "r0c0", ("width_50", "width_100"), {w: (BlendAlgorithm.LINEAR,) for w in WIDTH}
        ),
        SlotOptions(
            "r0c2",
            ("norm", "conv_heavy"),
            {d: (BlendAlgorithm.LINEAR, BlendAlgorithm.GATED) for d in DEPTH},
        ),
    ),
    last_epoch=12,
)


def _in_family(plan: ScheduleConfig) -> bool:
    options = {s.slot: s for s in SPACE.slots}
    order = [s.slot for s in SPACE.slots]
    return (
        0 <= plan.fossilize_after <= SPACE.max_fossilize_after
        and plan == canonical(plan)
        and [s.slot for s in plan.steps] == [o for o in order if o in {s.slot for s in plan.steps}]
        and all(
            step.slot in options
            and step.blueprint in options[step.slot].blueprints
            and step.blend in options[step.slot].blends[step.blueprint]
            and 1 <= step.epoch <= SPACE.last_epoch
            for step in plan.steps
        )
    )


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_random_plans_and_their_mutations_stay_in_the_family(seed: int) -> None:
    rng = random.Random(seed)
    plan = SPACE.random_plan(rng)
    assert _in_family(plan)
    for _ in range(5):
        child = SPACE.mutate(plan, rng)
        assert child != plan and _in_family(child)
        plan = child


def test_the_same_search_seed_draws_the_same_plans() -> None:
    draw = [SPACE.random_plan(random.Random(7)) for _ in range(2)]
    assert draw[0] == draw[1]
    assert canonical(_plan(fossilize_after=3)) == _plan()
