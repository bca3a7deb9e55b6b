"""One test per finding of the review of the original training helpers (C1 .. L4).

The review (``shared/seeds/000_46de96437d6d9bbb.txt``) listed fourteen defects of the
original ``simic/training/helpers.py``. Each test below is named after one finding and
fails if that defect comes back: gradient statistics of the last batch only (C1), no or
joint clipping (C2), optimizers rebuilt on lifecycle events (H1), stale parameters in
an optimizer (H2), LM accuracy pinned to 0 (H3), telemetry changing training (M1),
action counts keyed by name (M2), validation truncated like training (M3),
batch-averaged loss (M4), off-by-one epochs or terminal reward (M5), a second batch
loop (L1), untyped signatures (L2), undocumented parameters (L3), incomplete ``__all__``
(L4).
"""

from __future__ import annotations

import ast
import copy
import importlib
import inspect
import math
import pkgutil
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

import esper
import esper.training.episode as episode_module
from esper.config import EpisodeConfig, GovernorConfig, OptimConfig, TrainingConfig
from esper.contracts import Decision, TaskType, Topology
from esper.data import SplitData, load_digits
from esper.lifecycle import BlendAlgorithm, FactoredAction, LifecycleConfig, LifecycleOp, SeedStage
from esper.model import Host, InjectionPoint, MorphogeneticModel, build_host
from esper.telemetry import (
    EpochCompleted,
    GateEvaluated,
    MemorySink,
    SeedGerminated,
    SeedGradients,
    Telemetry,
    TelemetryLevel,
)
from esper.training.batches import SplitBatches
from esper.training.builders import build_episode, run_episodes
from esper.training.episode import EpisodeRunner, ScriptedController, run_episode
from esper.training.ledger import EpisodeResult
from esper.training.loop import (
    EXPLODING_NORM,
    VANISHING_NORM,
    Batch,
    EpochMetrics,
    compiled_train_step,
    compute_task_loss_with_metrics,
    evaluate,
    train_one_epoch,
)
from esper.training.optim import OptimizerSet

CPU = torch.device("cpu")
CLASSIFY = TaskType.CLASSIFICATION
NO_GOVERNOR = GovernorConfig(enabled=False)  # a rollback would cull the scripted seeds


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # These models are tiny: a second intra-op thread buys nothing, and on a busy machine
    # its spin-waiting makes each step hundreds of times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- helpers


def _pairs(x: Tensor, y: Tensor) -> Dataset[tuple[Tensor, Tensor]]:
    return cast(Dataset[tuple[Tensor, Tensor]], TensorDataset(x, y))


