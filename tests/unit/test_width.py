"""Width seeds: new units in a host's layer, with the lifecycle of every seed.

Every width blueprint at every width point of the CNN hosts and the transformer: in
TRAINING the host is bit-identical (output and gradients) whatever the seed holds; a
blend scales the new units' fan-out; a merge makes the host a plain wider network whose
outputs are the blended model's at alpha 1, whose next optimizer step is the unmerged
model's, and whose state loads into a fresh model (and back, for a rollback)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from esper.config import OptimConfig
from esper.contracts import Topology
from esper.lifecycle import SeedStage
from esper.model import MorphogeneticModel, build_host
from esper.model.blueprints import GrowthKind, blueprint_names, get_blueprint
from esper.model.width import WidthSeed
from esper.training.optim import OptimizerSet
from tests.seeds import walk_to

HOSTS = {
    "cnn": lambda: build_host("cnn", widths=(4, 6, 8)),
    "digits": lambda: build_host("cnn_digits", in_channels=1, widths=(2, 4, 8)),
    "transformer": lambda: build_host("transformer", d_model=16, n_layer=2, n_head=2),
}


def _cases() -> Iterator[tuple[str, str, str]]:
    for host, make in HOSTS.items():
        built = make()
        for name in blueprint_names(built.topology, GrowthKind.WIDTH):
            for point in built.width_points():
                yield host, name, point.slot_id


CASES = list(_cases())
IDS = [f"{h}-{b}-{s}" for h, b, s in CASES]


def _batch(host: str) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(3)
    if host == "transformer":
        x = torch.randint(0, 96, (4, 12), generator=generator)
        return x, torch.randint(0, 96, (4, 12), generator=generator)
    channels, size = (1, 8) if host == "digits" else (3, 32)
    x = torch.randn(8, channels, size, size, generator=generator)
    return x, torch.randint(0, 10, (8,), generator=generator)


def _loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    out = model(x)
    return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def _grown(
    host: str, blueprint: str, slot: str, stage: SeedStage
) -> tuple[MorphogeneticModel, MorphogeneticModel]:
    torch.manual_seed(0)
    bare = MorphogeneticModel(HOSTS[host]())
    grown = copy.deepcopy(bare)
    grown.germinate_seed(blueprint, "w", slot=slot)
    walk_to(grown, slot, stage)
    return bare, grown


@pytest.mark.parametrize(("host", "blueprint", "slot"), CASES, ids=IDS)
def test_a_training_width_seed_leaves_the_host_bit_identical(
    host: str, blueprint: str, slot: str
) -> None:
    bare, grown = _grown(host, blueprint, slot, SeedStage.TRAINING)
    x, y = _batch(host)
    loss_bare, loss_grown = _loss(bare, x, y), _loss(grown, x, y)
    loss_bare.backward()
    loss_grown.backward()
    assert torch.equal(loss_bare, loss_grown)
    grads = {n: p.grad for n, p in grown.host.named_parameters()}
    for name, param in bare.host.named_parameters():
        assert torch.equal(param.grad, grads[name]), name  # type: ignore[arg-type]
    seed = grown.slot(slot).seed
    units = get_blueprint(grown.host.topology, blueprint).units
    assert isinstance(seed, WidthSeed) and units is not None
    assert seed.units == units(_units(grown, slot))
    # The seed learns straight through, as if fully blended: every parameter gets gradient.
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in seed.parameters())


def _units(model: MorphogeneticModel, slot: str) -> int:
    point = model.slot(slot).width_point
    assert point is not None
    layer = model.host.get_submodule(point.producer)
    assert isinstance(layer, nn.Conv2d | nn.Linear)
    return int(layer.weight.shape[0])


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
@pytest.mark.parametrize(
    ("host", "blueprint", "slot"), CASES[:3] + CASES[-3:], ids=IDS[:3] + IDS[-3:]
)
def test_a_non_finite_width_seed_leaves_the_host_untouched(
    host: str, blueprint: str, slot: str, poison: float
) -> None:
    bare, grown = _grown(host, blueprint, slot, SeedStage.TRAINING)
    with torch.no_grad():
        for param in grown.get_seed_parameters(slot):
            param.fill_(poison)
    x, _ = _batch(host)
    assert torch.equal(bare(x), grown(x))


@pytest.mark.parametrize(("host", "blueprint", "slot"), CASES, ids=IDS)
def test_blending_scales_the_new_units_fan_out(host: str, blueprint: str, slot: str) -> None:
    bare, grown = _grown(host, blueprint, slot, SeedStage.PROBATIONARY)
    x, _ = _batch(host)
    with torch.no_grad():
        full, without = grown(x), bare(x)
        with grown.forced_alpha({slot: 0.25}):
            quarter = grown(x)
        with grown.forced_alpha({slot: 0.0}):
            assert torch.equal(grown(x), without)
    if host != "transformer":  # linear in alpha up to the consumer; CNN heads are linear
        point = grown.slot(slot).width_point
        if point is not None and point.consumers[0].name == "classifier":
            torch.testing.assert_close(quarter, without + 0.25 * (full - without))
    assert not torch.equal(quarter, without) and not torch.equal(quarter, full)


@pytest.mark.parametrize(("host", "blueprint", "slot"), CASES, ids=IDS)
def test_a_counterfactual_without_the_width_seed_is_the_bare_host(
    host: str, blueprint: str, slot: str
) -> None:
    bare, grown = _grown(host, blueprint, slot, SeedStage.PROBATIONARY)
    grown.eval(), bare.eval()
    x, _ = _batch(host)
    with torch.no_grad():
        output, branches = grown.forward_counterfactual(x, [slot])
        torch.testing.assert_close(output, grown(x), rtol=0, atol=0)
        torch.testing.assert_close(branches[slot], bare(x))


@pytest.mark.parametrize(("host", "blueprint", "slot"), CASES, ids=IDS)
def test_a_merged_width_seed_is_a_plain_wider_host(host: str, blueprint: str, slot: str) -> None:
    _, grown = _grown(host, blueprint, slot, SeedStage.PROBATIONARY)
    grown.eval()
    x, _ = _batch(host)
    seed = grown.slot(slot).seed
    assert isinstance(seed, WidthSeed)
    added = sum(p.numel() for p in seed.parameters())
    host_params, before_seeds = grown.host_params, grown.active_seed_params
    with torch.no_grad():
        blended = grown(x)
    grown.slot(slot).state = dataclasses.replace(
        grown.slot(slot).state, contribution=5.0, contribution_se=0.5
    )
    kept = grown.fossilize_seed(slot)
    assert kept.passed and kept.swaps
    assert grown.slot(slot).stage is SeedStage.FOSSILIZED and grown.slot(slot).seed is None
    assert not any(m._forward_hooks for m in grown.host.modules())  # nothing runs beside it
    with torch.no_grad():
        torch.testing.assert_close(grown(x), blended, rtol=1e-5, atol=1e-6)
    assert grown.host_params == host_params  # the host as built...
    assert grown.active_seed_params == before_seeds == added  # ...the merged units added
    assert _units(grown, slot) == _units_before(host, slot) + seed.units


def _units_before(host: str, slot: str) -> int:
    return _units(MorphogeneticModel(HOSTS[host]()), slot)


def _merged_and_unmerged(
    host: str, blueprint: str, slot: str, kind: str
) -> tuple[MorphogeneticModel, OptimizerSet, MorphogeneticModel, OptimizerSet]:
    config = OptimConfig(kind=kind, host_lr=0.05, seed_lr=0.05)  # type: ignore[arg-type]
    _, grown = _grown(host, blueprint, slot, SeedStage.PROBATIONARY)
    optimizers = OptimizerSet(grown, config)
    x, y = _batch(host)
    for _ in range(2):  # some optimizer state to carry over (momentum, Adam's moments)
        optimizers.zero_grad()
        _loss(grown, x, y).backward()
        optimizers.step()
    twin = copy.deepcopy(grown)
    twin_optimizers = OptimizerSet.restore(twin, config, copy.deepcopy(optimizers.state_dict()))
    grown.slot(slot).state = dataclasses.replace(
        grown.slot(slot).state, contribution=5.0, contribution_se=0.5
    )
    optimizers.merge(slot, grown.fossilize_seed(slot).swaps)
    optimizers.sync(grown)
    optimizers.check_ownership(grown)
    return grown, optimizers, twin, twin_optimizers


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
@pytest.mark.parametrize(("host", "blueprint", "slot"), CASES[::4], ids=IDS[::4])
def test_one_step_after_a_merge_is_one_step_of_the_unmerged_model(
    host: str, blueprint: str, slot: str, kind: str
) -> None:
    merged, optimizers, twin, twin_optimizers = _merged_and_unmerged(host, blueprint, slot, kind)
    x, y = _batch(host)
    for model, opt in ((merged, optimizers), (twin, twin_optimizers)):
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()
    merged.eval(), twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(x), twin(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("host", "blueprint", "slot"), CASES[::3], ids=IDS[::3])
def test_a_merged_state_loads_into_a_fresh_model_and_back(
    host: str, blueprint: str, slot: str
) -> None:
    before, grown = _grown(host, blueprint, slot, SeedStage.PROBATIONARY)
    snapshot = copy.deepcopy(grown.state_dict())  # a live width seed, before the merge
    grown.slot(slot).state = dataclasses.replace(
        grown.slot(slot).state, contribution=5.0, contribution_se=0.5
    )
    grown.fossilize_seed(slot)
    grown.eval()
    x, _ = _batch(host)
    fresh = MorphogeneticModel(HOSTS[host]())
    fresh.load_state_dict(grown.state_dict())  # resume after the merge: wider layers
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), grown(x))
    assert fresh.active_seed_params == grown.active_seed_params
    grown.load_state_dict(snapshot)  # a rollback to before the merge: narrower, seed live
    grown.eval()
    assert isinstance(grown.slot(slot).seed, WidthSeed)
    reference = copy.deepcopy(before)
    reference.load_state_dict(snapshot)
    reference.eval()
    with torch.no_grad():
        assert torch.equal(grown(x), reference(x))


@pytest.mark.parametrize(("host", "blueprint", "slot"), CASES[::5], ids=IDS[::5])
def test_a_culled_width_seed_leaves_the_host_as_it_was(
    host: str, blueprint: str, slot: str
) -> None:
    bare, grown = _grown(host, blueprint, slot, SeedStage.BLENDING)
    grown.cull_seed(slot)
    x, _ = _batch(host)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in grown.host.modules())
    with torch.no_grad():
        assert torch.equal(grown(x), bare(x))


def test_every_width_point_names_layers_of_its_host() -> None:
    for make in HOSTS.values():
        host = make()
        assert len(host.width_points()) == len(host.injection_points())
        for point in host.width_points():
            assert isinstance(host.get_submodule(point.producer), nn.Conv2d | nn.Linear)
            for consumer in point.consumers:
                assert isinstance(host.get_submodule(consumer.name), nn.Conv2d | nn.Linear)
    assert blueprint_names(Topology.CNN, GrowthKind.WIDTH) == ["width_25", "width_50", "width_100"]


@pytest.mark.parametrize("order", [("r0c0", "r0c1"), ("r0c1", "r0c0")], ids=["up", "down"])
@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_neighbouring_width_seeds_merge_in_either_order(order: tuple[str, str], kind: str) -> None:
    # Block 0's new channels are read by block 1's conv, whose outputs block 1's seed
    # widens: the seed still live when the other merges is fitted to the wider layers
    # (new fan-in columns or fan-out rows, at zero), and nothing its output jumps.
    config = OptimConfig(kind=kind, host_lr=0.05, seed_lr=0.05)  # type: ignore[arg-type]
    torch.manual_seed(0)
    model = MorphogeneticModel(HOSTS["digits"]())
    for slot in ("r0c0", "r0c1"):
        model.germinate_seed("width_100", slot, slot=slot)
        walk_to(model, slot, SeedStage.PROBATIONARY)
        model.slot(slot).state = dataclasses.replace(
            model.slot(slot).state, contribution=5.0, contribution_se=0.5
        )
    optimizers = OptimizerSet(model, config)
    x, y = _batch("digits")
    for slot in order:
        optimizers.zero_grad()
        _loss(model, x, y).backward()
        optimizers.step()
        model.eval()
        with torch.no_grad():
            before = model(x)
        optimizers.merge(slot, model.fossilize_seed(slot).swaps)
        optimizers.sync(model)
        optimizers.check_ownership(model)
        with torch.no_grad():
            torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)
            fresh = MorphogeneticModel(HOSTS["digits"]())  # a resume at this point
            fresh.load_state_dict(model.state_dict())
            assert torch.equal(fresh.eval()(x), model(x))
        model.train()
    optimizers.zero_grad()
    _loss(model, x, y).backward()
    optimizers.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert [_units(model, s) for s in ("r0c0", "r0c1")] == [4, 8]
