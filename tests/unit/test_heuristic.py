"""HeuristicController: each rule on hand-built signals and slot reports, then the seed
budgets on a real digits episode."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import pytest
import torch

from esper.config import EpisodeConfig, HeuristicConfig
from esper.contracts import (
    Contribution,
    Decision,
    SeedCost,
    SlotReport,
    Topology,
    TrainingSignals,
    slot_id,
)
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
    probation_verdict,
)
from esper.model.blueprints import GrowthKind, blueprint_names, get_blueprint
from esper.training.batches import SplitBatches
from esper.training.builders import build_model
from esper.training.episode import EpisodeRunner, run_episode
from esper.training.ledger import EpisodeResult
from esper.training.tasks import get_task

CNN = tuple(blueprint_names(Topology.CNN, GrowthKind.DEPTH))
TRANSFORMER = tuple(blueprint_names(Topology.TRANSFORMER, GrowthKind.DEPTH))
DORMANT = SeedState()
HOST_PARAMS = 6_000
HOST_FLOPS = 3e7
# A CIFAR-like host: (channels, positions) at r0c0, r0c1, r0c2.
SHAPES = ((8, 256), (16, 64), (32, 16))


def _costs(col: int, topology: Topology = Topology.CNN) -> dict[str, SeedCost]:
    """Every blueprint's cost in slot ``col``: 6 FLOPs per parameter per position."""
    channels, positions = SHAPES[col]
    costs = {}
    for name in blueprint_names(topology):
        params = get_blueprint(topology, name).params(channels)
        costs[name] = SeedCost(params, 6.0 * params * positions, 2.0 * params * positions)
    return costs


def _signals(epoch: int = 10, *, val_accuracy: float = 90.0) -> TrainingSignals:
    return TrainingSignals(
        epoch=epoch,
        max_epochs=30,
        train_loss=0.3,
        train_accuracy=val_accuracy,
        val_loss=0.35,
        val_accuracy=val_accuracy,
        loss_delta=0.0,
        accuracy_delta=0.0,
        plateau_epochs=0,
        host_stabilized=False,
        best_val_accuracy=max(val_accuracy, 90.0),
        best_val_loss=0.3,
        loss_history=(0.35,),
        accuracy_history=(val_accuracy,),
        host_params=HOST_PARAMS,
        seed_params=0,
        host_train_flops=HOST_FLOPS,
    )


def _seed(
    stage: SeedStage,
    blueprint: str = "conv_light",
    *,
    epochs_in_stage: int = 0,
    measured: Contribution | None = None,
) -> SeedState:
    return SeedState(
        stage=stage,
        seed_id="seed1",
        blueprint_id=blueprint,
        epochs_in_stage=epochs_in_stage,
        contribution=None if measured is None else measured.pp,
        contribution_se=None if measured is None else measured.se,
    )


