"""Width seeds through the real episode: germinated, measured, merged into the host, and
resumed from a checkpoint taken after the merge exactly as an uninterrupted run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from esper.config import to_dict
from esper.contracts import Decision, SlotReport, TrainingSignals
from esper.lifecycle import FactoredAction, LifecycleOp, SeedStage
from esper.training.builders import build_episode
from esper.training.episode import EpisodeRunner
from esper.training.ledger import EpochRecord
from esper.training.tasks import run_config

CONFIG = run_config({"task": "digits", "episode": {"epochs": 12, "seed": 4}})


class WidenThenKeep:
    """Widens the first block by 100% at epoch 1, and asks to keep it whenever it may."""

    def decide(self, signals: TrainingSignals, slots: Sequence[SlotReport]) -> Decision:
        if signals.epoch == 1:
            return Decision(FactoredAction(LifecycleOp.GERMINATE, "r0c0", "width_100"), "widen")
        for report in slots:
            if LifecycleOp.FOSSILIZE in report.legal:
                return Decision(FactoredAction(LifecycleOp.FOSSILIZE, report.slot_id), "keep")
        return Decision(FactoredAction.wait(), "wait")

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _play(runner: EpisodeRunner, until: int | None = None) -> list[EpochRecord]:
    controller = WidenThenKeep()
    while not runner.done and (until is None or runner.epoch < until):
        seen = runner.observe()
        runner.apply(controller.decide(seen.signals, seen.slots))
    return runner.records


def _plain(records: Sequence[EpochRecord]) -> list[dict[str, Any]]:
    rows = [to_dict(r) for r in records]
    for row in rows:
        row.pop("seconds"), row.pop("wall_seconds")
    return rows


def test_a_width_seed_is_merged_and_a_resume_after_the_merge_is_exact() -> None:
    whole = build_episode(CONFIG)
    records = _play(whole)
    kept = next(r for r in records if r.slots["r0c0"].stage is SeedStage.FOSSILIZED)
    assert records[0].outcome == "applied" and kept.epoch < 12
    layer = whole.model.host.get_submodule("blocks.0.0")
    assert isinstance(layer, torch.nn.Conv2d) and layer.out_channels == 4  # 2 + 100%
    assert kept.seed_params > 0 and kept.host_params == records[0].host_params
    assert records[-1].slots["r0c0"].params == 0  # no module: the units are the host's
    # Compute is counted for the wider host, and what the units would add was known.
    host_only = whole.compute.host_train * records[-1].train.samples
    assert records[-1].train_flops > host_only
    cost = whole.compute.seed_costs["r0c0"]["width_100"]
    assert cost.params == kept.seed_params and cost.train_flops > 0

    # Stop right after the merge, save, build a fresh episode, load, go on.
    first = build_episode(CONFIG)
    _play(first, until=kept.epoch + 1)
    state = first.state_dict()
    resumed = build_episode(CONFIG)
    resumed.load_state_dict(state)
    assert _plain(_play(resumed)) == _plain(records)
    for name, value in whole.model.state_dict().items():
        other = resumed.model.state_dict()[name]
        assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