def _random_images(n_train: int, n_val: int, seed: int = 0) -> SplitData:
    """Noise images shaped like sklearn digits, with random labels from 10 classes."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_val
    x, y = torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
    return SplitData(
        name="noise",
        train=_pairs(x[:n_train], y[:n_train]),
        val=_pairs(x[n_train:], y[n_train:]),
        num_classes=10,
        input_shape=(1, 8, 8),
    )


def _batches(x: Tensor, y: Tensor, size: int) -> list[Batch]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


def _digits_model(lifecycle: LifecycleConfig | None = None) -> MorphogeneticModel:
    return MorphogeneticModel(build_host("cnn_digits"), lifecycle=lifecycle)


def _grow_to_training(model: MorphogeneticModel, seeds: Mapping[str, str]) -> None:
    """Germinate ``{slot: blueprint}`` and tick once, so every new seed is TRAINING."""
    for sid, blueprint in seeds.items():
        model.germinate_seed(blueprint, f"seed-{sid}", slot=sid)
    model.step_epoch()
    assert all(model.slot(sid).stage is SeedStage.TRAINING for sid in seeds)


def _l2(tensors: Iterable[Tensor]) -> float:
    """Global L2 norm of several tensors, in float64 (independent of torch's helpers)."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


def _grads(params: Iterable[nn.Parameter]) -> list[Tensor]:
    return [p.grad for p in params if p.grad is not None]


def _owned_by_optimizers(optimizers: OptimizerSet) -> set[int]:
    """Ids of every parameter any optimizer of the set holds, in groups or in state."""
    opts = [optimizers.host, *optimizers.seeds.values()]
    held = {id(p) for opt in opts for group in opt.param_groups for p in group["params"]}
    return held | {id(p) for opt in opts for p in opt.state}


Momentum = list[tuple[Tensor, Tensor, Tensor]]


def _momentum(opt: torch.optim.Optimizer) -> Momentum:
    """(parameter, its momentum buffer, a copy of the buffer's values) for each param."""
    return [(p, s["momentum_buffer"], s["momentum_buffer"].clone()) for p, s in opt.state.items()]


def _assert_momentum_kept(opt: torch.optim.Optimizer, saved: Momentum) -> None:
    assert saved, "precondition: the optimizer had momentum to keep"
    for p, buffer, values in saved:
        assert opt.state[p]["momentum_buffer"] is buffer
        assert torch.equal(buffer, values)


class _PlainHost(Host):
    """A host with no normalisation layer: scaling a batch's inputs scales its gradients.

    (The registered CNN hosts use BatchNorm, which normalises input scale away.)
    """

    topology = Topology.CNN

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4, classes)

    def injection_points(self) -> list[InjectionPoint]:
        return [InjectionPoint("r0c0", 4, 1.0)]

    def forward_segment(self, index: int, h: Tensor) -> Tensor:
        return torch.relu(self.stem(h))

    def forward_head(self, h: Tensor) -> Tensor:
        return cast(Tensor, self.head(h.mean(dim=(2, 3))))


# ---------------------------------------------------------------- the scripted episode

# Fast gates, so one seed goes TRAINING -> BLENDING -> PROBATIONARY -> FOSSILIZED and a
# second is culled mid-blend, all in six epochs.
FAST_LIFECYCLE = LifecycleConfig(
    min_training_epochs=1,
    min_gradient_ratio=0.0,
    blending_steps=2,
    min_blending_epochs=1,
    embargo_epochs=1,
)
SCRIPTED_CONFIG = EpisodeConfig(
    epochs=6,
    max_live_seeds=2,
    training=TrainingConfig(max_batches=4),
    lifecycle=FAST_LIFECYCLE,
    governor=NO_GOVERNOR,
)
FOSSILIZE_EPOCH = 5
SCHEDULE = {
    1: FactoredAction(LifecycleOp.GERMINATE, "r0c0", "conv_light"),
    2: FactoredAction(LifecycleOp.GERMINATE, "r0c1", "attention", BlendAlgorithm.GATED),
    4: FactoredAction(LifecycleOp.CULL, "r0c1"),
    FOSSILIZE_EPOCH: FactoredAction(LifecycleOp.FOSSILIZE, "r0c0"),
}


@pytest.fixture(scope="module")
def digits() -> SplitData:
    return load_digits()


def _scripted_runner(digits: SplitData, telemetry: Telemetry | None = None) -> EpisodeRunner:
    torch.manual_seed(0)
    model = _digits_model(FAST_LIFECYCLE)
    data = SplitBatches(digits, batch_size=64, seed=0)
    return EpisodeRunner(model, data, SCRIPTED_CONFIG, telemetry)


@pytest.fixture(scope="module")
def scripted_debug(digits: SplitData) -> tuple[EpisodeResult, MorphogeneticModel, MemorySink]:
    """The scripted episode at DEBUG telemetry: result, trained model, every event."""
    sink = MemorySink()
    runner = _scripted_runner(digits, Telemetry(TelemetryLevel.DEBUG, [sink]))
    return run_episode(runner, ScriptedController(SCHEDULE)), runner.model, sink


# ---------------------------------------------------------------- C1


