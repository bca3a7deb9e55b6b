"""Seeds for model-level tests: walk a seed through its stages without training."""

from __future__ import annotations

import dataclasses

from esper.lifecycle import SeedStage, transition
from esper.model import MorphogeneticModel


def walk_to(model: MorphogeneticModel, slot: str, stage: SeedStage, step: int = 0) -> None:
    """Move the seed in ``slot`` on to ``stage`` (at blending step ``step``)."""
    state = model.slot(slot).state
    for target in (SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.PROBATIONARY):
        if state.stage is stage:
            break
        state = transition(state, target)
    model.slot(slot).state = dataclasses.replace(state, blend_step=step)
