"""torch.compile: the compiled step follows every lifecycle change, or falls back."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn

from esper.contracts import TaskType
from esper.lifecycle import BlendAlgorithm, SeedStage
from esper.model import MorphogeneticModel, build_host
from esper.model.blueprints import Residual
from esper.training.loop import TrainStep


def _loss(step: TrainStep, model: MorphogeneticModel, x: torch.Tensor, y: torch.Tensor) -> float:
    return step(model, x, y, nn.CrossEntropyLoss(), TaskType.CLASSIFICATION)[0].item()


@pytest.mark.parametrize("blend", [BlendAlgorithm.LINEAR, BlendAlgorithm.GATED])
def test_compiled_step_tracks_stage_and_alpha_changes(blend: BlendAlgorithm) -> None:
    # Dynamo's "eager" backend traces and guards exactly as inductor does, without
    # generating code, so this checks the guards in a fraction of a second.
    compiled, eager = TrainStep(compile=True, backend="eager"), TrainStep()
    model = MorphogeneticModel(build_host("cnn_digits"))
    model.eval()
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    model.germinate_seed("conv_heavy", "s", slot="r0c1", blend=blend)
    model.step_epoch()
    slot = model.slot("r0c1")
    assert isinstance(slot.seed, Residual)
    with torch.no_grad():
        slot.seed.gamma.fill_(1.0)
    states = [replace(slot.state, stage=SeedStage.BLENDING, blend_step=k) for k in (1, 2, 3)]
    states += [replace(slot.state, stage=SeedStage.PROBATIONARY)]
    seen = [_loss(compiled, model, x, y)]
    assert seen[0] == pytest.approx(_loss(eager, model, x, y), rel=1e-6)
    for state in states:
        slot.state = state
        seen.append(_loss(compiled, model, x, y))
        assert seen[-1] == pytest.approx(_loss(eager, model, x, y), rel=1e-6), state.stage
    assert len(set(seen)) == len(seen)  # each stage and alpha really changed the output
    model.cull_seed("r0c1")
    assert _loss(compiled, model, x, y) == pytest.approx(_loss(eager, model, x, y), rel=1e-6)


def _broken_backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Any:
    raise RuntimeError("no compiler here")


def test_a_failing_compiler_falls_back_to_eager_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    step, eager = TrainStep(compile=True, backend=_broken_backend), TrainStep()
    model = MorphogeneticModel(build_host("cnn_digits"))
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    with caplog.at_level(logging.WARNING, logger="esper.training.loop"):
        first = _loss(step, model, x, y)
        second = _loss(step, model, x, y)
    assert first == pytest.approx(_loss(eager, model, x, y))
    assert second == first
    assert not step.compiled
    assert len([r for r in caplog.records if "torch.compile failed" in r.message]) == 1