def test_c1_gradient_stats_cover_every_batch_of_the_epoch() -> None:
    torch.manual_seed(0)
    model = MorphogeneticModel(_PlainHost())
    _grow_to_training(model, {"r0c0": "bottleneck"})
    x, y = torch.randn(24, 1, 8, 8), torch.randint(0, 3, (24,))
    x[6:12] *= 30.0  # batch 1 of 4 (not the last) has far larger gradients
    batches = _batches(x, y, 6)

    # Expected per-batch pre-clip norms, replayed independently on an untouched copy.
    replay = copy.deepcopy(model)
    seed_norms, host_norms = [], []
    for inputs, targets in batches:
        replay.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(replay(inputs), targets).backward()
        seed_norms.append(_l2(_grads(replay.get_seed_parameters("r0c0"))))
        host_norms.append(_l2(_grads(replay.get_host_parameters())))
    assert max(seed_norms) == seed_norms[1] > 10 * max(seed_norms[2:] + seed_norms[:1])
    scale = math.sqrt(model.host_params / model.slot("r0c0").seed_param_count())
    ratios = [s / h * scale for s, h in zip(seed_norms, host_norms, strict=True)]

    frozen = OptimConfig(host_lr=0.0, seed_lr=0.0, weight_decay=0.0)  # replay stays valid
    optimizers = OptimizerSet(model, frozen)
    metrics = train_one_epoch(model, batches, optimizers, nn.CrossEntropyLoss(), CLASSIFY, CPU)

    stats = metrics.seed_gradients["r0c0"]
    assert stats.batches == len(batches) == 4
    assert stats.max_norm == pytest.approx(max(seed_norms), rel=1e-4)
    assert stats.min_norm == pytest.approx(min(seed_norms), rel=1e-4)
    assert stats.mean_norm == pytest.approx(sum(seed_norms) / 4, rel=1e-4)
    assert stats.ratio == pytest.approx(sum(ratios) / 4, rel=1e-4)
    assert stats.exploding_batches == sum(n > EXPLODING_NORM for n in seed_norms)
    assert stats.vanishing_batches == sum(n < VANISHING_NORM for n in seed_norms)
    assert metrics.host_grad_norm == pytest.approx(sum(host_norms) / 4, rel=1e-4)

    # Gate G2 reads the ratio: it is measured and recorded with telemetry OFF.
    torch.manual_seed(0)
    grown = _digits_model()
    config = EpisodeConfig(epochs=2, training=TrainingConfig(max_batches=2), governor=NO_GOVERNOR)
    data = SplitBatches(_random_images(64, 32), batch_size=16, seed=0)
    runner = EpisodeRunner(grown, data, config, Telemetry.off())
    result = run_episode(runner, ScriptedController({1: SCHEDULE[1]}))
    measured = result.history[-1].train.seed_gradients["r0c0"]
    assert measured.batches == 2
    assert measured.ratio > 0.0
    assert grown.slot("r0c0").state.gradient_ratio == measured.ratio


