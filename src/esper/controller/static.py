"""StaticController: never grows anything. The fixed-architecture baseline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from esper.contracts import SlotReport, TrainingSignals
from esper.lifecycle import FactoredAction

__all__ = ["StaticController"]


class StaticController:
    """WAITs every epoch, so the host trains exactly as a plain network would."""

    last_reason = "static baseline"

    def decide(self, signals: TrainingSignals, slots: Sequence[SlotReport]) -> FactoredAction:
        return FactoredAction.wait()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
