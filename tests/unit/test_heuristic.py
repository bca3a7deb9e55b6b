"""HeuristicController: each rule on hand-built signals and slot reports, then the seed
budgets on a real digits episode."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import pytest
import torch

from esper.config import EpisodeConfig, HeuristicConfig
from esper.contracts import SlotReport, Topology, TrainingSignals, slot_id
from esper.controller import HeuristicController
from esper.data import load_digits
from esper.lifecycle import (
    LIVE_STAGES,
    BlendAlgorithm,
    FactoredAction,
    LifecycleConfig,
    LifecycleOp,
    SeedStage,
    SeedState,
    legal_ops,
)
from esper.model.blueprints import blueprint_names
from esper.training.batches import SplitBatches
from esper.training.episode import EpisodeResult, EpisodeRunner, run_episode
from esper.training.tasks import get_task

CNN = tuple(blueprint_names(Topology.CNN))
TRANSFORMER = tuple(blueprint_names(Topology.TRANSFORMER))
DORMANT = SeedState()


def _signals(
    epoch: int = 10, *, plateau: int = 5, val_accuracy: float = 90.0, stable: bool = True
) -> TrainingSignals:
    return TrainingSignals(
        epoch=epoch,
        max_epochs=30,
        train_loss=0.3,
        train_accuracy=val_accuracy,
        val_loss=0.35,
        val_accuracy=val_accuracy,
        loss_delta=0.0,
        accuracy_delta=0.0,
        plateau_epochs=plateau,
        host_stabilized=stable,
        best_val_accuracy=max(val_accuracy, 90.0),
        best_val_loss=0.3,
        loss_history=(0.35,),
        accuracy_history=(val_accuracy,),
        host_params=500,
        seed_params=0,
    )


def _seed(
    stage: SeedStage,
    blueprint: str = "conv_light",
    *,
    epochs_in_stage: int = 0,
    contribution: float | None = None,
) -> SeedState:
    return SeedState(
        stage=stage,
        seed_id="seed1",
        blueprint_id=blueprint,
        epochs_in_stage=epochs_in_stage,
        contribution=contribution,
    )


def _slots(*states: SeedState, budget: bool = True, start: float | None = None) -> list[SlotReport]:
    """Reports for slots r0c0, r0c1, ... with the ops `legal_ops` allows."""
    return [
        SlotReport(
            slot_id=slot_id(0, col),
            state=state,
            alpha=1.0 if state.stage >= SeedStage.PROBATIONARY and state.occupied else 0.0,
            seed_params=100 if state.occupied else 0,
            legal=legal_ops(state, seed_budget_left=budget),
            accuracy_at_germination=start if state.live else None,
            accuracy_at_stage_start=start if state.live else None,
        )
        for col, state in enumerate(states)
    ]


def _empty(n: int = 3) -> list[SlotReport]:
    return _slots(*[DORMANT] * n)


def _controller(host: Sequence[str] = CNN, **config: object) -> HeuristicController:
    return HeuristicController(host, HeuristicConfig(**config))  # type: ignore[arg-type]


def _germinate(slot: str, blueprint: str) -> FactoredAction:
    return FactoredAction(LifecycleOp.GERMINATE, slot, blueprint, BlendAlgorithm.LINEAR)


def _op(op: LifecycleOp, slot: str = "r0c0") -> FactoredAction:
    return FactoredAction(op, slot)


WAIT = FactoredAction.wait()


# ---------------------------------------------------------------- when to germinate


def test_waits_for_the_minimum_epoch_then_for_a_plateau() -> None:
    controller = _controller(min_epoch_to_germinate=3, plateau_epochs=2)
    assert controller.decide(_signals(2, plateau=9), _empty()) == WAIT
    assert "epoch 3" in controller.last_reason
    assert controller.decide(_signals(3, plateau=1), _empty()) == WAIT
    assert "plateau" in controller.last_reason
    assert controller.decide(_signals(3, plateau=2), _empty()) == _germinate("r0c0", CNN[0])


def test_does_not_germinate_too_close_to_the_end() -> None:
    controller = _controller(min_epochs_left=10)
    assert controller.decide(_signals(21), _empty()) == WAIT  # 9 of 30 epochs left
    assert "9 epoch(s) left" in controller.last_reason
    assert controller.decide(_signals(20), _empty()).op is LifecycleOp.GERMINATE


def test_waits_for_a_stable_host_unless_told_not_to() -> None:
    strict = _controller()  # require_stable_host is the default
    assert strict.decide(_signals(stable=False), _empty()) == WAIT
    assert "stable" in strict.last_reason
    assert strict.decide(_signals(stable=True), _empty()).op is LifecycleOp.GERMINATE
    relaxed = _controller(require_stable_host=False)
    assert relaxed.decide(_signals(stable=False), _empty()).op is LifecycleOp.GERMINATE


def test_germination_uses_the_configured_blend() -> None:
    controller = _controller(blend=BlendAlgorithm.SIGMOID)
    assert controller.decide(_signals(), _empty()).blend is BlendAlgorithm.SIGMOID


@pytest.mark.parametrize(
    ("stages", "expected"),
    [
        ((SeedStage.DORMANT, SeedStage.DORMANT, SeedStage.DORMANT), "r0c0"),
        ((SeedStage.EMBARGOED, SeedStage.DORMANT, SeedStage.DORMANT), "r0c1"),
        ((SeedStage.FOSSILIZED, SeedStage.EMBARGOED, SeedStage.DORMANT), "r0c2"),
        ((SeedStage.RESETTING, SeedStage.CULLED, SeedStage.DORMANT), "r0c2"),
    ],
)
def test_germinates_into_the_first_slot_that_may_take_a_seed(
    stages: tuple[SeedStage, ...], expected: str
) -> None:
    states = [DORMANT if s is SeedStage.DORMANT else _seed(s) for s in stages]
    action = _controller().decide(_signals(), _slots(*states))
    assert (action.op, action.slot) == (LifecycleOp.GERMINATE, expected)


@pytest.mark.parametrize(
    "slots",
    [
        _slots(_seed(SeedStage.EMBARGOED), _seed(SeedStage.EMBARGOED), _seed(SeedStage.FOSSILIZED)),
        _slots(DORMANT, DORMANT, DORMANT, budget=False),
    ],
    ids=["embargoed-or-full", "no-budget"],
)
def test_never_germinates_where_germinate_is_not_legal(slots: list[SlotReport]) -> None:
    controller = _controller()
    assert controller.decide(_signals(plateau=20), slots) == WAIT
    assert controller.last_reason == "no slot may take a seed"


# ---------------------------------------------------------------- which blueprint


@pytest.mark.parametrize("blueprints", [CNN, TRANSFORMER], ids=["cnn", "transformer"])
def test_blueprint_rotation_follows_the_host_topology(blueprints: tuple[str, ...]) -> None:
    controller = _controller(blueprints)
    chosen = [controller.decide(_signals(), _empty()).blueprint for _ in range(len(blueprints) + 2)]
    assert chosen == [*blueprints, *blueprints[:2]]
    assert controller.rotation == list(blueprints)


def test_configured_rotation_is_used_in_its_order() -> None:
    controller = _controller(CNN, blueprints=("norm", "conv_heavy"))
    chosen = [controller.decide(_signals(), _empty()).blueprint for _ in range(3)]
    assert chosen == ["norm", "conv_heavy", "norm"]


@pytest.mark.parametrize(
    ("host", "rotation", "bad"),
    [(CNN, ("conv_light", "lora"), "lora"), (TRANSFORMER, ("depthwise",), "depthwise")],
)
def test_unknown_blueprints_in_the_config_are_a_clear_error(
    host: tuple[str, ...], rotation: tuple[str, ...], bad: str
) -> None:
    with pytest.raises(ValueError, match=bad) as info:
        _controller(host, blueprints=rotation)
    message = str(info.value)
    assert all(name in message for name in host), message  # lists the valid choices


def test_a_host_without_blueprints_is_an_error() -> None:
    with pytest.raises(ValueError, match="choose from"):
        _controller(())


def _cull_conv_light_then_germinate_conv_heavy(controller: HeuristicController) -> None:
    """Rotation (conv_light, conv_heavy): conv_light is germinated, trains, is culled."""
    assert controller.decide(_signals(10), _empty()) == _germinate("r0c0", "conv_light")
    training = _slots(_seed(SeedStage.TRAINING), DORMANT, DORMANT, budget=False, start=90.0)
    assert controller.decide(_signals(11), training) == WAIT
    culled = _slots(_seed(SeedStage.EMBARGOED), DORMANT, DORMANT)
    assert controller.decide(_signals(12), culled) == _germinate("r0c1", "conv_heavy")
    assert controller.penalties == {"conv_light": pytest.approx(2.0)}


def _after_conv_heavy_is_kept() -> list[SlotReport]:
    kept = _seed(SeedStage.FOSSILIZED, "conv_heavy")
    return _slots(_seed(SeedStage.EMBARGOED), kept, DORMANT)


def test_a_culled_blueprint_is_skipped_while_penalised_then_returns() -> None:
    controller = _controller(blueprints=("conv_light", "conv_heavy"))
    _cull_conv_light_then_germinate_conv_heavy(controller)
    # conv_light is next in the rotation but penalised (2.0 * 0.8 >= 1.5): skipped.
    assert controller.decide(_signals(13), _after_conv_heavy_is_kept()).blueprint == "conv_heavy"
    # One more epoch of decay (2.0 * 0.8 ** 2 < 1.5) and it is tried again.
    assert controller.decide(_signals(14), _after_conv_heavy_is_kept()).blueprint == "conv_light"


def test_when_every_blueprint_is_penalised_the_least_penalised_is_tried() -> None:
    controller = _controller(blueprints=("conv_light", "conv_heavy"), penalty_decay=1.0)
    controller.penalties = {"conv_light": 4.0, "conv_heavy": 2.0}
    assert controller.decide(_signals(), _empty()).blueprint == "conv_heavy"


def test_a_fossilized_seed_is_not_penalised() -> None:
    controller = _controller()
    controller.decide(_signals(10), _empty())
    on_probation = _seed(SeedStage.PROBATIONARY, contribution=5.0)
    assert controller.decide(_signals(11), _slots(on_probation)) == _op(LifecycleOp.FOSSILIZE)
    controller.decide(_signals(12), _slots(_seed(SeedStage.FOSSILIZED), DORMANT))
    assert controller.penalties == {}


# ---------------------------------------------------------------- judging a live seed


@pytest.mark.parametrize(
    ("threshold", "contribution", "expected"),
    [
        (1.0, 1.0, LifecycleOp.FOSSILIZE),
        (1.0, 0.99, LifecycleOp.WAIT),
        (2.5, 2.0, LifecycleOp.WAIT),
    ],
)
def test_fossilizes_once_the_contribution_clears_the_threshold(
    threshold: float, contribution: float, expected: LifecycleOp
) -> None:
    controller = HeuristicController(CNN, fossilize_threshold=threshold)
    seed = _seed(SeedStage.PROBATIONARY, contribution=contribution)
    action = controller.decide(_signals(), _slots(seed, budget=False))
    assert action.op is expected
    if expected is LifecycleOp.FOSSILIZE:
        assert action.slot == "r0c0" and f"{contribution:+.2f}" in controller.last_reason


@pytest.mark.parametrize("contribution", [0.4, None])
def test_culls_after_probation_patience_without_enough_contribution(
    contribution: float | None,
) -> None:
    controller = _controller(probation_patience=2)

    def decide(epochs: int) -> FactoredAction:
        seed = _seed(SeedStage.PROBATIONARY, epochs_in_stage=epochs, contribution=contribution)
        return controller.decide(_signals(), _slots(seed, budget=False))

    assert decide(1) == WAIT
    assert decide(2) == _op(LifecycleOp.CULL)
    assert ("unmeasured" if contribution is None else "+0.40") in controller.last_reason


@pytest.mark.parametrize("stage", [SeedStage.TRAINING, SeedStage.BLENDING])
@pytest.mark.parametrize(
    ("epochs", "accuracy", "expected"),
    [
        (5, 87.9, LifecycleOp.CULL),  # fell 2.1 pp after 5 epochs
        (4, 80.0, LifecycleOp.WAIT),  # fell a lot, but too early to judge
        (5, 88.0, LifecycleOp.WAIT),  # fell exactly the allowed 2.0 pp
        (9, 95.0, LifecycleOp.WAIT),  # improved
    ],
)
def test_culls_a_growing_seed_whose_accuracy_fell(
    stage: SeedStage, epochs: int, accuracy: float, expected: LifecycleOp
) -> None:
    controller = _controller(cull_after_epochs=5, cull_accuracy_drop=2.0)
    slots = _slots(_seed(stage, epochs_in_stage=epochs), budget=False, start=90.0)
    action = controller.decide(_signals(val_accuracy=accuracy), slots)
    assert action == (_op(LifecycleOp.CULL) if expected is LifecycleOp.CULL else WAIT)
    if expected is LifecycleOp.CULL:
        assert stage.name in controller.last_reason


def test_a_seed_without_a_stage_start_accuracy_is_not_culled_for_a_drop() -> None:
    slots = _slots(_seed(SeedStage.TRAINING, epochs_in_stage=20), budget=False, start=None)
    assert _controller().decide(_signals(val_accuracy=0.0), slots) == WAIT


def test_judging_a_seed_comes_before_germinating_and_goes_in_slot_order() -> None:
    weak = _seed(SeedStage.PROBATIONARY, epochs_in_stage=5, contribution=-1.0)
    strong = _seed(SeedStage.PROBATIONARY, contribution=9.0)
    action = _controller().decide(_signals(plateau=20), _slots(DORMANT, strong, weak))
    assert action == _op(LifecycleOp.FOSSILIZE, "r0c1")


def test_waits_while_a_healthy_seed_grows_and_no_slot_may_take_another() -> None:
    growing = _seed(SeedStage.BLENDING, epochs_in_stage=9)
    slots = _slots(growing, DORMANT, DORMANT, budget=False, start=85.0)
    controller = _controller()
    assert controller.decide(_signals(val_accuracy=90.0, plateau=20), slots) == WAIT


# ---------------------------------------------------------------- checkpointing


def test_state_dict_round_trip_preserves_decisions() -> None:
    original = _controller(blueprints=("conv_light", "conv_heavy"))
    _cull_conv_light_then_germinate_conv_heavy(original)
    state = json.loads(json.dumps(original.state_dict()))  # plain data only

    restored = _controller(blueprints=("conv_light", "conv_heavy"))
    restored.load_state_dict(state)
    fresh = _controller(blueprints=("conv_light", "conv_heavy"))
    for epoch in (13, 14):
        expected = original.decide(_signals(epoch), _after_conv_heavy_is_kept())
        assert restored.decide(_signals(epoch), _after_conv_heavy_is_kept()) == expected
    assert restored.state_dict() == original.state_dict()
    # Without the state, the penalty and the rotation position are lost.
    assert fresh.decide(_signals(13), _after_conv_heavy_is_kept()).blueprint == "conv_light"

    # The stages seen so far are restored too: a cull is noticed across the checkpoint.
    seen = _controller(blueprints=("conv_light", "conv_heavy"))
    seen.decide(_signals(10), _empty())
    seen.decide(_signals(11), _slots(_seed(SeedStage.TRAINING), budget=False, start=90.0))
    resumed = _controller(blueprints=("conv_light", "conv_heavy"))
    resumed.load_state_dict(seen.state_dict())
    resumed.decide(_signals(12), _slots(_seed(SeedStage.EMBARGOED), DORMANT))
    assert resumed.penalties == {"conv_light": pytest.approx(2.0)}


# ---------------------------------------------------------------- a real digits episode


DIGITS = get_task("digits")
SPLIT = load_digits()
# Short gates, so one seed's whole life fits in a few epochs.
FAST = LifecycleConfig(
    min_training_epochs=1,
    blending_steps=1,
    min_blending_epochs=1,
    max_probation_epochs=1,
    embargo_epochs=0,
)
EAGER = HeuristicConfig(
    min_epoch_to_germinate=1,
    min_epochs_left=0,
    plateau_epochs=0,
    probation_patience=1,
    require_stable_host=False,
)


def _episode(epochs: int, **limits: object) -> EpisodeResult:
    config = dataclasses.replace(
        DIGITS.default_config(),
        epochs=epochs,
        lifecycle=FAST,
        training=dataclasses.replace(DIGITS.default_config().training, max_batches=6),
        **limits,  # type: ignore[arg-type]
    )
    torch.manual_seed(config.seed)
    model = DIGITS.build_model(SPLIT, lifecycle=config.lifecycle)
    runner = EpisodeRunner(model, SplitBatches(SPLIT, DIGITS.batch_size, config.seed), config)
    controller = HeuristicController(
        CNN, EAGER, fossilize_threshold=FAST.min_fossilize_contribution
    )
    return run_episode(runner, controller)


def _live_per_epoch(result: EpisodeResult) -> list[int]:
    return [sum(s in LIVE_STAGES for s in r.stages.values()) for r in result.history]


def _applied_germinations(result: EpisodeResult) -> int:
    return sum(
        r.action.op is LifecycleOp.GERMINATE and r.outcome == "applied" for r in result.history
    )


@pytest.mark.parametrize("max_live_seeds", [1, 2])
def test_never_more_live_seeds_than_max_live_seeds(max_live_seeds: int) -> None:
    result = _episode(8, max_live_seeds=max_live_seeds)
    assert max(_live_per_epoch(result)) == max_live_seeds
    assert result.seeds_germinated == _applied_germinations(result) >= 2
    assert all(r.outcome == "applied" for r in result.history)  # it never asked for more


def test_never_more_seeds_than_max_seeds() -> None:
    result = _episode(8, max_seeds=1, max_live_seeds=1)
    assert result.seeds_germinated == _applied_germinations(result) == 1
    assert max(_live_per_epoch(result)) == 1
    # Once its one seed has run its course, every slot is refused to the controller.
    assert _live_per_epoch(result)[-1] == 0
    assert result.history[-1].action == FactoredAction.wait()


def test_episode_config_defaults_allow_one_live_seed() -> None:
    assert EpisodeConfig().max_live_seeds == 1 and EpisodeConfig().max_seeds is None
