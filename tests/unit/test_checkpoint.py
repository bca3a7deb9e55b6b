"""A model with seeds in several stages survives save/load into a freshly built model."""

from __future__ import annotations

import io
from dataclasses import replace

import torch

from esper.lifecycle import BlendAlgorithm, SeedStage
from esper.model import MorphogeneticModel, build_host


def _roundtrip(model: MorphogeneticModel, host: str) -> MorphogeneticModel:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = MorphogeneticModel(build_host(host))
    fresh.load_state_dict(torch.load(buffer, weights_only=True))  # strict by default
    return fresh


def test_cnn_roundtrip_with_seeds_in_several_stages() -> None:
    model = MorphogeneticModel(build_host("cnn"))
    model.germinate_seed("conv_light", "a", slot="r0c0", blend=BlendAlgorithm.GATED)
    model.germinate_seed("attention", "b", slot="r0c1", blend=BlendAlgorithm.SIGMOID)
    model.germinate_seed("norm", "c", slot="r0c2")
    model.step_epoch()
    a, b = model.slot("r0c0"), model.slot("r0c1")
    a.state = replace(a.state, stage=SeedStage.BLENDING, blend_step=2, gradient_ratio=0.4)
    b.state = replace(b.state, stage=SeedStage.FOSSILIZED, contribution=2.5)
    for p in model.parameters():  # move every weight off its init so the copy shows
        p.data.add_(0.01 * torch.randn_like(p))
    model.eval()
    x = torch.randn(5, 3, 32, 32)
    fresh = _roundtrip(model, "cnn")
    fresh.eval()
    assert fresh.stages() == model.stages()
    assert {s.slot_id: s.state for s in fresh.slots()} == {
        s.slot_id: s.state for s in model.slots()
    }
    assert torch.equal(fresh(x), model(x))


def test_transformer_roundtrip_and_culled_slot() -> None:
    model = MorphogeneticModel(build_host("transformer"))
    model.germinate_seed("mlp", "a", slot="r0c0")
    model.germinate_seed("lora", "b", slot="r0c2")
    model.step_epoch()
    model.cull_seed("r0c2")
    model.step_epoch()  # r0c2 -> EMBARGOED
    x = torch.randint(0, 96, (2, 10))
    fresh = _roundtrip(model, "transformer")
    assert fresh.stages() == {
        "r0c0": SeedStage.TRAINING,
        "r0c1": SeedStage.DORMANT,
        "r0c2": SeedStage.EMBARGOED,
    }
    assert fresh.get_seed_parameters("r0c2") == []
    assert torch.equal(fresh(x), model(x))
