"""``esper compare`` end to end on digits: the table and files, cached and resumed runs,
the process pool, matched widths and bad input."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path
from typing import Any

import pytest

from esper.cli import main
from esper.compare import (
    PARTIAL_RESULTS,
    RESULTS,
    SETTINGS_FILE,
    matched_width,
    parse_arms,
    parse_seeds,
)
from esper.config import RunConfig
from tests.commands import compare, interrupt_at_save

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _runs(out: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """Each run's summary without its wall-clock fields, by (arm, seed)."""
    data = json.loads((out / "compare.json").read_text())
    runs = {}
    for run in data["runs"]:
        summary = dict(run["summary"])
        summary.pop("wall_seconds")
        summary.pop("run")
        runs[(run["arm"], run["seed"])] = summary
    return runs


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted compare of static and heuristic on seeds 0 and 1, in this process."""
    out = tmp_path_factory.mktemp("reference") / "compare"
    assert compare(out, "--arms", "static,heuristic", "--seeds", "2", "--workers", "1") == 0
    return out


def test_compare_writes_the_table_the_json_and_the_plot(reference: Path) -> None:
    table = (reference / "compare.md").read_text()
    for needle in ("Command: `esper compare", "Commit:", "Machine:", "| static |", "| heuristic |"):
        assert needle in table
    assert "seeds 0, 1 (mean ± 95% interval over seeds)" in table
    assert (reference / "accuracy_vs_flops.png").read_bytes()[:8] == PNG_MAGIC
    data = json.loads((reference / "compare.json").read_text())
    assert [arm["arm"] for arm in data["arms"]] == ["static", "heuristic"]
    runs = _runs(reference)
    assert sorted(runs) == [("heuristic", 0), ("heuristic", 1), ("static", 0), ("static", 1)]
    heuristic = data["arms"][1]
    finals = [runs[("heuristic", s)]["final_accuracy"] for s in (0, 1)]
    assert heuristic["final_accuracy"]["mean"] == pytest.approx(sum(finals) / 2)
    assert heuristic["final_accuracy"]["ci95"] > 0
    # Arms are compared on the test split, which no decision read; the decision split's
    # final accuracy is beside it, and how far the two are apart.
    tests = {key: runs[key]["test_accuracy"] for key in runs}
    assert all(isinstance(value, float) for value in tests.values())
    assert heuristic["test_accuracy"]["mean"] == pytest.approx(
        (tests[("heuristic", 0)] + tests[("heuristic", 1)]) / 2
    )
    delta = statistics.fmean(tests[("heuristic", s)] - tests[("static", s)] for s in (0, 1))
    assert "| Δ test vs static (pp) |" in table and f"{delta:+.2f} ± " in table
    assert "| test acc (%) | final val acc (%) |" in table and "| val − test (pp) |" in table
    # The return every run records (the learned controller's objective) is compared too.
    returns = [runs[("heuristic", s)]["total_reward"] for s in (0, 1)]
    assert heuristic["total_reward"]["mean"] == pytest.approx(sum(returns) / 2)
    assert "| seeds kept | return |" in table
    # The grown runs grew, and paid for it in compute; the static ones did not.
    for seed in (0, 1):
        grown, static = runs[("heuristic", seed)], runs[("static", seed)]
        assert grown["seeds_germinated"] >= 1 and static["seeds_germinated"] == 0
        assert grown["train_flops"] > static["train_flops"] > 0
        assert grown["eval_flops"] > static["eval_flops"] > 0
    # Every run is an ordinary run directory that `esper report` reads.
    assert main(["report", str(reference / "runs" / "heuristic" / "seed-1")]) == 0


def test_a_finished_compare_is_not_trained_again(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("esper.compare.runs.run", refuse)
    before = _runs(reference)
    assert compare(reference, "--arms", "static,heuristic", "--seeds", "2", "--workers", "1") == 0
    assert _runs(reference) == before


def test_an_interrupted_compare_resumes_to_the_same_result(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "compare"
    with monkeypatch.context() as patch:
        interrupt_at_save(patch, 12 + 3)  # epoch 3 of the second run
        status = compare(out, "--arms", "static,heuristic", "--seeds", "2", "--workers", "1")
    assert status == 130
    assert not (out / "compare.json").exists()
    assert compare(out, "--arms", "static,heuristic", "--seeds", "2", "--workers", "1") == 0
    assert _runs(out) == _runs(reference)


def test_worker_processes_give_the_same_runs(reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "compare"
    assert compare(out, "--arms", "static,heuristic", "--seeds", "2", "--workers", "2") == 0
    assert _runs(out) == _runs(reference)


# Gates short enough that 12 epochs keep seeds, so the grown size is above the host's.
KEEPS_SEEDS = {
    "episode": {
        "lifecycle": {
            "min_training_epochs": 1,
            "blending_steps": 2,
            "min_blending_epochs": 1,
            "fossilize_z": 0.5,
            "min_fossilize_contribution": 0.0,
        }
    },
    "heuristic": {"growth": "depth", "start_epoch": 1, "min_epochs_left": 0},
}


def test_the_matched_arm_is_widened_to_the_grown_size(tmp_path: Path) -> None:
    config = tmp_path / "keep.json"
    config.write_text(json.dumps(KEEPS_SEEDS))
    out = tmp_path / "compare"
    flags = ["--arms", "heuristic,static-matched", "--seeds", "2", "--workers", "1"]
    assert (
        main(
            [
                "compare",
                "--epochs",
                "12",
                "--quiet",
                "--config",
                str(config),
                "--out",
                str(out),
                *flags,
            ]
        )
        == 0
    )
    data = json.loads((out / "compare.json").read_text())
    grown, matched = data["arms"]
    target = grown["params"]["mean"]
    assert target > 496 and grown["seeds_fossilized"]["mean"] > 0
    assert matched["width"] == matched_width(RunConfig(task="digits"), target) > 1.0
    assert matched["label"] == f"static-matched (x{matched['width']:g})"
    # The matched hosts are the static host widened to within a width step of the target.
    below = matched_width(RunConfig(task="digits"), matched["params"]["mean"] - 1)
    assert matched["params"]["mean"] >= target * 0.9 and below <= matched["width"]
    assert all(run["summary"]["seeds_germinated"] == 0 for run in data["runs"][2:])
    assert (out / "runs" / f"static@{matched['width']:g}" / "seed-0" / "summary.json").is_file()


def test_runs_trained_with_other_settings_are_refused_and_reported(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "compare"
    shutil.copytree(reference, out)
    # Without the compare's record of its settings (the whole compare is refused with
    # it: tests/integration/test_compare_faults.py), each run still checks its own.
    (out / SETTINGS_FILE).unlink()
    flags = ["--arms", "static,heuristic,static-matched", "--seeds", "2", "--workers", "1"]
    # Other epochs than the cached runs': each is refused, none retrained or mixed in, and
    # the matched arm, with no grown run to size it, is reported failed too.
    assert compare(out, *flags, "--epochs", "11") == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    data = json.loads((out / PARTIAL_RESULTS.table).read_text())
    errors = {(run["arm"], run["error"]) for run in data["runs"]}
    assert {arm for arm, _ in errors} == {"static", "heuristic", "static-matched"}
    assert ("static-matched", "no grown run to match") in errors
    assert all(e and "trained with other settings" in e for a, e in errors if a != "static-matched")
    for arm in ("static", "heuristic"):  # the cached runs are untouched
        for seed in (0, 1):
            summary = Path("runs", arm, f"seed-{seed}", "summary.json")
            assert (out / summary).read_bytes() == (reference / summary).read_bytes()
    # ...and so is the complete table they made.
    for name in RESULTS.names:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--arms", "static,bogus"], ["unknown arm 'bogus'", "static@X"]),
        (["--arms", "static@-1"], ["static@-1", "positive number"]),
        (["--arms", "static@inf"], ["static@inf", "positive number"]),
        (["--arms", "static,static"], ["listed twice"]),
        (["--arms", "static,static-matched"], ["static-matched needs an arm that grows"]),
        (["--seeds", "0"], ["bad --seeds '0'", "100-109"]),
        (["--seeds", "5-3"], ["bad --seeds '5-3'"]),
        (["--seeds", "two"], ["bad --seeds 'two'"]),
        (["--seeds", "1,1"], ["distinct"]),
        (["--seeds", "100"], ["would run 100 seeds", "100-100"]),
        (["--workers", "0"], ["--workers must be at least 1"]),
        (["--task", "nope"], ["nope", "digits"]),
    ],
)
def test_bad_arms_seeds_and_workers_exit_2_with_one_line(
    flags: list[str],
    needles: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")
    assert compare(tmp_path / "c", *flags) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("esper: error: "), lines
    for needle in needles:
        assert needle in lines[0]
    assert not (tmp_path / "c" / "runs").exists()


def test_seed_and_arm_forms() -> None:
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("100-102") == [100, 101, 102]
    assert parse_seeds("7,1") == [7, 1]
    assert parse_seeds("20") == list(range(20))
    assert len(parse_seeds("0-99")) == 100
    with pytest.raises(ValueError, match="write 0-99 if you mean that, or 100-100 for seed 100"):
        parse_seeds("100")
    assert [a.label for a in parse_arms("static@1.50,heuristic")] == ["static@1.5", "heuristic"]


def test_report_rebuilds_the_table_and_the_plot_from_compare_json_alone(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "copy"
    out.mkdir()
    shutil.copy(reference / "compare.json", out / "compare.json")
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert (out / "compare.md").read_text() == (reference / "compare.md").read_text()
    assert (out / "accuracy_vs_flops.png").read_bytes()[:8] == PNG_MAGIC
    assert (out / "compare.json").read_text() == (reference / "compare.json").read_text()
    printed = capsys.readouterr().out
    assert "static" in printed and "heuristic" in printed and "test acc (%)" in printed
