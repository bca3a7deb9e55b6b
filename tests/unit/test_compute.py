"""Compute accounting and counterfactual branching: FLOPs against a hand count, counted
once per architecture; removing a seed at its slot gives exactly the old full-pass result."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Literal

import pytest
import torch
from torch import nn

from esper.config import HeuristicConfig
from esper.contracts import TaskType
from esper.controller.heuristic import HeuristicController
from esper.data import load_digits
from esper.lifecycle import FactoredAction, LifecycleOp, SeedStage, transition
from esper.model.blueprints import blueprint_names
from esper.model.hosts import CNNHost, TransformerHost
from esper.model.morphogenetic import MorphogeneticModel
from esper.training import compute
from esper.training.batches import SplitBatches
from esper.training.builders import build_model
from esper.training.compute import eval_flops, train_flops
from esper.training.episode import EpisodeRunner, ScriptedController, run_episode
from esper.training.ledger import EpisodeResult
from esper.training.loop import evaluate
from esper.training.tasks import get_task

CLASSIFY = TaskType.CLASSIFICATION
LOSS = nn.CrossEntropyLoss()


def _tiny() -> tuple[MorphogeneticModel, tuple[torch.Tensor, torch.Tensor]]:
    """One 3x3 conv (1 -> 2 channels) on 4x4 images, no pooling, a linear head to 3."""
    host = CNNHost(in_channels=1, widths=(2,), num_classes=3, pooled_blocks=0)
    batch = (torch.randn(5, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1]))
    return MorphogeneticModel(host), batch


def _move(model: MorphogeneticModel, slot: str, stage: SeedStage) -> None:
    state = transition(model.slot(slot).state, stage)
    model.slot(slot).state = dataclasses.replace(state, blend_step=1)


def test_flops_match_a_hand_count_on_a_tiny_model() -> None:
    model, batch = _tiny()
    # Forward, per sample: the conv is 2 out x 1 in x 9 taps x 16 positions = 288
    # multiply-adds, the head 2 x 3 = 6; 2 FLOPs each.
    conv, head = 2 * 288, 2 * 6
    assert eval_flops(model, batch, LOSS, CLASSIFY) == conv + head
    # Backward: the head's input and weight gradients (2 x head); the conv's weight
    # gradient only, since the images need none.
    assert train_flops(model, batch, LOSS, CLASSIFY) == conv + head + 2 * head + conv

    # A conv_light seed (a 2 -> 2 3x3 conv, 576 multiply-adds) in TRAINING runs on the
    # detached features: its forward and its weight gradient, not its input gradient.
    model.germinate_seed("conv_light", "s1", slot="r0c0")
    _move(model, "r0c0", SeedStage.TRAINING)
    seed = 2 * 576
    host_step = conv + head + 2 * head + conv
    assert train_flops(model, batch, LOSS, CLASSIFY) == host_step + 2 * seed
    # Blending, the features' gradient flows through the seed too: one more pass.
    _move(model, "r0c0", SeedStage.BLENDING)
    assert train_flops(model, batch, LOSS, CLASSIFY) == host_step + 3 * seed
    # Evaluating without the seed reruns only what follows the slot: the head.
    assert eval_flops(model, batch, LOSS, CLASSIFY) == conv + seed + head
    assert eval_flops(model, batch, LOSS, CLASSIFY, ["r0c0"]) == conv + seed + 2 * head


def _grown_cnn() -> MorphogeneticModel:
    model = MorphogeneticModel(CNNHost(in_channels=3, widths=(4, 8, 8), num_classes=5))
    for sid, blueprint, stage in (
        ("r0c0", "conv_light", SeedStage.BLENDING),
        ("r0c1", "attention", SeedStage.PROBATIONARY),
        ("r0c2", "conv_heavy", SeedStage.FOSSILIZED),
    ):
        model.germinate_seed(blueprint, sid, slot=sid)
        for step in (SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.PROBATIONARY):
            if model.slot(sid).stage is not stage:
                _move(model, sid, step)
        if stage is SeedStage.FOSSILIZED:
            _move(model, sid, SeedStage.FOSSILIZED)
    return model


def _grown_transformer() -> MorphogeneticModel:
    model = MorphogeneticModel(TransformerHost(vocab_size=11, d_model=8, n_layer=3, n_head=2))
    for sid, blueprint in (("r0c0", "mlp"), ("r0c2", "attention")):
        model.germinate_seed(blueprint, sid, slot=sid)
        _move(model, sid, SeedStage.TRAINING)
        _move(model, sid, SeedStage.BLENDING)
    return model


@pytest.mark.parametrize("build", [_grown_cnn, _grown_transformer], ids=["cnn", "transformer"])
def test_counterfactual_branches_equal_full_passes_without_the_seed(
    build: Callable[[], MorphogeneticModel],
) -> None:
    torch.manual_seed(3)
    model = build().eval()
    if isinstance(model.host, CNNHost):
        inputs = torch.randn(6, 3, 16, 16)
        targets = torch.randint(0, 5, (6,))
        task = CLASSIFY
    else:
        inputs = torch.randint(0, 11, (6, 12))
        targets = torch.randint(0, 11, (6, 12))
        task = TaskType.LANGUAGE_MODEL
    live = [s.slot_id for s in model.slots() if s.alpha > 0]
    with torch.no_grad():
        output, branches = model.forward_counterfactual(inputs, live)
        assert torch.equal(output, model(inputs))
        for sid in live:
            with model.forced_alpha({sid: 0.0}):
                assert torch.equal(branches[sid], model(inputs)), sid
    # evaluate's paired counts agree with two separate passes, item by item.
    batches = [(inputs, targets)]
    paired = evaluate(model, batches, LOSS, task, torch.device("cpu"), counterfactual=live)
    for sid in live:
        without = evaluate(
            model, batches, LOSS, task, torch.device("cpu"), alpha_override={sid: 0.0}
        )
        assert paired.contributions[sid].pp == pytest.approx(paired.accuracy - without.accuracy)
        assert paired.contributions[sid].items == targets.numel()


def test_contributions_in_a_real_episode_equal_the_old_two_pass_measurement() -> None:
    task = get_task("digits")
    split = load_digits()
    config = dataclasses.replace(task.default_config(), epochs=9, seed=2)
    live = dataclasses.replace(config.training, counterfactuals="live")
    config = dataclasses.replace(config, training=live)  # blending seeds are measured too
    torch.manual_seed(2)
    model = build_model(task, split, lifecycle=config.lifecycle)
    data = SplitBatches(split, task.batch_size, seed=2)
    runner = EpisodeRunner(model, data, config)
    schedule = {1: FactoredAction(LifecycleOp.GERMINATE, "r0c1", "conv_light")}
    controller = ScriptedController(schedule)
    measured = 0
    while not runner.done:
        observation = runner.observe()
        pending = runner._pending
        assert pending is not None
        for sid, contribution in pending.val.contributions.items():
            old = evaluate(
                model,
                data.val_batches(),
                runner.criterion,
                data.task_type,
                runner.device,
                alpha_override={sid: 0.0},
            )
            assert contribution.pp == pytest.approx(pending.val.accuracy - old.accuracy)
            measured += 1
        runner.apply(controller.decide(observation.signals, observation.slots))
    assert measured >= 3  # blending from epoch 5 on


def test_compute_is_counted_once_per_architecture_and_leaves_the_run_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task = get_task("digits")
    split = load_digits()
    config = dataclasses.replace(task.default_config(), epochs=12, seed=1)
    calls: list[str] = []
    counted = compute.train_flops

    def spy(*args: object) -> float:
        calls.append("train")
        return counted(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(compute, "train_flops", spy)
    compute.clear_cache()

    def episode() -> tuple[list[float], list[float]]:
        torch.manual_seed(1)
        model = build_model(task, split, lifecycle=config.lifecycle)
        runner = EpisodeRunner(model, SplitBatches(split, task.batch_size, seed=1), config)
        schedule = {2: FactoredAction(LifecycleOp.GERMINATE, "r0c2", "conv_heavy")}
        result = run_episode(runner, ScriptedController(schedule))
        return [r.train.loss for r in result.history], [r.train_flops for r in result.history]

    losses, flops = episode()
    # The host alone, then one count per architecture the run trained (no seed, the
    # seed incubating, blending, on probation), never one per epoch.
    assert len(calls) == 1 + 4 < len(flops)
    assert len(set(flops)) == 3  # blending and probation run the same modules
    samples = len(split.train)  # type: ignore[arg-type]
    assert flops[0] == pytest.approx(flops[1]) and flops[0] > 0
    assert flops[-1] > flops[0] * 1.2  # the seed costs compute
    assert all(f / samples == pytest.approx(round(f / samples)) for f in flops)

    # A second episode in the same process counts nothing again.
    calls.clear()
    episode()
    assert calls == []
    # Counting draws nothing from the run's random streams: without it, same losses.
    compute.clear_cache()
    monkeypatch.setattr(compute, "train_flops", lambda *args: 0.0)
    monkeypatch.setattr(compute, "module_flops", lambda *args: (0.0, 0.0))
    try:
        assert episode()[0] == losses
    finally:
        compute.clear_cache()  # the zero counts must not outlive this test


def test_measuring_only_judged_seeds_changes_no_decision_and_costs_less() -> None:
    """'judged' measures seeds on probation only; the heuristic and the gates read
    nothing else, so the run is the same as with 'live', for fewer evaluation FLOPs."""
    task = get_task("digits")
    split = load_digits()

    def episode(mode: Literal["judged", "live"]) -> EpisodeResult:
        base = dataclasses.replace(task.default_config(), epochs=24, seed=4)
        config = dataclasses.replace(
            base, training=dataclasses.replace(base.training, counterfactuals=mode)
        )
        torch.manual_seed(4)
        model = build_model(task, split, lifecycle=config.lifecycle)
        data = SplitBatches(split, task.batch_size, seed=4)
        names = blueprint_names(task.topology)
        controller = HeuristicController(names, HeuristicConfig(), config.lifecycle)
        return run_episode(EpisodeRunner(model, data, config), controller)

    judged, live = episode("judged"), episode("live")
    assert [r.action for r in judged.history] == [r.action for r in live.history]
    assert [r.stages for r in judged.history] == [r.stages for r in live.history]
    assert [r.val.accuracy for r in judged.history] == [r.val.accuracy for r in live.history]
    assert any(r.action.op is LifecycleOp.FOSSILIZE for r in live.history)
    # Measured under 'judged': what was on probation when the epoch was evaluated (the
    # stages the epoch before ended with), and the fossils on the last epoch.
    before: list[Mapping[str, SeedStage]] = [
        dict.fromkeys(live.history[0].stages, SeedStage.DORMANT)
    ]
    before += [r.stages for r in judged.history[:-1]]
    for stages, record in zip(before, judged.history, strict=True):
        allowed = {SeedStage.PROBATIONARY}
        if record is judged.history[-1]:
            allowed.add(SeedStage.FOSSILIZED)
        assert {stages[sid] for sid in record.contributions} <= allowed, record.epoch
    assert any(SeedStage.BLENDING in r.stages.values() for r in live.history)
    for mine, theirs in zip(judged.history, live.history, strict=True):
        assert set(mine.contributions) <= set(theirs.contributions)
        for sid, contribution in mine.contributions.items():
            assert contribution == theirs.contributions[sid]
    assert sum(r.eval_flops for r in judged.history) < sum(r.eval_flops for r in live.history)
    assert [r.train_flops for r in judged.history] == [r.train_flops for r in live.history]


def test_a_count_is_of_the_host_as_it_is_now() -> None:
    # A merged width seed leaves no module at its slot: the host itself is wider, and
    # its slots read as an unmerged host's can. The count must be the wider host's, not
    # one cached for the host the meter started with (or any other of that layout).
    task, split = get_task("digits"), load_digits()
    narrow = build_model(task, split)
    wide = build_model(task, split, width_multiplier=2.0)
    inputs, targets = next(iter(SplitBatches(split, task.batch_size, seed=0).val_batches()))
    probe = (inputs[:8], targets[:8])
    compute.clear_cache()
    try:
        meter = compute.ComputeMeter(narrow, probe, nn.CrossEntropyLoss(), TaskType.CLASSIFICATION)
        assert meter.train_per_item(narrow) == pytest.approx(meter.host_train)
        wider = meter.train_per_item(wide)
        assert wider == pytest.approx(
            train_flops(wide, probe, nn.CrossEntropyLoss(), TaskType.CLASSIFICATION)
        )
        assert wider > 1.5 * meter.host_train
        assert meter.eval_per_item(wide, ()) > 1.5 * meter.host_eval
    finally:
        compute.clear_cache()
