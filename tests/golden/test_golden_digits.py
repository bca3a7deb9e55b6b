"""Golden values: a fixed-seed digits episode must keep producing these numbers.

If a refactor changes them, it changed the maths (or the order of random draws): find
out which before updating the values. They last changed on purpose with the three
splits of the width issue (the model trains on 1,150 images, the losses are on the
287-image decision split). Values are for one torch thread (tests/conftest.py
sets it); the tolerance covers float summation order only.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from esper.data import load_digits
from esper.lifecycle import FactoredAction, LifecycleOp, SeedStage
from esper.training.batches import SplitBatches
from esper.training.builders import build_model
from esper.training.episode import EpisodeRunner, ScriptedController, run_episode
from esper.training.tasks import get_task

TRAIN_LOSS = [2.1877246, 1.8748367, 1.4233704, 1.0365971, 0.8415978, 0.7627613]
VAL_LOSS = [2.1530232, 1.6989472, 1.1784672, 0.9093819, 0.7905989, 0.7828395]
TEST_ACCURACY = 78.61111111111111  # the final model on the 360 test images
STAGES = ["DORMANT", "TRAINING", "TRAINING", "TRAINING", "TRAINING", "BLENDING"]


def test_golden_digits_episode() -> None:
    task = get_task("digits")
    split = load_digits()
    torch.manual_seed(0)
    config = dataclasses.replace(task.default_config(), seed=0, epochs=6)
    model = build_model(task, split, lifecycle=config.lifecycle)
    data = SplitBatches(split, task.batch_size, seed=0)
    schedule = {2: FactoredAction(LifecycleOp.GERMINATE, "r0c1", "conv_heavy")}
    result = run_episode(EpisodeRunner(model, data, config), ScriptedController(schedule))
    assert [r.train.loss for r in result.history] == pytest.approx(TRAIN_LOSS, rel=1e-4)
    assert [r.val.loss for r in result.history] == pytest.approx(VAL_LOSS, rel=1e-4)
    assert [r.stages["r0c1"] for r in result.history] == [SeedStage[s] for s in STAGES]
    assert result.test_accuracy == pytest.approx(TEST_ACCURACY, rel=1e-4)