class _ScaledLoss(nn.Module):
    """Cross-entropy times a per-batch factor: scales every gradient of that batch."""

    def __init__(self, scales: list[float]) -> None:
        super().__init__()
        self.scales = scales

    def forward(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return nn.functional.cross_entropy(outputs, targets) * self.scales.pop(0)


def test_c1_exploding_and_vanishing_batches_are_counted() -> None:
    # The counters must move: one batch above EXPLODING_NORM, one below VANISHING_NORM.
    torch.manual_seed(0)
    model = MorphogeneticModel(_PlainHost())
    _grow_to_training(model, {"r0c0": "bottleneck"})
    x, y = torch.randn(24, 1, 8, 8), torch.randint(0, 3, (24,))
    scales = [1.0, 1e7, 1e-12, 1.0]
    optimizers = OptimizerSet(model, OptimConfig(host_lr=0.0, seed_lr=0.0, weight_decay=0.0))
    metrics = train_one_epoch(
        model, _batches(x, y, 6), optimizers, _ScaledLoss(list(scales)), CLASSIFY, CPU
    )
    stats = metrics.seed_gradients["r0c0"]
    assert stats.max_norm > EXPLODING_NORM and stats.min_norm < VANISHING_NORM
    assert (stats.exploding_batches, stats.vanishing_batches) == (1, 1)


# ---------------------------------------------------------------- C2


def test_c2_host_and_each_seed_are_clipped_separately() -> None:
    torch.manual_seed(0)
    model = _digits_model()
    _grow_to_training(model, {"r0c0": "conv_light", "r0c1": "norm"})
    plain_sgd = OptimConfig(host_lr=1.0, seed_lr=1.0, momentum=0.0, weight_decay=0.0)
    optimizers = OptimizerSet(model, plain_sgd)
    groups = optimizers.clip_groups()
    assert set(groups) == {"host", "r0c0", "r0c1"}
    before = {name: [p.detach().clone() for p in params] for name, params in groups.items()}
    clip = 1e-3
    batch = (torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,)))

    metrics = train_one_epoch(
        model, [batch], optimizers, nn.CrossEntropyLoss(), CLASSIFY, CPU, max_grad_norm=clip
    )

    # The recorded norms are pre-clip, and every group really needed clipping.
    assert metrics.host_grad_norm > 10 * clip
    assert all(metrics.seed_gradients[sid].max_norm > 10 * clip for sid in ("r0c0", "r0c1"))
    for name, params in groups.items():
        # With lr = 1 and no momentum, a group's step is exactly its clipped gradient.
        # Joint clipping would leave each group's step well below the clip norm.
        moved = _l2(p.detach() - old for p, old in zip(params, before[name], strict=True))
        assert moved <= clip * 1.001, name
        assert moved == pytest.approx(clip, rel=1e-2), name


def test_c2_the_episode_clips_with_the_configured_max_grad_norm(digits: SplitData) -> None:
    # Through EpisodeRunner, so the wiring of TrainingConfig.max_grad_norm is tested too.
    torch.manual_seed(0)
    model = _digits_model()
    _grow_to_training(model, {"r0c0": "conv_light"})
    clip = 1e-3
    config = EpisodeConfig(
        epochs=1,
        training=TrainingConfig(max_batches=1, max_grad_norm=clip),
        optim=OptimConfig(
            host_lr=1.0, seed_lr=1.0, momentum=0.0, weight_decay=0.0, lr_schedule="constant"
        ),
        governor=NO_GOVERNOR,
    )
    runner = EpisodeRunner(model, SplitBatches(digits, batch_size=64, seed=0), config)
    groups = runner.optimizers.clip_groups()
    before = {name: [p.detach().clone() for p in params] for name, params in groups.items()}
    runner.observe()
    record = runner.apply(Decision(FactoredAction.wait()))
    assert record.train.host_grad_norm > 10 * clip
    assert record.train.seed_gradients["r0c0"].max_norm > 10 * clip
    for name, params in groups.items():
        # One plain SGD step at lr 1 moves each group by exactly its clipped gradient.
        moved = _l2(p.detach() - old for p, old in zip(params, before[name], strict=True))
        assert moved == pytest.approx(clip, rel=1e-2), name


# ---------------------------------------------------------------- H1