def _slots(
    *states: SeedState, budget: bool = True, topology: Topology = Topology.CNN
) -> list[SlotReport]:
    """Reports for slots r0c0, r0c1, ... with the ops `legal_ops` allows."""
    return [
        SlotReport(
            slot_id=slot_id(0, col),
            state=state,
            alpha=1.0 if state.stage >= SeedStage.PROBATIONARY and state.occupied else 0.0,
            seed_params=_costs(col, topology)[state.blueprint_id or ""].params
            if state.occupied
            else 0,
            legal=legal_ops(state, seed_budget_left=budget),
            accuracy_at_germination=None,
            accuracy_at_stage_start=None,
            costs=_costs(col, topology),
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
LIFECYCLE = LifecycleConfig()


# ---------------------------------------------------------------- when to grow


def test_grows_from_the_start_epoch_one_seed_per_epoch() -> None:
    controller = _controller(start_epoch=2)
    waiting = controller.decide(_signals(1), _empty())
    assert waiting.action == WAIT and "epoch 2" in waiting.reason
    assert controller.decide(_signals(2), _empty()).action == _germinate("r0c2", "conv_heavy")
    growing = _slots(DORMANT, DORMANT, _seed(SeedStage.GERMINATED, "conv_heavy"))
    assert controller.decide(_signals(3), growing).action == _germinate("r0c1", "conv_heavy")


def test_does_not_germinate_too_close_to_the_end() -> None:
    controller = _controller(min_epochs_left=10)
    late = controller.decide(_signals(21), _empty())  # 9 of 30 epochs left
    assert late.action == WAIT and "9 epoch(s) left" in late.reason
    assert controller.decide(_signals(20), _empty()).action.op is LifecycleOp.GERMINATE


def test_germination_uses_the_configured_blend() -> None:
    controller = _controller(blend=BlendAlgorithm.SIGMOID)
    assert controller.decide(_signals(), _empty()).action.blend is BlendAlgorithm.SIGMOID


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
    assert controller.decide(_signals(), slots) == Decision(WAIT, "no slot may take a seed")


# ---------------------------------------------------------------- where and what


@pytest.mark.parametrize(
    ("stages", "expected"),
    [
        ((SeedStage.DORMANT, SeedStage.DORMANT, SeedStage.DORMANT), "r0c2"),
        ((SeedStage.DORMANT, SeedStage.DORMANT, SeedStage.EMBARGOED), "r0c1"),
        ((SeedStage.DORMANT, SeedStage.TRAINING, SeedStage.FOSSILIZED), "r0c0"),
    ],
)
def test_grows_where_capacity_is_cheapest_first(
    stages: tuple[SeedStage, ...], expected: str
) -> None:
    # The deepest open slot has the fewest positions: most parameters per FLOP.
    states = [DORMANT if s is SeedStage.DORMANT else _seed(s) for s in stages]
    action = _controller(max_growth_params=None).decide(_signals(), _slots(*states)).action
    assert (action.op, action.slot) == (LifecycleOp.GERMINATE, expected)


def test_transformer_slots_cost_alike_so_the_deepest_wins() -> None:
    action = (
        _controller(TRANSFORMER)
        .decide(_signals(), _slots(*[DORMANT] * 3, topology=Topology.TRANSFORMER))
        .action
    )
    assert action == _germinate("r0c2", "mlp")  # the largest transformer blueprint


def test_grows_the_largest_blueprint_that_fits_the_parameter_budget() -> None:
    big = _costs(2)["conv_heavy"].params  # 18,592 parameters in r0c2
    roomy = _controller(max_growth_params=big / HOST_PARAMS)
    assert roomy.decide(_signals(), _empty()).action == _germinate("r0c2", "conv_heavy")
    tight = _controller(max_growth_params=(big - 1) / HOST_PARAMS)
    assert tight.decide(_signals(), _empty()).action == _germinate("r0c2", "conv_light")
    # What is already grown counts against the budget.
    grown = _slots(DORMANT, DORMANT, _seed(SeedStage.FOSSILIZED, "conv_heavy"))
    spent = _controller(max_growth_params=big / HOST_PARAMS)
    assert spent.decide(_signals(), grown) == Decision(WAIT, "growth budget spent")


def test_a_compute_budget_limits_growth_too() -> None:
    costs = _costs(2)["conv_heavy"]
    controller = _controller(max_growth_params=None, max_growth_flops=0.0)
    assert controller.decide(_signals(), _empty()).action == WAIT
    allowed = _controller(max_growth_params=None, max_growth_flops=costs.train_flops / HOST_FLOPS)
    assert allowed.decide(_signals(), _empty()).action == _germinate("r0c2", "conv_heavy")


def test_only_the_configured_blueprints_are_grown() -> None:
    controller = _controller(CNN, blueprints=("norm", "conv_light"))
    assert controller.decide(_signals(), _empty()).action == _germinate("r0c2", "conv_light")


@pytest.mark.parametrize(
    ("host", "allowed", "bad"),
    [(CNN, ("conv_light", "lora"), "lora"), (TRANSFORMER, ("depthwise",), "depthwise")],
)
def test_unknown_blueprints_in_the_config_are_a_clear_error(
    host: tuple[str, ...], allowed: tuple[str, ...], bad: str
) -> None:
    with pytest.raises(ValueError, match=bad) as info:
        _controller(host, blueprints=allowed)
    message = str(info.value)
    assert all(name in message for name in host), message  # lists the valid choices


def test_a_host_without_blueprints_is_an_error() -> None:
    with pytest.raises(ValueError, match="choose from"):
        _controller(())


def _cull_conv_heavy(controller: HeuristicController) -> None:
    """conv_heavy is germinated in r0c2, trains, and is culled."""
    assert (
        controller.decide(_signals(10), _slots(DORMANT, DORMANT, DORMANT, budget=False)).action
        == WAIT
    )
    training = _slots(DORMANT, DORMANT, _seed(SeedStage.TRAINING, "conv_heavy"), budget=False)
    assert controller.decide(_signals(11), training).action == WAIT
    culled = _slots(DORMANT, DORMANT, _seed(SeedStage.EMBARGOED, "conv_heavy"), budget=False)
    assert controller.decide(_signals(12), culled).action == WAIT
    assert controller.penalties == {"conv_heavy": pytest.approx(2.0)}


def _open_r0c2() -> list[SlotReport]:
    return _slots(_seed(SeedStage.FOSSILIZED), _seed(SeedStage.FOSSILIZED), DORMANT)


def test_a_culled_blueprint_is_skipped_while_penalised_then_returns() -> None:
    controller = _controller(max_growth_params=None)
    _cull_conv_heavy(controller)
    # conv_heavy is penalised (2.0 * 0.8 >= 1.5): the next largest is grown instead.
    assert controller.decide(_signals(13), _open_r0c2()).action.blueprint == "conv_light"
    # One more epoch of decay (2.0 * 0.8 ** 2 < 1.5) and it is grown again.
    assert controller.decide(_signals(14), _open_r0c2()).action.blueprint == "conv_heavy"


def test_a_fossilized_seed_is_not_penalised() -> None:
    controller = _controller()
    clear = Contribution(gained=60, lost=10, items=1000)  # +5 pp, z 6
    on_probation = _seed(SeedStage.PROBATIONARY, measured=clear)
    assert controller.decide(_signals(11), _slots(on_probation)).action == _op(
        LifecycleOp.FOSSILIZE
    )
    controller.decide(_signals(12), _slots(_seed(SeedStage.FOSSILIZED), DORMANT))
    assert controller.penalties == {}


# ---------------------------------------------------------------- judging a live seed


@pytest.mark.parametrize(
    ("gained", "lost", "expected"),
    [
        (60, 10, LifecycleOp.FOSSILIZE),  # +5.0 pp, z 6.0
        (17, 7, LifecycleOp.WAIT),  # +1.0 pp but z 2.04: not yet clear of noise
        (34, 8, LifecycleOp.FOSSILIZE),  # +2.6 pp, z 4.0
        (9, 0, LifecycleOp.WAIT),  # z 3.0 but only +0.9 pp: below the gain worth keeping
    ],
)
def test_fossilizes_once_g5_passes_in_pp_and_in_standard_errors(
    gained: int, lost: int, expected: LifecycleOp
) -> None:
    measured = Contribution(gained, lost, items=1000)
    seed = _seed(SeedStage.PROBATIONARY, measured=measured)
    action = _controller().decide(_signals(), _slots(seed, budget=False)).action
    assert action.op is expected
    if expected is LifecycleOp.FOSSILIZE:
        assert f"{measured.pp:+.2f}" in _controller_reason(seed)


def _controller_reason(seed: SeedState) -> str:
    return _controller().decide(_signals(), _slots(seed, budget=False)).reason


@pytest.mark.parametrize(("gained", "lost"), [(3, 1), (2, 2), (1, 3), (4, 0), (0, 4)])
def test_a_contribution_within_noise_is_neither_kept_nor_culled(gained: int, lost: int) -> None:
    # 360 digits images: one image is 0.28 pp. Flipping a sample or two moves the
    # contribution by more than the old thresholds (>= 1 pp keep, <= 0 pp cull) but
    # never out of noise, so nothing happens either way.
    measured = Contribution(gained, lost, items=360)
    assert abs(measured.z) <= 2.0
    for stage in (SeedStage.BLENDING, SeedStage.PROBATIONARY):
        seed = _seed(stage, epochs_in_stage=1, measured=measured)
        assert _controller().decide(_signals(), _slots(seed, budget=False)).action == WAIT
        assert probation_verdict(seed, LIFECYCLE) is None


@pytest.mark.parametrize("stage", [SeedStage.BLENDING, SeedStage.PROBATIONARY])
def test_a_seed_is_judged_harmful_on_probation_not_while_it_blends(stage: SeedStage) -> None:
    harmful = Contribution(gained=2, lost=20, items=1000)  # -1.8 pp, z -3.8
    seed = _seed(stage, epochs_in_stage=1, measured=harmful)
    if stage is SeedStage.BLENDING:  # the host is still adapting: no verdict yet
        assert _controller().decide(_signals(), _slots(seed, budget=False)).action == WAIT
    else:  # on probation, the lifecycle culls it
        assert probation_verdict(seed, LIFECYCLE) is not None


def test_a_seed_stalled_in_training_is_culled_and_not_grown_there_again() -> None:
    controller = _controller(stalled_training_epochs=8, max_growth_params=None)
    young = _slots(DORMANT, DORMANT, _seed(SeedStage.TRAINING, "conv_heavy", epochs_in_stage=7))
    assert controller.decide(_signals(), young).action == _germinate("r0c1", "conv_heavy")
    stalled = _slots(
        DORMANT, DORMANT, _seed(SeedStage.TRAINING, "conv_heavy", epochs_in_stage=8), budget=False
    )
    culled = controller.decide(_signals(), stalled)
    assert culled.action == _op(LifecycleOp.CULL, "r0c2") and "stalled" in culled.reason
    # Once r0c2 is open again, conv_heavy is not grown there (other slots keep it).
    controller.penalties.clear()
    reopened = _slots(_seed(SeedStage.FOSSILIZED), _seed(SeedStage.FOSSILIZED), DORMANT)
    assert controller.decide(_signals(), reopened).action == _germinate("r0c2", "conv_light")
    assert controller.state_dict()["stalled"] == [["r0c2", "conv_heavy"]]


def test_judging_a_seed_comes_before_germinating_and_goes_in_slot_order() -> None:
    unclear = _seed(SeedStage.PROBATIONARY, measured=Contribution(3, 1, 1000))
    strong = _seed(SeedStage.PROBATIONARY, measured=Contribution(90, 0, 1000))
    action = _controller().decide(_signals(), _slots(DORMANT, unclear, strong)).action
    assert action == _op(LifecycleOp.FOSSILIZE, "r0c2")


def test_waits_while_a_seed_grows_and_no_slot_may_take_another() -> None:
    growing = _seed(SeedStage.BLENDING, epochs_in_stage=9)
    slots = _slots(growing, DORMANT, DORMANT, budget=False)
    assert _controller().decide(_signals(val_accuracy=20.0), slots).action == WAIT


# ---------------------------------------------------------------- checkpointing


def test_state_dict_round_trip_preserves_decisions() -> None:
    original = _controller(max_growth_params=None)
    _cull_conv_heavy(original)
    state = json.loads(json.dumps(original.state_dict()))  # plain data only

    restored = _controller(max_growth_params=None)
    restored.load_state_dict(state)
    fresh = _controller(max_growth_params=None)
    for epoch in (13, 14):
        expected = original.decide(_signals(epoch), _open_r0c2()).action
        assert restored.decide(_signals(epoch), _open_r0c2()).action == expected
    assert restored.state_dict() == original.state_dict()
    # Without the state, the penalty is lost.
    assert fresh.decide(_signals(13), _open_r0c2()).action.blueprint == "conv_heavy"

    # The stages seen so far are restored too: a cull is noticed across the checkpoint.
    seen = _controller()
    seen.decide(_signals(11), _slots(DORMANT, DORMANT, _seed(SeedStage.TRAINING, "conv_heavy")))
    resumed = _controller()
    resumed.load_state_dict(seen.state_dict())
    resumed.decide(_signals(12), _slots(DORMANT, DORMANT, _seed(SeedStage.EMBARGOED, "conv_heavy")))
    assert resumed.penalties == {"conv_heavy": pytest.approx(2.0)}


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
    min_gradient_ratio=0.0,
)
EAGER = HeuristicConfig(start_epoch=1, min_epochs_left=0, max_growth_params=None)


def _episode(epochs: int, **limits: object) -> EpisodeResult:
    config = dataclasses.replace(
        DIGITS.default_config(),
        epochs=epochs,
        lifecycle=FAST,
        training=dataclasses.replace(DIGITS.default_config().training, max_batches=6),
        **limits,  # type: ignore[arg-type]
    )
    torch.manual_seed(config.seed)
    model = build_model(DIGITS, SPLIT, lifecycle=config.lifecycle)
    runner = EpisodeRunner(model, SplitBatches(SPLIT, DIGITS.batch_size, config.seed), config)
    controller = HeuristicController(CNN, EAGER, FAST)
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


def test_episode_config_defaults_allow_a_live_seed_in_every_slot() -> None:
    assert EpisodeConfig().max_live_seeds is None and EpisodeConfig().max_seeds is None


def _width_slots(*states: SeedState) -> list[SlotReport]:
    """Reports of a 2/4/8-channel host whose blocks can widen (width_100 at each)."""
    width = {"width_100": SeedCost(100, 1e4, 3e3)}
    return [
        dataclasses.replace(r, width_units=units, costs={**r.costs, **width})
        for r, units in zip(_slots(*states), (2, 4, 8), strict=True)
    ]


@pytest.mark.parametrize("growth", ["depth", "both", "width"])
def test_growth_kind_decides_where_blocks_widen(growth: str) -> None:
    # Block 0 has 2 units against a mean of 4.7: with growth "both" at width_bottleneck
    # 0.5 (2.3 or fewer) it is widened and block 1 (4 units) deepened; "depth" deepens
    # both, "width" widens both.
    config = HeuristicConfig(growth=growth, width_bottleneck=0.5)  # type: ignore[arg-type]
    controller = HeuristicController(CNN, config, width_blueprints=("width_100",))
    training = _seed(SeedStage.TRAINING)
    first = controller.decide(_signals(), _width_slots(DORMANT, training, training)).action
    second = controller.decide(_signals(), _width_slots(training, DORMANT, training)).action
    assert (first.op, first.slot, second.slot) == (LifecycleOp.GERMINATE, "r0c0", "r0c1")
    assert (first.blueprint == "width_100") == (growth != "depth")
    assert (second.blueprint == "width_100") == (growth == "width")


def test_a_stalled_width_seed_keeps_every_width_blueprint_from_its_slot() -> None:
    # The last block's width_100 stalls at G2; width_50 there would read the same
    # widened layers' gradient, so neither is grown there again. Other blocks still widen.
    config = HeuristicConfig(growth="width", stalled_training_epochs=8, max_growth_params=None)
    controller = HeuristicController(CNN, config, width_blueprints=("width_50", "width_100"))
    width = {"width_50": SeedCost(50, 5e3, 1e3), "width_100": SeedCost(100, 1e4, 3e3)}

    def slots(*states: SeedState) -> list[SlotReport]:
        return [
            dataclasses.replace(r, width_units=units, costs={**r.costs, **width})
            for r, units in zip(_slots(*states), (2, 4, 8), strict=True)
        ]

    kept = _seed(SeedStage.FOSSILIZED, "width_100")
    stalled = _seed(SeedStage.TRAINING, "width_100", epochs_in_stage=8)
    culled = controller.decide(_signals(), slots(kept, kept, stalled))
    assert culled.action == _op(LifecycleOp.CULL, "r0c2") and "stalled" in culled.reason
    controller.penalties.clear()
    reopened = controller.decide(_signals(), slots(kept, kept, DORMANT))
    assert reopened.action == WAIT and "budget" in reopened.reason
    assert controller.state_dict()["stalled"] == [["r0c2", "width_100"], ["r0c2", "width_50"]]
    elsewhere = controller.decide(_signals(), slots(DORMANT, kept, DORMANT)).action
    assert (elsewhere.slot, elsewhere.blueprint) == ("r0c0", "width_100")
