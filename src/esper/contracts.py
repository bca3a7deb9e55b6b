"""Small shared types that several packages need: topologies, task types, slot ids."""

from __future__ import annotations

import re
from enum import StrEnum

__all__ = ["TaskType", "Topology", "parse_slot_id", "slot_id"]


class Topology(StrEnum):
    """The family of host a blueprint fits: image feature maps or token sequences."""

    CNN = "cnn"
    TRANSFORMER = "transformer"


class TaskType(StrEnum):
    """How outputs are scored: one label per sample, or one per token."""

    CLASSIFICATION = "classification"
    LANGUAGE_MODEL = "language_model"


_SLOT_RE = re.compile(r"^r(\d+)c(\d+)$")


def slot_id(row: int, col: int) -> str:
    """Canonical slot id ``r{row}c{col}``; column is the injection point's depth order."""
    return f"r{row}c{col}"


def parse_slot_id(text: str) -> tuple[int, int]:
    """(row, col) of a canonical slot id, or ValueError naming the expected form."""
    match = _SLOT_RE.match(text)
    if match is None:
        raise ValueError(f"bad slot id {text!r}: slot ids look like r0c0, r0c1, ...")
    return int(match.group(1)), int(match.group(2))
