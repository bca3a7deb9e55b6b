"""``esper schedule`` and ``esper search`` end to end on digits: a plan played through the
real loop, the search's files, its determinism and reuse of runs, and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from esper.cli import main
from esper.config import GrowthStep, ScheduleConfig, from_dict
from esper.lifecycle import BlendAlgorithm
from esper.search import heuristic_plan
from esper.telemetry.report import read_history
from tests.commands import FAST_COMPARE, GROWS_EARLY, error_line, interrupt_at_save

SEARCH = [
    "search",
    *FAST_COMPARE,
    "--config",
    str(GROWS_EARLY),
    "--train-seeds",
    "1",
    "--eval-seeds",
    "5-6",
    "--candidates",
    "4",
    "--population",
    "2",
    "--workers",
    "1",
]


def _germinations(run_dir: Path) -> list[tuple[int, str]]:
    return [
        (row.epoch, row.action)
        for row in read_history(run_dir / "history.jsonl")
        if row.action.startswith("GERMINATE") and row.outcome == "applied"
    ]


def test_a_plan_germinates_what_it_says_when_it_says(tmp_path: Path) -> None:
    plan = {
        "steps": [
            {"epoch": 3, "slot": "r0c2", "blueprint": "conv_heavy", "blend": "gated"},
            {"epoch": 1, "slot": "r0c0", "blueprint": "width_100"},
        ]
    }
    config = tmp_path / "plan.json"
    config.write_text(json.dumps({"schedule": plan}))
    out = tmp_path / "run"
    flags = ["--epochs", "8", "--max-batches", "3", "--quiet", "--config", str(config)]
    assert main(["schedule", "--task", "digits", *flags, "--out", str(out)]) == 0
    assert _germinations(out) == [(1, "GERMINATE r0c0 width_100"), (3, "GERMINATE r0c2 conv_heavy")]
    # A run read back as a plan (as the search reads the heuristic's) replays its germinations.
    assert heuristic_plan(out, BlendAlgorithm.LINEAR) == ScheduleConfig(
        (GrowthStep(1, "r0c0", "width_100"), GrowthStep(3, "r0c2", "conv_heavy"))
    )


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("search") / "out"
    assert main([*SEARCH, "--out", str(out)]) == 0
    return out


def test_search_writes_its_plans_the_best_one_and_its_paired_evaluation(searched: Path) -> None:
    data = json.loads((searched / "search.json").read_text())
    assert data["settings"]["train_seeds"] == [0] and data["evaluation"]["seeds"] == [5, 6]
    assert len(data["plans"]) == 4 and data["best"] == data["plans"][0]["label"]
    # The heuristic trains on the training seeds; its plan joins the second generation.
    assert data["heuristic"]["runs"][0]["summary"]["seeds_germinated"] >= 1
    assert "heuristic's plan" in [p["origin"] for p in data["plans"]]
    # Plans are ranked on the decision split, within the heuristic's FLOPs.
    budget = data["heuristic"]["train_flops"]
    within = [p for p in data["plans"] if p["train_flops"] <= budget]
    if within:
        assert data["plans"][0]["decision_accuracy"] == max(p["decision_accuracy"] for p in within)
    best = from_dict(
        ScheduleConfig, json.loads((searched / "best.config.json").read_text())["schedule"]
    )
    assert to_plan(data["plans"][0]["plan"]) == best
    # The evaluation is a compare of the heuristic and the best plan on the held-out seeds.
    compare = json.loads((searched / "eval" / data["best"] / "compare.json").read_text())
    assert [arm["arm"] for arm in compare["arms"]] == ["heuristic", "schedule"]
    assert {run["seed"] for run in compare["runs"]} == {5, 6}
    markdown = (searched / "search.md").read_text()
    assert "best plan minus heuristic on 2 held-out seeds, paired: accuracy" in markdown


def to_plan(data: object) -> ScheduleConfig:
    return from_dict(ScheduleConfig, data)


def test_a_rerun_reuses_every_run_and_draws_the_same_plans(
    searched: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = json.loads((searched / "search.json").read_text())
    mtimes = {p: p.stat().st_mtime for p in searched.glob("runs/*/seed-*/summary.json")}
    capsys.readouterr()
    assert main([*SEARCH, "--out", str(searched)]) == 0
    after = json.loads((searched / "search.json").read_text())
    assert [p["plan"] for p in after["plans"]] == [p["plan"] for p in before["plans"]]
    assert {p: p.stat().st_mtime for p in searched.glob("runs/*/seed-*/summary.json")} == mtimes
    # Another budget in the same --out: the plans it shares are not trained again.
    assert main([*SEARCH, "--max-flops-ratio", "0.5", "--out", str(searched)]) == 0
    assert all(p.stat().st_mtime == mtime for p, mtime in mtimes.items())
    assert json.loads((searched / "search.json").read_text())["settings"]["max_flops_ratio"] == 0.5
    assert main([*SEARCH, "--out", str(searched)]) == 0  # back to the fixture's search


def _without_times(data: dict[str, Any]) -> list[object]:
    """The plans of a search.json with each run's summary, less wall times and paths."""
    plans: list[object] = []
    for plan in data["plans"]:
        runs = [
            {k: v for k, v in run["summary"].items() if k not in ("wall_seconds", "run")}
            for run in plan["runs"]
        ]
        plans.append((plan["label"], plan["plan"], runs))
    return plans


def test_an_interrupted_search_continues_to_the_same_result(
    searched: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    # The 20th epoch saved: the first generation (12 epochs a run) is part way through.
    interrupt_at_save(monkeypatch, 20)
    assert main([*SEARCH, "--out", str(out)]) == 130
    assert not (out / "search.json").exists()
    monkeypatch.undo()
    assert main([*SEARCH, "--out", str(out)]) == 0
    ours = json.loads((out / "search.json").read_text())
    reference = json.loads((searched / "search.json").read_text())
    assert _without_times(ours) == _without_times(reference)
    assert (
        ours["evaluation"]["accuracy_difference"] == reference["evaluation"]["accuracy_difference"]
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--train-seeds", "3", "--eval-seeds", "2-4"], "both training and evaluation seeds"),
        (["--candidates", "0"], "--candidates must be at least 1"),
        (["--max-flops-ratio", "0"], "--max-flops-ratio must be > 0"),
    ],
)
def test_bad_search_settings_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    assert main(["search", "--task", "digits", *flags, "--out", str(tmp_path / "s")]) == 2
    assert message in error_line(capsys)
    assert not (tmp_path / "s").exists()
