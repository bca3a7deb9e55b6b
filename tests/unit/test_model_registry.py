"""Every registered blueprint and host, parametrized from the registries."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from esper.contracts import Topology
from esper.lifecycle import BlendAlgorithm, SeedStage
from esper.model import (
    BLUEPRINTS,
    HOSTS,
    CNNHost,
    MorphogeneticModel,
    blueprint_names,
    build_host,
    get_blueprint,
)
from esper.model.blueprints import GrowthKind
from esper.registry import UnknownNameError

WIDTHS = {Topology.CNN: (8, 16, 32), Topology.TRANSFORMER: (16, 64)}


def _features(topology: Topology, channels: int) -> torch.Tensor:
    if topology is Topology.CNN:
        return torch.randn(4, channels, 6, 6)
    return torch.randn(3, 7, channels)


BLUEPRINT_CASES = [
    (spec.topology, spec.name, c)
    for _, spec in BLUEPRINTS.items()
    if spec.kind is GrowthKind.DEPTH  # width blueprints: tests/unit/test_width.py
    for c in WIDTHS[spec.topology]
]


@pytest.mark.parametrize(("topology", "name", "channels"), BLUEPRINT_CASES)
def test_blueprint_contract(topology: Topology, name: str, channels: int) -> None:
    spec = get_blueprint(topology, name)
    seed = spec.build(channels)
    x = _features(topology, channels).requires_grad_()
    y = seed(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    # Starts close to the identity: the residual branch is scaled by a small gamma.
    assert (y - x).abs().mean() < 0.05 * x.abs().mean()
    # Every parameter learns from the first backward.
    (y * torch.randn_like(y)).sum().backward()
    for pname, p in seed.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname} got no gradient"
        assert torch.isfinite(p.grad).all()
    assert spec.params(channels) == sum(p.numel() for p in seed.parameters())


@pytest.mark.parametrize("topology", list(Topology))
def test_transformer_and_cnn_have_required_blueprints(topology: Topology) -> None:
    required = {
        Topology.CNN: {"norm", "conv_light", "conv_heavy", "depthwise", "attention", "bottleneck"},
        Topology.TRANSFORMER: {"mlp", "attention", "lora", "norm"},
    }[topology]
    assert required <= set(blueprint_names(topology))


def test_transformer_blueprints_are_causal() -> None:
    for name in ("attention", "mlp", "lora", "norm"):
        seed = get_blueprint(Topology.TRANSFORMER, name).build(16)
        x = torch.randn(2, 9, 16)
        x2 = x.clone()
        x2[:, 5:] += torch.randn(2, 4, 16)  # change only the future
        assert torch.allclose(seed(x)[:, :5], seed(x2)[:, :5], atol=1e-6), name


def _host_input(host: torch.nn.Module, name: str) -> torch.Tensor:
    if name == "transformer":
        return torch.randint(0, 96, (2, 12))
    assert isinstance(host, CNNHost)
    in_channels = host.in_channels
    size = 8 if name == "cnn_digits" else (28 if name == "cnn_28" else 32)
    return torch.randn(3, in_channels, size, size)


@pytest.mark.parametrize("host_name", HOSTS.names())
@pytest.mark.parametrize("blend", list(BlendAlgorithm))
def test_host_with_every_blueprint_in_every_slot(host_name: str, blend: BlendAlgorithm) -> None:
    host = build_host(host_name)
    model = MorphogeneticModel(host)
    x = _host_input(host, host_name)
    plain = host(x)
    assert torch.equal(model(x), plain)  # all slots dormant: the bare host
    names = blueprint_names(host.topology)
    for i, sid in enumerate(model.slot_ids):
        model.germinate_seed(names[i % len(names)], f"s{i}", slot=sid, blend=blend)
    model.step_epoch()  # GERMINATED -> TRAINING
    out = model(x)
    assert torch.equal(out, plain)  # incubating seeds do not change the output
    # Identity at alpha 0 in every stage that blends.
    for s in model.slots():
        s.state = replace(s.state, stage=SeedStage.BLENDING, blend_step=2)
    with model.forced_alpha(dict.fromkeys(model.slot_ids, 0.0)):
        assert torch.equal(model(x), plain)
    blended = model(x)
    assert blended.shape == plain.shape and torch.isfinite(blended).all()
    blended.float().pow(2).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert model.host_params == sum(p.numel() for p in host.parameters())
    assert model.total_params == sum(p.numel() for p in model.parameters())


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError, match="valid cnn blueprints: conv_light, conv_heavy"):
        get_blueprint(Topology.CNN, "resnet50")
    with pytest.raises(UnknownNameError, match="valid hosts: cnn"):
        build_host("vgg")
    model = MorphogeneticModel(build_host("cnn"), slots=["r0c1"])
    with pytest.raises(UnknownNameError, match="valid slots: r0c1"):
        model.germinate_seed("norm", "s", slot="r0c0")
    with pytest.raises(UnknownNameError, match="valid slots: r0c0, r0c1, r0c2"):
        MorphogeneticModel(build_host("cnn"), slots=["r9c9"])
    with pytest.raises(UnknownNameError, match="valid cnn blueprints"):
        model.germinate_seed("lora", "s", slot="r0c1")
