"""The ``esper`` command as tests call it, in-process: short runs of compare and
``ppo train``, a trained policy's weights, and the one-line error a bad input gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import esper.run
from esper.cli import main
from esper.rl.agent import load_policy

# 12 epochs of 3 batches.
FAST_COMPARE = ["--task", "digits", "--epochs", "12", "--max-batches", "3", "--quiet"]
GROWS_EARLY = Path(__file__).resolve().parent / "data" / "grows-depth-early.json"
"""A heuristic that grows depth from epoch 1 (the digits default widens from epoch 8,
too late for 12 epochs)."""
# 4 episodes of 6 epochs of 3 batches, in 2 environments.
SHORT_PPO = ["--task", "digits", "--epochs", "6", "--max-batches", "3", "--quiet"]


def compare(out: Path, *flags: str) -> int:
    """A fast compare whose heuristic grows (`GROWS_EARLY`; a ``--config`` in ``flags``
    replaces it)."""
    return main(["compare", *FAST_COMPARE, "--config", str(GROWS_EARLY), "--out", str(out), *flags])


def ppo_train(out: Path, *flags: str) -> int:
    return main(
        ["ppo", "train", *SHORT_PPO, "--episodes", "4", "--envs", "2", "--out", str(out), *flags]
    )


def policy_weights(out: Path) -> dict[str, torch.Tensor]:
    policy, _ = load_policy(out)
    return policy.state_dict()


def one_line(err: str) -> str:
    """The one line of ``err`` (a command's stderr), checked to hold no traceback."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines}"
    return lines[0]


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line on stderr, checked to be an ``esper: error:`` and no traceback."""
    line = one_line(capsys.readouterr().err)
    assert line.startswith("esper: error: ")
    return line


def interrupt_at_save(patch: pytest.MonkeyPatch, count: int) -> None:
    """Make this process's ``count``-th checkpoint save raise KeyboardInterrupt once it
    has saved, as a Ctrl-C between two epochs would."""
    real = esper.run._save_checkpoint
    saved = 0

    def save(directory: Any, built: Any, history: Any) -> None:
        nonlocal saved
        real(directory, built, history)
        saved += 1
        if saved == count:
            raise KeyboardInterrupt

    patch.setattr(esper.run, "_save_checkpoint", save)
