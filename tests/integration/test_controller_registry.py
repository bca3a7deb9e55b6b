"""A new controller is one module and one registration: the command line, the run
directory, `esper compare`'s arms and the Python entry point all find it."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from esper.arms import parse_arms
from esper.cli import main
from esper.config import RunConfig
from esper.contracts import Decision, SlotReport, TrainingSignals
from esper.controller import CONTROLLERS, ControllerContext, ControllerSpec, get_controller
from esper.lifecycle import FactoredAction, LifecycleOp
from esper.training.builders import run_episodes
from esper.training.tasks import run_config

NAME = "first-slot"


class FirstSlotController:
    """Grows the smallest blueprint in the first open slot at epoch 2, then waits."""

    def __init__(self, blueprints: Sequence[str]) -> None:
        self.blueprint = blueprints[0]
        self.grown = False

    def decide(self, signals: TrainingSignals, slots: Sequence[SlotReport]) -> Decision:
        open_slots = [r.slot_id for r in slots if LifecycleOp.GERMINATE in r.legal]
        if signals.epoch == 2 and open_slots and not self.grown:
            self.grown = True
            action = FactoredAction(LifecycleOp.GERMINATE, open_slots[0], self.blueprint)
            return Decision(action, f"the first open slot, {open_slots[0]}")
        return Decision(FactoredAction.wait(), "grown once" if self.grown else "not yet")

    def state_dict(self) -> dict[str, Any]:
        return {"grown": self.grown}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.grown = bool(state["grown"])


def build(context: ControllerContext) -> FirstSlotController:
    return FirstSlotController(context.blueprints)


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[ControllerSpec]:
    spec = ControllerSpec(
        name=NAME,
        builder=f"{__name__}:build",
        help="grow once, in the first open slot",
        command=(NAME,),
        arm=NAME,
    )
    monkeypatch.setitem(CONTROLLERS._entries, NAME, spec)  # the one registration
    yield spec


SHORT = ["--task", "digits", "--epochs", "3", "--max-batches", "2", "--quiet"]


def test_a_registered_controller_has_a_command_and_a_run_directory(
    registered: ControllerSpec, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    assert main([NAME, *SHORT, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["controller"] == NAME
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert rows[1]["action"].startswith("GERMINATE r0c0")
    assert [row["reason"] for row in rows] == ["not yet", "the first open slot, r0c0", "grown once"]
    # Its checkpoints hold its state: a resume of a finished run is refused by name.
    assert main([NAME, "--resume", str(out), "--quiet"]) == 2


def test_a_registered_controller_is_an_arm_of_compare(
    registered: ControllerSpec, tmp_path: Path
) -> None:
    (arm,) = parse_arms(NAME)
    assert (arm.label, arm.controller, arm.grows) == (NAME, NAME, True)
    out = tmp_path / "compare"
    argv = ["compare", *SHORT, "--arms", f"static,{NAME},static-matched", "--seeds", "1"]
    assert main([*argv, "--workers", "1", "--out", str(out)]) == 0
    result = json.loads((out / "compare.json").read_text())
    assert [a["arm"] for a in result["arms"]] == ["static", NAME, "static-matched"]
    ours = next(r for r in result["runs"] if r["arm"] == NAME)
    assert ours["summary"]["controller"] == NAME and ours["summary"]["seeds_germinated"] == 1


def test_a_registered_controller_runs_from_python(registered: ControllerSpec) -> None:
    config = run_config({"controller": NAME, "episode": {"epochs": 3}})
    (result,) = run_episodes(config)
    assert result.seeds_germinated == 1
    assert [r.decision.reason for r in result.history][1] == "the first open slot, r0c0"


def test_every_built_in_controller_is_registered_with_its_command() -> None:
    assert {name: " ".join(spec.command) for name, spec in CONTROLLERS.items()} == {
        "heuristic": "heuristic",
        "baseline": "baseline",
        "schedule": "schedule",
        "ppo": "ppo run",
    }
    assert get_controller("ppo").configure(RunConfig()).episode.training.counterfactuals == "live"
    with pytest.raises(KeyError, match="valid controllers: heuristic, baseline, schedule, ppo"):
        get_controller("random")
