"""One resolution of a run's configuration for every command: task defaults, then a
policy's training environment, then the --config file, then flags, merged key by key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from esper.cli import main
from esper.config import ConfigError, RunConfig, merge, shortcuts, to_dict
from esper.rl.env import env_config
from esper.rl.training import resolve_train_config
from esper.training.tasks import get_task, run_config
from tests.commands import error_line

TEXT_OPTIM = {"episode": {"optim": {"weight_decay": 0}}}
"""A file that changes one optimizer setting of the text task (AdamW at 3e-3)."""


def _corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("to be, or not to be, that is the question. " * 60, encoding="utf-8")
    return path


def _optim(config: dict[str, Any]) -> dict[str, Any]:
    optim: dict[str, Any] = config["episode"]["optim"]
    return optim


def test_merge_is_key_by_key_at_every_depth() -> None:
    base = {"a": 1, "s": {"x": 1, "t": {"y": 2, "z": 3}}}
    assert merge(base, {"s": {"t": {"z": 4}}}, {"a": 5}) == {
        "a": 5,
        "s": {"x": 1, "t": {"y": 2, "z": 4}},
    }
    assert base == {"a": 1, "s": {"x": 1, "t": {"y": 2, "z": 3}}}  # untouched
    with pytest.raises(ConfigError, match=r"s\.t: expected a JSON object"):
        merge(base, {"s": {"t": [1, 2]}})


def test_flat_settings_land_where_they_belong() -> None:
    assert shortcuts({"epochs": 3, "max_batches": 2, "task": "digits", "seed": None}) == {
        "episode": {"epochs": 3, "training": {"max_batches": 2}},
        "task": "digits",
    }
    with pytest.raises(ConfigError, match="unknown setting 'lr'"):
        shortcuts({"lr": 0.1})


def test_a_partial_optimizer_section_keeps_the_tasks_other_settings() -> None:
    text = get_task("text")
    for config in (
        run_config({"task": "text"}, TEXT_OPTIM),
        env_config({"task": "text", **TEXT_OPTIM}),
        resolve_train_config({"run": {"task": "text", **TEXT_OPTIM}}, {}, {}).run,
    ):
        optim = config.episode.optim
        assert (optim.kind, optim.host_lr, optim.seed_lr) == ("adamw", 3e-3, 3e-3)
        assert optim.weight_decay == 0.0
        assert config.batch_size == text.batch_size and config.episode.epochs == text.epochs


def test_later_layers_win_and_the_last_task_named_decides() -> None:
    config = run_config({"task": "text", "batch_size": 7}, {"task": "digits"}, {"batch_size": 9})
    assert (config.task, config.batch_size) == ("digits", 9)
    assert config.episode.optim == get_task("digits").optim  # digits' defaults underneath


def test_the_learned_controller_always_measures_every_blended_seed() -> None:
    config = run_config({"controller": "ppo", "policy": "p"})
    assert config.episode.training.counterfactuals == "live"
    assert run_config({}).episode.training.counterfactuals == "judged"
    assert env_config(RunConfig()).episode.training.counterfactuals == "live"


@pytest.mark.slow
def test_ppo_train_keeps_the_text_tasks_adamw_from_a_partial_config(tmp_path: Path) -> None:
    # The same file through 'esper heuristic' and 'esper ppo train': each run directory's
    # config.json holds AdamW at 3e-3 with the file's one change.
    corpus = _corpus(tmp_path)
    (tmp_path / "heuristic.json").write_text(json.dumps(TEXT_OPTIM))
    (tmp_path / "ppo.json").write_text(json.dumps({"run": TEXT_OPTIM}))
    short = ["--task", "text", "--text-file", str(corpus), "--epochs", "2", "--max-batches", "1"]
    heuristic, ppo = tmp_path / "heuristic", tmp_path / "ppo"
    assert main(["heuristic", *short, "--config", str(tmp_path / "heuristic.json"),
                 "--out", str(heuristic), "--quiet"]) == 0  # fmt: skip
    assert main(["ppo", "train", *short, "--config", str(tmp_path / "ppo.json"),
                 "--episodes", "2", "--envs", "2", "--out", str(ppo), "--quiet"]) == 0  # fmt: skip
    for saved in (
        json.loads((heuristic / "config.json").read_text()),
        json.loads((ppo / "config.json").read_text())["run"],
    ):
        optim = _optim(saved)
        assert (optim["kind"], optim["host_lr"], optim["weight_decay"]) == ("adamw", 3e-3, 0.0)


RUNS, PPO = (["heuristic"], ["compare"]), (["ppo", "train"],)


@pytest.mark.parametrize(
    ("content", "expected", "commands"),
    [
        (b"\xff\xfe{}", "not UTF-8", RUNS + PPO),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply", RUNS + PPO),
        (b'{"batch_size": 1' + b"0" * 5000 + b"}", "not valid JSON", RUNS + PPO),
        (b'{"episode": [1]}', "episode: expected a JSON object", RUNS),
        (b'{"run": [1]}', "run: expected a JSON object", PPO),
        (b'{"ppo": [1]}', "ppo: expected a JSON object", PPO),
    ],
    ids=["not-utf8", "deep", "huge-integer", "list-for-a-section", "list-for-run", "list-for-ppo"],
)
def test_a_bad_config_file_is_one_line_for_every_command(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes,
    expected: str,
    commands: tuple[list[str], ...],
) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    for command in commands:
        out = tmp_path / "-".join(command)
        assert main([*command, "--config", str(path), "--out", str(out), "--quiet"]) == 2
        assert expected in error_line(capsys), command
        assert not out.exists(), command


def test_every_command_saves_the_resolved_configuration(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert (
        main(["baseline", "--epochs", "1", "--max-batches", "1", "--out", str(out), "--quiet"]) == 0
    )
    saved = json.loads((out / "config.json").read_text())
    assert saved == to_dict(run_config({"controller": "baseline"}, shortcuts({
        "epochs": 1, "max_batches": 1, "threads": saved["threads"]})))  # fmt: skip