def test_h1_germinating_or_culling_a_seed_keeps_other_seeds_optimizer_state() -> None:
    torch.manual_seed(0)
    lifecycle = LifecycleConfig(min_training_epochs=1, blending_steps=1, min_blending_epochs=1)
    model = _digits_model(lifecycle)
    _grow_to_training(model, {"r0c0": "conv_light", "r0c1": "norm"})
    optimizers = OptimizerSet(model, OptimConfig(momentum=0.9, weight_decay=0.0))
    x, y = torch.randn(48, 1, 8, 8), torch.randint(0, 10, (48,))
    train_one_epoch(model, _batches(x, y, 16), optimizers, nn.CrossEntropyLoss(), CLASSIFY, CPU)
    seed_a, host = optimizers.seeds["r0c0"], optimizers.host
    a_momentum, host_momentum = _momentum(seed_a), _momentum(host)

    model.germinate_seed("depthwise", "seed-c", slot="r0c2")
    optimizers.sync(model)
    assert set(optimizers.seeds) == {"r0c0", "r0c1", "r0c2"}
    assert optimizers.seeds["r0c0"] is seed_a and optimizers.host is host
    _assert_momentum_kept(seed_a, a_momentum)
    _assert_momentum_kept(host, host_momentum)

    model.cull_seed("r0c1")
    optimizers.sync(model)
    assert set(optimizers.seeds) == {"r0c0", "r0c2"}
    assert optimizers.seeds["r0c0"] is seed_a and optimizers.host is host
    _assert_momentum_kept(seed_a, a_momentum)
    _assert_momentum_kept(host, host_momentum)

    # Fossilizing A: its parameters join the host optimizer with their momentum.
    model.slot("r0c0").record(gradient_ratio=1.0)
    model.step_epoch()  # TRAINING -> BLENDING (alpha 1 after one step)
    model.step_epoch()  # BLENDING -> PROBATIONARY
    model.slot("r0c0").record(contribution=5.0)
    assert model.fossilize_seed("r0c0").passed
    optimizers.sync(model)
    assert "r0c0" not in optimizers.seeds and optimizers.host is host
    _assert_momentum_kept(host, a_momentum)  # the very same buffers, now the host's
    _assert_momentum_kept(host, host_momentum)
    optimizers.check_ownership(model)


# ---------------------------------------------------------------- H2


def test_h2_culled_seed_parameters_leave_every_optimizer(digits: SplitData) -> None:
    torch.manual_seed(0)
    model = _digits_model()
    _grow_to_training(model, {"r0c0": "conv_light", "r0c1": "conv_light"})
    optimizers = OptimizerSet(model, OptimConfig())
    x, y = torch.randn(48, 1, 8, 8), torch.randint(0, 10, (48,))
    train = _batches(x, y, 16)
    train_one_epoch(model, train, optimizers, nn.CrossEntropyLoss(), CLASSIFY, CPU)
    culled = model.get_seed_parameters("r0c1")
    culled_values = [p.detach().clone() for p in culled]

    model.cull_seed("r0c1")
    optimizers.sync(model)
    optimizers.check_ownership(model)
    assert not {id(p) for p in culled} & _owned_by_optimizers(optimizers)
    train_one_epoch(model, train, optimizers, nn.CrossEntropyLoss(), CLASSIFY, CPU)
    assert all(torch.equal(p, v) for p, v in zip(culled, culled_values, strict=True))

    # The invariant after every epoch of a scripted episode: germinate, train, blend,
    # probation, fossilize and cull. Each trainable parameter has exactly one owner.
    runner = _scripted_runner(digits)
    controller = ScriptedController(SCHEDULE)
    stages_seen: set[SeedStage] = set()
    removed: list[nn.Parameter] = []
    while not runner.done:
        observation = runner.observe()
        decision = controller.decide(observation.signals, observation.slots)
        action = decision.action
        if action.op is LifecycleOp.FOSSILIZE:
            # G5 is not under test here: make its measured contribution clear the bar.
            runner.model.slot("r0c0").record(contribution=5.0)
        if action.op is LifecycleOp.CULL:
            removed = runner.model.get_seed_parameters("r0c1")
        record = runner.apply(decision)
        assert record.outcome == "applied", record.outcome
        runner.optimizers.check_ownership(runner.model)
        in_model = {id(p) for p in runner.model.parameters() if p.requires_grad}
        assert _owned_by_optimizers(runner.optimizers) == in_model
        assert not {id(p) for p in removed} & _owned_by_optimizers(runner.optimizers)
        stages_seen |= set(record.stages.values())
    assert {
        SeedStage.TRAINING,
        SeedStage.BLENDING,
        SeedStage.PROBATIONARY,
        SeedStage.FOSSILIZED,
        SeedStage.EMBARGOED,
    } <= stages_seen
    assert removed, "precondition: the episode culled a seed"


# ---------------------------------------------------------------- H3


