"""Golden runs through the real commands: a refactor that changes a number shows itself.

``esper heuristic`` on digits for 12 epochs, growing depth and width (it widens two
blocks and deepens after the third, and keeps what it widened), must keep its history
row for row, its final and test accuracy and the seeds it fossilizes; ``esper ppo train``
for two updates must keep its policy's weights. The values are in ``tests/golden/data/``
and were written by this file's ``main`` (``python -m tests.golden.test_golden_runs``) on
the commit that last changed a number on purpose (the heuristic's: the three splits of
the width issue, where the model trains on less data and decisions read a split held out
of it; the policy's: environments stepped each as soon as its action is chosen, which
samples each environment's actions from a generator of its own). If a test
here fails, find out what changed the maths (or the order of random draws) before
writing new values.

Wall times are left out (they are the machine's, not the run's); floats are compared
to a relative 1e-4, which covers float summation order only. The runs are short on
purpose: over a long run, a CPU whose kernels sum in another order can tip a gate's
decision (``make run``'s 40 epochs end at 94.44 % on one 2-core EPYC and 94.72 % on
another).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

from esper.cli import main as esper
from tests.commands import policy_weights

DATA = Path(__file__).resolve().parent / "data"
HEURISTIC = DATA / "heuristic_digits.json"
GROWS_BOTH = DATA / "heuristic_digits_config.json"
"""Depth and width from epoch 1 (the digits default widens only, from epoch 8: too late
for 12 epochs)."""
PPO = DATA / "ppo_digits_two_updates.json"
WALL_TIME = ("seconds", "epoch_seconds")
PPO_FLAGS = ["--task", "digits", "--epochs", "5", "--max-batches", "4", "--episodes", "4"]
PPO_FLAGS += ["--envs", "2", "--seed", "3", "--quiet"]


def heuristic_run(out: Path) -> dict[str, Any]:
    """A 12-epoch digits run in ``out``: its history (no wall times) and summary."""
    flags = ["--epochs", "12", "--config", str(GROWS_BOTH), "--out", str(out), "--quiet"]
    assert esper(["heuristic", *flags]) == 0
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    for row in rows:
        for key in WALL_TIME:
            row.pop(key)
    summary = json.loads((out / "summary.json").read_text())
    fossils = [
        (row["epoch"], sid, slot["blueprint"])
        for before, row in zip([None, *rows], rows, strict=False)
        for sid, slot in row["slots"].items()
        if slot["stage"] == "FOSSILIZED"
        and (before is None or before["slots"][sid]["stage"] != "FOSSILIZED")
    ]
    return {
        "final_accuracy": summary["final_accuracy"],
        "test_accuracy": summary["test_accuracy"],
        "fossilized": fossils,
        "rows": rows,
    }


def ppo_run(out: Path) -> dict[str, Any]:
    """Two PPO updates of two digits episodes each: every weight tensor's sum and norm."""
    assert esper(["ppo", "train", *PPO_FLAGS, "--out", str(out)]) == 0
    weights = policy_weights(out)
    return {
        name: [float(value.double().sum()), float(value.double().norm())]
        for name, value in weights.items()
    }


def _same(got: Any, want: Any, where: str) -> None:
    if isinstance(want, dict):
        # A record may gain fields; every field the golden values hold keeps its value.
        assert isinstance(got, dict) and set(want) <= set(got), where
        for key in want:
            _same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list | tuple) and len(got) == len(want), where
        for index, (a, b) in enumerate(zip(got, want, strict=True)):
            _same(a, b, f"{where}[{index}]")
    elif isinstance(want, float) and not isinstance(got, str):
        assert math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-7), f"{where}: {got} != {want}"
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


@pytest.mark.slow
def test_the_default_heuristic_run_keeps_its_numbers(tmp_path: Path) -> None:
    want = json.loads(HEURISTIC.read_text())
    got = heuristic_run(tmp_path / "run")
    assert got["final_accuracy"] == pytest.approx(want["final_accuracy"], rel=1e-4)
    assert got["test_accuracy"] == pytest.approx(want["test_accuracy"], rel=1e-4)
    assert [list(f) for f in got["fossilized"]] == want["fossilized"]
    _same(got["rows"], want["rows"], "history")


@pytest.mark.slow
def test_two_ppo_updates_keep_the_policy_weights(tmp_path: Path) -> None:
    want = json.loads(PPO.read_text())
    got = ppo_run(tmp_path / "ppo")
    _same(got, want, "policy")


def main() -> None:
    """Write the golden values from this commit's code (see the module docstring)."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        HEURISTIC.write_text(json.dumps(heuristic_run(Path(tmp) / "run"), indent=1) + "\n")
        PPO.write_text(json.dumps(ppo_run(Path(tmp) / "ppo"), indent=1) + "\n")
    print(f"wrote {HEURISTIC} and {PPO}", file=sys.stderr)


if __name__ == "__main__":
    main()
