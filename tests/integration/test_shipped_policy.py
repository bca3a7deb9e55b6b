"""The learned policies that come with Esper (``esper/policies/NAME``): each loads with
``weights_only=True``, fits the host of its task, says how it was trained and evaluated,
and runs by name: ``esper ppo run --policy NAME``, ``esper compare --arms ppo:NAME``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esper.cli import main
from esper.controller.features import OBSERVATION_VERSION
from esper.controller.registry import (
    POLICY_FILE,
    SHIPPED_POLICIES,
    policy_digest,
    policy_source,
    shipped_policies,
)
from esper.rl.agent import load_policy
from esper.rl.env import MorphogenesisEnv, env_config
from tests.commands import one_line

SHORT = ["--epochs", "3", "--max-batches", "2", "--max-val-batches", "2", "--quiet"]


def test_esper_ships_a_policy() -> None:
    assert shipped_policies(), f"no policy under {SHIPPED_POLICIES}"


@pytest.mark.parametrize("name", shipped_policies())
def test_a_shipped_policy_fits_its_task_and_says_how_it_was_made(name: str) -> None:
    source = policy_source(name)
    assert source == SHIPPED_POLICIES / name
    _, meta = load_policy(source)  # weights_only=True inside
    assert meta.observation_version == OBSERVATION_VERSION
    env = MorphogenesisEnv(config=env_config(None, task=meta.task))
    assert meta.slot_ids == tuple(env.slot_ids)
    assert meta.blueprints == tuple(env.blueprints)
    record = json.loads((source / "policy.json").read_text())
    assert record["name"] == name and record["task"] == meta.task
    assert record["training"]["command"].startswith("esper ppo train")
    assert record["training"]["commit"]
    evaluation = record["evaluation"]
    assert len(evaluation["seeds"]) >= 10
    assert set(evaluation["arms"]) >= {"learned", "heuristic"}
    assert "heuristic" in evaluation["learned minus"]
    assert (source / "config.json").is_file()


@pytest.mark.parametrize("name", shipped_policies())
def test_ppo_run_and_compare_run_a_shipped_policy_by_name(name: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert main(["ppo", "run", "--policy", name, *SHORT, "--out", str(run_dir)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    assert summary["controller"] == "ppo"
    assert config["policy"] == name
    assert config["policy_sha256"] == policy_digest(SHIPPED_POLICIES / name / POLICY_FILE)
    out = tmp_path / "compare"
    flags = ["--seeds", "1", "--workers", "1", "--out", str(out)]
    task = json.loads((SHIPPED_POLICIES / name / "policy.json").read_text())["task"]
    argv = ["compare", "--task", task, "--arms", f"heuristic,ppo:{name}", *flags, *SHORT]
    assert main(argv) == 0
    data = json.loads((out / "compare.json").read_text())
    assert [a["arm"] for a in data["arms"]] == ["heuristic", "learned"]


def test_a_path_that_exists_wins_over_a_shipped_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = shipped_policies()[0]
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).mkdir()
    assert policy_source(name) == Path(name)


def test_an_unknown_policy_name_lists_the_shipped_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["ppo", "run", "--policy", "no-such-policy", *SHORT]) == 2
    line = one_line(capsys.readouterr().err)
    assert "no policy at no-such-policy" in line
    assert all(name in line for name in shipped_policies())


def _rows(run_dir: Path) -> list[dict[str, object]]:
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in rows]


def test_a_sampled_run_of_a_shipped_policy_is_seeded_by_the_run(tmp_path: Path) -> None:
    name = shipped_policies()[0]
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        argv = ["ppo", "run", "--policy", name, "--sample", "--seed", "3", *SHORT]
        assert main([*argv, "--out", str(out)]) == 0
    assert json.loads((outs[0] / "config.json").read_text())["policy_sampling"] is True
    assert _rows(outs[0]) == _rows(outs[1])