def test_h3_language_model_accuracy_counts_correct_tokens() -> None:
    targets = torch.tensor([[0, 1, 2], [3, 4, 0]])
    hits = torch.tensor([[True, False, True], [True, True, False]])  # 4 of 6 correct
    predicted = torch.where(hits, targets, (targets + 1) % 5)
    outputs = nn.functional.one_hot(predicted, 5).float() * 4.0  # [B=2, T=3, V=5]
    loss, correct, count = compute_task_loss_with_metrics(
        outputs, targets, nn.CrossEntropyLoss(), TaskType.LANGUAGE_MODEL
    )
    assert int(correct) == 4 and count == 6
    expected = nn.functional.cross_entropy(outputs.reshape(6, 5), targets.reshape(6))
    assert torch.allclose(loss, expected)

    # A repeating 0 1 2 3 pattern: next-token prediction is trivially learnable.
    torch.manual_seed(0)
    stream = torch.arange(40) % 4
    x = torch.stack([stream[i : i + 8] for i in range(32)])
    y = torch.stack([stream[i + 1 : i + 9] for i in range(32)])
    host = build_host("transformer", vocab_size=4, d_model=16, n_layer=1, n_head=2, block_size=8)
    model = MorphogeneticModel(host)
    lm = TaskType.LANGUAGE_MODEL

    adamw = OptimizerSet(model, OptimConfig(kind="adamw", host_lr=1e-2, weight_decay=0.0))
    for _ in range(6):
        metrics = train_one_epoch(model, _batches(x, y, 8), adamw, nn.CrossEntropyLoss(), lm, CPU)
    assert metrics.samples == 32 * 8  # every token is scored
    assert metrics.accuracy > 90.0

    # With lr = 0 the reported accuracy is exactly the share of correct tokens.
    with torch.no_grad():
        expected_acc = 100.0 * float((model(x).argmax(-1) == y).float().mean())
    frozen = OptimizerSet(model, OptimConfig(host_lr=0.0, seed_lr=0.0, weight_decay=0.0))
    metrics = train_one_epoch(model, _batches(x, y, 8), frozen, nn.CrossEntropyLoss(), lm, CPU)
    assert metrics.accuracy == pytest.approx(expected_acc)


# ---------------------------------------------------------------- M1


