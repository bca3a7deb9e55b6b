"""``esper ppo train|eval|run`` end to end on digits: the training directory, a policy
that eval and run load, exact resume, one worker or two, and bad input."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import esper.cli.ppo
import esper.rl.agent
import esper.rl.training
from esper.cli import main
from esper.cli.ppo import PROVENANCE_FILE
from esper.provenance import commit, machine
from esper.rl.agent import POLICY_FILE, load_policy
from esper.rl.env import MorphogenesisEnv
from esper.rl.policy import ActionMasks
from esper.rl.training import (
    CLONE_FILE,
    CLONED_POLICY_FILE,
    PPOTrainConfig,
    load_train_config,
    read_updates,
    train_seed,
)
from esper.rundir import CHECKPOINT, PREVIOUS_CHECKPOINT, RunDirectory
from esper.training.episode import EpisodeRunner
from tests.commands import SHORT_PPO, policy_weights, ppo_train
from tests.rl_envs import LockstepPool

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ppo") / "train"
    assert ppo_train(out) == 0
    return out


def test_training_writes_its_directory(trained: Path) -> None:
    for name in ("config.json", "updates.jsonl", POLICY_FILE, CHECKPOINT, PREVIOUS_CHECKPOINT):
        assert (trained / name).is_file(), name
    assert (trained / "training_curve.png").read_bytes()[:8] == PNG_MAGIC
    rows = read_updates(trained / "updates.jsonl")
    assert [r.update for r in rows] == [1, 2] and rows[-1].episodes == 4
    assert all(r.approx_kl >= 0 and 0 <= r.clip_fraction <= 1 for r in rows)
    config = json.loads((trained / "config.json").read_text())
    assert config["run"]["task"] == "digits" and config["run"]["episode"]["epochs"] == 6
    assert "gamma" not in config["ppo"]  # the discount is run.episode.reward.gamma
    # Weights and plain metadata only: loadable without unpickling code.
    payload = torch.load(trained / POLICY_FILE, weights_only=True)
    assert payload["meta"]["task"] == "digits"


def test_training_records_its_command_commit_and_machine(trained: Path) -> None:
    record = json.loads((trained / PROVENANCE_FILE).read_text())
    assert record["command"].startswith(f"esper ppo train {' '.join(SHORT_PPO)} --episodes 4")
    assert record["command"].endswith(f"--out {trained}")
    assert record["commit"] == commit() and record["commit"]
    assert record["machine"] == machine() and record["machine"]["cores"] >= 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", record["date"]), record["date"]


def test_eval_and_run_load_the_policy(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    flags = ["--seeds", "100-101", "--workers", "1", "--out", str(out), "--quiet"]
    assert main(["ppo", "eval", "--policy", str(trained), *flags]) == 0
    data = json.loads((out / "compare.json").read_text())
    assert [a["arm"] for a in data["arms"]] == ["learned", "heuristic", "static"]
    assert {r["seed"] for r in data["runs"]} == {100, 101}
    assert all(r["summary"]["epochs"] == 6 for r in data["runs"])  # the training's episodes
    run_dir = tmp_path / "run"
    assert main(["ppo", "run", "--policy", str(trained), *SHORT_PPO, "--out", str(run_dir)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["controller"] == "ppo" and summary["epochs"] == 6
    # Without flags, the policy's task and the episodes it was trained on.
    plain = tmp_path / "plain"
    assert main(["ppo", "run", "--policy", str(trained), "--out", str(plain), "--quiet"]) == 0
    summary = json.loads((plain / "summary.json").read_text())
    assert summary["task"] == "digits" and summary["epochs"] == 6
    # The policy observes every blended seed's contribution, as in training.
    for config_file in (trained / "config.json", run_dir / "config.json"):
        config = json.loads(config_file.read_text())
        run = config.get("run", config)
        assert run["episode"]["training"]["counterfactuals"] == "live", config_file


def _interrupt_at_policy_save(patch: pytest.MonkeyPatch, count: int) -> None:
    """Raise KeyboardInterrupt right after the ``count``-th policy file is written."""
    real = esper.rl.agent.save_policy
    calls: list[int] = []

    def save(*args: Any) -> None:
        real(*args)
        calls.append(1)
        if len(calls) == count:
            raise KeyboardInterrupt

    patch.setattr(esper.rl.training, "save_policy", save)


def test_an_interrupted_training_resumes_to_the_same_policy(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "train"
    with monkeypatch.context() as patch:
        # After the first update's policy, before its checkpoint.
        _interrupt_at_policy_save(patch, 1)
        assert ppo_train(out) == 130
    started = (out / PROVENANCE_FILE).read_text()
    assert main(["ppo", "train", "--resume", str(out), "--quiet"]) == 0
    assert (out / PROVENANCE_FILE).read_text() == started  # the record of its start
    for key, value in policy_weights(trained).items():
        assert torch.equal(policy_weights(out)[key], value), key
    rows = [r.episodes for r in read_updates(out / "updates.jsonl")]
    assert rows == [2, 4]


@pytest.fixture(scope="module")
def cloned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ppo") / "cloned"
    assert ppo_train(out, "--demonstrations", "2") == 0
    return out


def test_cloning_the_heuristic_starts_ppo_from_its_behaviour(cloned: Path) -> None:
    record = json.loads((cloned / CLONE_FILE).read_text())
    assert record["demonstrations"] == 2 and record["held_out"] == 1
    assert record["last_likelihood"] > max(0.9, record["first_likelihood"])
    # Cloning stopped before certainty: the kept policy still explores (the entropy
    # floor, 0.25 nats per decision by default, where only WAIT or GERMINATE is legal).
    assert record["stopped"] == "entropy floor" and record["kept_epoch"] < record["epochs"] < 100
    assert record["entropy_before"]["op"] > record["entropy_after"]["op"] >= 0.25
    # On the seeds it was shown, the cloned policy (most likely action of each head)
    # does what the heuristic does, step for step.
    config = load_train_config(cloned / "config.json")
    policy, _ = load_policy(cloned / CLONED_POLICY_FILE)
    env = MorphogenesisEnv(config=config.run, demonstrator=True)
    for episode in range(2):
        obs, info = env.reset(seed=train_seed(config, episode))
        state, start, done = policy.initial_state(1), 1.0, False
        while not done:
            masks = ActionMasks.from_numpy({k: v[None] for k, v in info["masks"].items()})
            with torch.no_grad():
                out = policy.act(
                    torch.as_tensor(obs)[None], state, masks, torch.tensor([start]), True
                )
            assert out.action[0].tolist() == info["demonstration"].tolist()
            state, start = out.state, 0.0
            obs, _, done, _, info = env.step(info["demonstration"])
    # Both policies evaluate, each into its own default directory beside them.
    for policy_file, results in (
        (cloned, "eval-digits"),
        (cloned / CLONED_POLICY_FILE, "eval-cloned-digits"),
    ):
        flags = ["--seeds", "100-100", "--arms", "learned", "--workers", "1", "--quiet"]
        assert main(["ppo", "eval", "--policy", str(policy_file), *flags]) == 0
        assert (cloned / results / "compare.json").is_file()
    # PPO went on from there: the final policy is the cloned one, updated.
    assert [r.episodes for r in read_updates(cloned / "updates.jsonl")] == [2, 4]
    assert any(
        not torch.equal(value, policy.state_dict()[key])
        for key, value in policy_weights(cloned).items()
    )


@pytest.mark.parametrize("count", [1, 2, 3])
def test_a_training_interrupted_around_cloning_resumes_to_the_same_policy(
    count: int, cloned: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1: cloned.pt written, 2: policy.pt written, both before cloning's checkpoint; 3:
    # the first update's policy.pt, before its checkpoint.
    out = tmp_path / "train"
    with monkeypatch.context() as patch:
        _interrupt_at_policy_save(patch, count)
        assert ppo_train(out, "--demonstrations", "2") == 130
    assert main(["ppo", "train", "--resume", str(out), "--quiet"]) == 0
    for key, value in policy_weights(cloned).items():
        assert torch.equal(policy_weights(out)[key], value), key
    assert json.loads((out / CLONE_FILE).read_text())["demonstrations"] == 2


def test_a_run_the_governor_stops_is_followed_by_one_on_a_spare_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The second episode of every group stops before its third epoch (too many rollbacks
    # in a row), in the heuristic's demonstrations and in PPO's episodes alike: each time
    # the environment goes on at once with a spare seed of that phase's own pool.
    stopping = train_seed(PPOTrainConfig(), 1)
    started: list[int] = []
    observe = EpisodeRunner.observe

    def stop(runner: EpisodeRunner) -> Any:
        started.extend([runner.config.seed] if runner.epoch == 0 else [])
        if runner.config.seed == stopping and runner.epoch == 2:
            # A fault no rollback fixes: the governor's own check fails, and it stops.
            failing = dataclasses.replace(
                runner.governor.config, loss_multiplier=1e-9, max_consecutive_rollbacks=1
            )
            runner.governor.config = failing
        return observe(runner)

    monkeypatch.setattr(EpisodeRunner, "observe", stop)
    config = tmp_path / "config.json"
    config.write_text('{"paired_baseline": false}')  # no static runs: only the episodes
    out = tmp_path / "train"
    assert ppo_train(out, "--demonstrations", "2", "--config", str(config)) == 0
    cloning = [1_000_000, stopping, 3_000_000]  # 3,000,000: cloning's first spare seed
    first_update = [1_000_000, stopping, 2_000_000]  # 2,000,000: update 0's first spare
    assert started == [*cloning, *first_update, 1_000_002, 1_000_003]
    assert json.loads((out / CLONE_FILE).read_text())["demonstrations"] == 2
    assert [r.episodes for r in read_updates(out / "updates.jsonl")] == [2, 4]


def test_two_workers_train_the_same_policy_as_one(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "train"
    assert ppo_train(out, "--workers", "2") == 0
    for key, value in policy_weights(trained).items():
        assert torch.equal(policy_weights(out)[key], value), key


def test_stepping_all_environments_together_trains_the_same_policy(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Local workers step each environment as soon as its action is chosen; a pool that
    # steps them all together (as Ray's does) must give the same policy, bit for bit.
    monkeypatch.setattr(esper.cli.ppo, "EnvPool", LockstepPool.of)
    out = tmp_path / "train"
    assert ppo_train(out, "--workers", "2") == 0
    for key, value in policy_weights(trained).items():
        assert torch.equal(policy_weights(out)[key], value), key


def _corrupt(tmp_path: Path, trained: Path) -> list[str]:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / POLICY_FILE).write_bytes(b"not a policy")
    return ["ppo", "eval", "--policy", str(bad)]


def _gamma_in_ppo(tmp_path: Path, trained: Path) -> list[str]:
    config = tmp_path / "gamma.json"
    config.write_text('{"ppo": {"gamma": 0.99}}')
    return ["ppo", "train", "--config", str(config), "--out", str(tmp_path / "g")]


def _older_config_with_another_gamma(tmp_path: Path, trained: Path) -> list[str]:
    saved = json.loads((trained / "config.json").read_text())
    saved["ppo"]["gamma"] = 0.99  # saved by an older version, unlike the run's 1.0
    old = tmp_path / "old"
    with RunDirectory.create(old, kind="ppo-train"):
        (old / "config.json").write_text(json.dumps(saved))
    return ["ppo", "train", "--resume", str(old)]


def _edited_policy(tmp_path: Path, trained: Path, **meta: Any) -> Path:
    payload = torch.load(trained / POLICY_FILE, weights_only=True)
    payload["meta"].update(meta)
    other = tmp_path / "old"
    other.mkdir()
    torch.save(payload, other / POLICY_FILE)
    return other


def _layout_v1(tmp_path: Path, trained: Path) -> list[str]:
    """A policy of layout v1 (depth blueprints only, before width growth)."""
    other = _edited_policy(tmp_path, trained, observation_version=1)
    return ["ppo", "run", "--policy", str(other), "--out", str(tmp_path / "r")]


def _other_blueprints(tmp_path: Path, trained: Path) -> list[str]:
    blueprints = torch.load(trained / POLICY_FILE, weights_only=True)["meta"]["blueprints"]
    other = _edited_policy(tmp_path, trained, blueprints=blueprints[::-1])
    return ["ppo", "run", "--policy", str(other), "--out", str(tmp_path / "r")]


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (
            lambda p, t: ["ppo", "eval", "--policy", str(p / "none")],
            ["no policy", "esper ppo train"],
        ),
        (_corrupt, ["not a readable policy file"]),
        (_layout_v1, ["observation layout v1", "uses v2", "train a new policy"]),
        (_other_blueprints, ["chooses among blueprints", "train a policy for this host"]),
        (
            lambda p, t: ["ppo", "eval", "--policy", str(t), "--task", "cifar10"],
            ["trained on task 'digits'", "--task digits"],
        ),
        (
            lambda p, t: ["ppo", "run", "--policy", str(t), "--task", "fashion_mnist"],
            ["trained on task 'digits'"],
        ),
        (lambda p, t: ["ppo", "train", "--envs", "0"], ["--envs must be at least 1"]),
        (lambda p, t: ["ppo", "train", "--episodes", "0"], ["--episodes must be at least 1"]),
        (lambda p, t: ["ppo", "train", "--resume", str(p)], ["no config.json to resume"]),
        (lambda p, t: ["ppo", "run", "--epochs", "2"], ["needs --policy"]),
        (_gamma_in_ppo, ["run.episode.reward.gamma, not ppo.gamma"]),
        (_older_config_with_another_gamma, ["differs from run.episode.reward.gamma"]),
    ],
)
def test_bad_input_exits_2_with_one_line(
    argv: Any,
    needles: list[str],
    trained: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")
    capsys.readouterr()
    assert main(argv(tmp_path, trained)) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_report_redraws_the_curve_and_summarises_the_training(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "copy"
    out.mkdir()
    for name in ("config.json", "updates.jsonl"):
        shutil.copy(trained / name, out / name)
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert (out / "training_curve.png").read_bytes()[:8] == PNG_MAGIC
    printed = capsys.readouterr().out
    rows = read_updates(out / "updates.jsonl")
    assert re.search(r"updates\s*│\s*2 of 2", printed), printed
    assert f"{rows[-1].approx_kl:.4f}" in printed and "entropy" in printed
    (out / "updates.jsonl").write_text("")
    assert main(["report", str(out)]) == 2
    assert "no PPO update has finished yet" in capsys.readouterr().err
