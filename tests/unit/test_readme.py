"""The README's lifecycle diagram is the transition table, not a copy that can drift."""

from __future__ import annotations

import re
from pathlib import Path

from esper.lifecycle import TRANSITIONS, SeedStage

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_transitions_match_the_table() -> None:
    text = README.read_text()
    block = text.split("<!-- transitions -->")[1].split("<!-- /transitions -->")[0]
    documented: dict[SeedStage, frozenset[SeedStage]] = {}
    for line in block.splitlines():
        match = re.match(r"^([A-Z]+)\s+->\s+(.*)$", line.strip())
        if match:
            targets = re.findall(r"\b[A-Z]{4,}\b", match.group(2))
            documented[SeedStage[match.group(1)]] = frozenset(SeedStage[t] for t in targets)
    assert documented == dict(TRANSITIONS)