def _same_state(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    return all(torch.equal(a[k], b[k]) if isinstance(a[k], Tensor) else a[k] == b[k] for k in a)


def test_m1_telemetry_level_is_one_enum_and_only_observes(
    digits: SplitData, scripted_debug: tuple[EpisodeResult, MorphogeneticModel, MemorySink]
) -> None:
    debug_result, debug_model, debug_sink = scripted_debug
    off_sink = MemorySink()
    off_runner = _scripted_runner(digits, Telemetry(TelemetryLevel.OFF, [off_sink]))
    off_result = run_episode(off_runner, ScriptedController(SCHEDULE))

    assert _same_state(off_runner.model.state_dict(), debug_model.state_dict())
    assert off_result.rewards == debug_result.rewards
    assert [r.val for r in off_result.history] == [r.val for r in debug_result.history]
    assert off_sink.events == []
    for kind in (SeedGerminated, EpochCompleted, GateEvaluated, SeedGradients):
        assert debug_sink.of_type(kind), kind.__name__

    assert list(TelemetryLevel) == sorted(TelemetryLevel)
    assert TelemetryLevel.parse("debug") is TelemetryLevel.DEBUG
    assert TelemetryLevel.parse(" Lifecycle ") is TelemetryLevel.LIFECYCLE
    assert TelemetryLevel.parse("OFF") is TelemetryLevel.OFF
    with pytest.raises(ValueError, match="normal"):
        TelemetryLevel.parse("verbose")


# ---------------------------------------------------------------- M2


def test_m2_action_counts_are_keyed_by_lifecycle_op(
    scripted_debug: tuple[EpisodeResult, MorphogeneticModel, MemorySink],
) -> None:
    result = scripted_debug[0]
    counts = result.action_counts
    # IntEnum members equal their ints, so check the key type as well as the set.
    assert all(type(op) is LifecycleOp for op in counts)
    assert set(counts) == set(LifecycleOp)
    assert counts[LifecycleOp.GERMINATE] == 2
    assert counts[LifecycleOp.CULL] == 1
    assert counts[LifecycleOp.FOSSILIZE] == 1
    assert counts[LifecycleOp.WAIT] == SCRIPTED_CONFIG.epochs - len(SCHEDULE)
    assert result.to_json()["action_counts"] == {op.name: n for op, n in counts.items()}


# ---------------------------------------------------------------- M3


def _wait_episode(split: SplitData, training: TrainingConfig, val_batch: int) -> EpisodeResult:
    torch.manual_seed(0)
    config = EpisodeConfig(epochs=2, training=training, governor=NO_GOVERNOR)
    data = SplitBatches(split, batch_size=8, seed=0, val_batch_size=val_batch)
    return run_episode(EpisodeRunner(_digits_model(), data, config), ScriptedController({}))


def test_m3_validation_covers_the_whole_set_by_default() -> None:
    split = _random_images(n_train=40, n_val=40)
    full = _wait_episode(split, TrainingConfig(max_batches=1), val_batch=16)
    assert [r.train.batches for r in full.history] == [1, 1]
    assert [r.val.samples for r in full.history] == [40, 40]

    one = _wait_episode(split, TrainingConfig(max_batches=1, max_val_batches=1), val_batch=16)
    assert [r.val.samples for r in one.history] == [16, 16]


# ---------------------------------------------------------------- M4


def test_m4_loss_is_sample_weighted_and_batch_limit_agrees() -> None:
    torch.manual_seed(0)
    model = MorphogeneticModel(_PlainHost())
    x, y = torch.randn(10, 1, 8, 8), torch.randint(0, 3, (10,))
    x[8:] *= 20.0  # the short last batch (2 samples) has a very different loss
    batches = _batches(x, y, 4)
    assert [len(t) for _, t in batches] == [4, 4, 2]
    with torch.no_grad():
        full_loss = float(nn.functional.cross_entropy(model(x), y))
        first8_loss = float(nn.functional.cross_entropy(model(x[:8]), y[:8]))
        full_acc = 100.0 * float((model(x).argmax(-1) == y).float().mean())
        per_batch = [float(nn.functional.cross_entropy(model(a), b)) for a, b in batches]
    batch_mean = sum(per_batch) / len(per_batch)
    assert abs(batch_mean - full_loss) > 0.01 * full_loss, "precondition: weighting matters"

    frozen = OptimConfig(host_lr=0.0, seed_lr=0.0, weight_decay=0.0)
    criterion = nn.CrossEntropyLoss()
    metrics = train_one_epoch(model, batches, OptimizerSet(model, frozen), criterion, CLASSIFY, CPU)
    assert (metrics.batches, metrics.samples) == (3, 10)
    assert metrics.loss == pytest.approx(full_loss, rel=1e-5)
    assert metrics.accuracy == pytest.approx(full_acc)

    limited = train_one_epoch(
        model, batches, OptimizerSet(model, frozen), criterion, CLASSIFY, CPU, max_batches=2
    )
    assert (limited.batches, limited.samples) == (2, 8)
    assert limited.loss == pytest.approx(first8_loss, rel=1e-5)

    # evaluate weights by samples the same way.
    val = evaluate(model, batches, criterion, CLASSIFY, CPU)
    assert val.samples == 10
    assert val.loss == pytest.approx(full_loss, rel=1e-5)


# ---------------------------------------------------------------- M5


def test_m5_epochs_are_one_based_and_terminal_reward_is_on_the_last_epoch(
    scripted_debug: tuple[EpisodeResult, MorphogeneticModel, MemorySink],
) -> None:
    result = scripted_debug[0]
    n = SCRIPTED_CONFIG.epochs
    assert [r.epoch for r in result.history] == list(range(1, n + 1))
    assert len(result.rewards) == n
    assert list(result.rewards) == [r.reward.total for r in result.history]
    assert [r.reward.terminal != 0.0 for r in result.history] == [False] * (n - 1) + [True]
    last = result.history[-1]
    weight = SCRIPTED_CONFIG.reward.accuracy_weight
    assert last.reward.terminal == pytest.approx(weight * last.val.accuracy)
    # The scripted actions landed on the epochs they were scheduled for.
    for epoch, action in SCHEDULE.items():
        assert result.history[epoch - 1].action == action


# ---------------------------------------------------------------- L1

SRC = Path(esper.__file__).parent
# The batch loop, the PPO update, and the FLOP counter (one backward of a probe batch on
# a copy of the model, counted, never stepped).
BACKWARD_ALLOWED = {"training/loop.py", "rl/ppo.py", "training/compute.py"}


def _backward_calls(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "backward"
    ]


def test_l1_there_is_one_batch_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {p.relative_to(SRC).as_posix(): _backward_calls(p) for p in SRC.rglob("*.py")}
    outside = {path: lines for path, lines in calls.items() if lines}
    assert calls["training/loop.py"], "the batch loop calls backward"
    assert set(outside) <= BACKWARD_ALLOWED, outside

    # The heuristic path trains through that loop: once per epoch.
    counted: list[int] = []

    def counting(*args: Any, **kwargs: Any) -> EpochMetrics:
        counted.append(1)
        return train_one_epoch(*args, **kwargs)

    monkeypatch.setattr(episode_module, "train_one_epoch", counting)
    config = EpisodeConfig(epochs=2, training=TrainingConfig(max_batches=1), governor=NO_GOVERNOR)
    data = SplitBatches(_random_images(16, 16), batch_size=8, seed=0)
    run_episode(EpisodeRunner(_digits_model(), data, config), ScriptedController({}))
    assert len(counted) == 2


# ---------------------------------------------------------------- L2

REVIEWED: list[Callable[..., Any]] = [
    build_episode,
    run_episodes,
    train_one_epoch,
    evaluate,
    compute_task_loss_with_metrics,
    compiled_train_step,
]


@pytest.mark.parametrize("function", REVIEWED, ids=lambda f: f.__name__)
def test_l2_reviewed_functions_are_fully_typed(function: Callable[..., Any]) -> None:
    signature = inspect.signature(function, eval_str=True)  # annotations must resolve
    untyped = [n for n, p in signature.parameters.items() if p.annotation is p.empty]
    assert untyped == []
    assert signature.return_annotation is not signature.empty


# ---------------------------------------------------------------- L3


def _documented_args(function: Callable[..., Any]) -> list[str]:
    """Names in the ``Args:`` section of a Google-style docstring."""
    doc = inspect.getdoc(function) or ""
    section = re.search(r"^Args:\n(.*?)(?:^\S|\Z)", doc, re.MULTILINE | re.DOTALL)
    assert section is not None, f"{function.__name__} has no Args section"
    return re.findall(r"^    (\w+)\b.*?:", section.group(1), re.MULTILINE)


@pytest.mark.parametrize("function", [build_episode, run_episodes], ids=lambda f: f.__name__)
def test_l3_docstrings_document_every_parameter(function: Callable[..., Any]) -> None:
    parameters = list(inspect.signature(function).parameters)
    assert _documented_args(function) == parameters


# ---------------------------------------------------------------- L4


def _module_names() -> list[str]:
    # A __main__ module runs its program when imported: it is a script, not an API.
    names = (info.name for info in pkgutil.walk_packages(esper.__path__, "esper."))
    return sorted(name for name in names if not name.endswith(".__main__"))


@pytest.mark.parametrize("module_name", ["esper", *_module_names()])
def test_l4_every_public_module_declares_all(module_name: str) -> None:
    module: ModuleType = importlib.import_module(module_name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{module_name} has no __all__"
    assert [n for n in exported if not hasattr(module, n)] == []
    defined_here = [
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and obj.__module__ == module_name
    ]
    assert sorted(set(defined_here) - set(exported)) == []
