"""Gradient isolation: an incubating seed is invisible to the host; a blending one is not."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from esper.lifecycle import SeedStage
from esper.model import CNNHost, MorphogeneticModel, TransformerHost, build_host


def _batch(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "transformer":
        x = torch.randint(0, 96, (4, 16))
        return x, torch.randint(0, 96, (4, 16))
    return torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def _host_grads(model: MorphogeneticModel) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.host.named_parameters() if p.grad is not None}


CASES = [
    ("cnn", "conv_heavy", "r0c1"),
    ("transformer", "mlp", "r0c1"),
    ("transformer", "attention", "r0c0"),
]


@pytest.mark.parametrize(("host", "blueprint", "slot"), CASES)
def test_training_seed_leaves_output_and_host_gradients_bit_identical(
    host: str, blueprint: str, slot: str
) -> None:
    bare = MorphogeneticModel(build_host(host))
    grown = copy.deepcopy(bare)
    grown.germinate_seed(blueprint, "s", slot=slot)
    grown.step_epoch()
    assert grown.slot(slot).stage is SeedStage.TRAINING
    x, y = _batch(host)
    torch.manual_seed(1)
    loss_bare = _loss(bare, x, y)
    loss_bare.backward()
    torch.manual_seed(1)
    loss_grown = _loss(grown, x, y)
    loss_grown.backward()
    assert torch.equal(loss_bare, loss_grown)
    bare_grads, grown_grads = _host_grads(bare), _host_grads(grown)
    assert bare_grads.keys() == grown_grads.keys()
    for name, grad in bare_grads.items():
        assert torch.equal(grad, grown_grads[name]), name
    # ...while the seed itself learns, straight through, as if fully blended.
    seed_grads = [p.grad for p in grown.get_seed_parameters(slot)]
    assert all(g is not None and g.abs().sum() > 0 for g in seed_grads)


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
@pytest.mark.parametrize(("host", "blueprint", "slot"), CASES)
def test_a_non_finite_training_seed_leaves_output_and_host_gradients_bit_identical(
    host: str, blueprint: str, slot: str, poison: float
) -> None:
    # h + (s - s.detach()) would be NaN here; the slot must still pass h through exactly.
    bare = MorphogeneticModel(build_host(host))
    grown = copy.deepcopy(bare)
    grown.germinate_seed(blueprint, "s", slot=slot)
    grown.step_epoch()
    with torch.no_grad():
        for p in grown.get_seed_parameters(slot):
            p.fill_(poison)
    x, y = _batch(host)
    torch.manual_seed(1)
    out_bare = bare(x)
    torch.manual_seed(1)
    out_grown = grown(x)
    assert torch.isfinite(out_bare).all()
    assert torch.equal(out_bare, out_grown)
    _loss(bare, x, y).backward()
    _loss(grown, x, y).backward()
    bare_grads, grown_grads = _host_grads(bare), _host_grads(grown)
    assert bare_grads.keys() == grown_grads.keys()
    for name, grad in bare_grads.items():
        assert torch.equal(grad, grown_grads[name]), name


@pytest.mark.parametrize(
    "stage", [SeedStage.BLENDING, SeedStage.PROBATIONARY, SeedStage.FOSSILIZED]
)
@pytest.mark.parametrize(
    ("host", "blueprint", "slot"), [("cnn", "conv_light", "r0c1"), ("transformer", "mlp", "r0c1")]
)
def test_host_upstream_of_a_blended_seed_keeps_learning(
    stage: SeedStage, host: str, blueprint: str, slot: str
) -> None:
    model = MorphogeneticModel(build_host(host))
    model.germinate_seed(blueprint, "s", slot=slot)
    s = model.slot(slot)
    s.state = replace(s.state, stage=stage, blend_step=5)  # alpha = 1 in all three
    assert s.alpha == 1.0
    x, y = _batch(host)
    _loss(model, x, y).backward()
    host_net = model.host
    upstream: nn.Module
    if isinstance(host_net, CNNHost):
        upstream = host_net.blocks[0]
    else:
        assert isinstance(host_net, TransformerHost)
        upstream = host_net.layers[0]
    for name, p in upstream.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_incubating_norm_seed_on_channels_last_features_trains() -> None:
    # One-channel images have ambiguous strides, so the host's convs emit channels_last
    # features; GroupNorm's backward on a detached channels_last input used to segfault.
    model = MorphogeneticModel(build_host("cnn_digits", widths=(2, 4, 8)))
    model.germinate_seed("norm", "s", slot="r0c0")
    model.step_epoch()
    x = torch.randn(16, 8, 8, 1).permute(0, 3, 1, 2)  # stride (64, 1, 8, 1)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.get_seed_parameters("r0c0"))
