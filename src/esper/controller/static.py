"""StaticController: never grows anything. The fixed-architecture baseline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from esper.contracts import Decision, SlotReport, TrainingSignals
from esper.controller.registry import ControllerContext
from esper.lifecycle import FactoredAction

__all__ = ["StaticController", "build"]


class StaticController:
    """WAITs every epoch, so the host trains exactly as a plain network would."""

    def decide(self, signals: TrainingSignals, slots: Sequence[SlotReport]) -> Decision:
        return Decision(FactoredAction.wait(), "static baseline")

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def build(context: ControllerContext) -> StaticController:
    """The static baseline of a run (it needs nothing of it)."""
    return StaticController()
