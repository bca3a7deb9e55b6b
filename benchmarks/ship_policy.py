"""Put a trained policy into the package: ``esper/policies/NAME/``.

Run by hand, after a training and its evaluation, e.g.::

    .venv/bin/python -m benchmarks.ship_policy --name digits \\
        --training runs/ppo-digits --eval runs/ppo-digits/eval-held-out

It copies the training's ``policy.pt`` (weights and plain metadata, read back with
``weights_only=True``) and ``config.json`` (so ``esper ppo run --policy NAME`` runs the
episodes it was trained on), and writes ``policy.json``: the command, commit and machine
of the training (its ``provenance.json``), how cloning went (``clone.json``, if any), and
the evaluation, an ``esper compare`` of the policy against the other arms on held-out
seeds (``esper ppo eval``; with ``--eval-sampled``, also one with ``--sample``): each
arm's mean and 95 % interval, and the policy's paired difference to each.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from esper.compare.statistics import mean_interval
from esper.controller.registry import POLICY_FILE, SHIPPED_POLICIES
from esper.rl.agent import load_policy

KEYS = ("test_accuracy", "final_accuracy", "train_flops", "total_reward")
"""What the evaluation reports per arm, and pairs."""


def _interval(values: list[float]) -> dict[str, float]:
    mean, half = mean_interval(values)
    return {"mean": mean, "half_width_95": half, "n": len(values)}


def _differences(
    by_arm: dict[str, dict[int, dict[str, Any]]], arm: str, other: str, key: str
) -> list[float]:
    """``arm``'s ``key`` minus ``other``'s, on every seed where both have it."""
    ours, theirs = by_arm[arm], by_arm[other]
    return [
        float(ours[s][key]) - float(theirs[s][key])
        for s in sorted(ours.keys() & theirs.keys())
        if ours[s].get(key) is not None and theirs[s].get(key) is not None
    ]


def evaluation(compare: Path, learned: str) -> dict[str, Any]:
    """The compare in ``compare``: per arm and key the mean and 95 % interval over seeds,
    and arm ``learned`` minus every other arm, paired by seed."""
    data = json.loads((compare / "compare.json").read_text())
    by_arm: dict[str, dict[int, dict[str, Any]]] = {}
    for run in data["runs"]:
        if run["summary"] is not None:
            by_arm.setdefault(run["arm"], {})[int(run["seed"])] = run["summary"]
    if learned not in by_arm:
        raise SystemExit(f"{compare}: no arm {learned!r}; arms are {sorted(by_arm)}")

    def values(arm: str, key: str, seeds: list[int]) -> list[float]:
        return [float(by_arm[arm][s][key]) for s in seeds if by_arm[arm][s].get(key) is not None]

    arms = {
        arm: {key: _interval(values(arm, key, sorted(runs))) for key in KEYS}
        for arm, runs in by_arm.items()
    }
    paired = {}
    for arm in sorted(set(by_arm) - {learned}):
        paired[arm] = {key: _interval(_differences(by_arm, learned, arm, key)) for key in KEYS}
    meta = {k: data[k] for k in ("command", "commit", "machine", "date", "task", "epochs")}
    return {**meta, "seeds": data["seeds"], "arms": arms, f"{learned} minus": paired}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the policy's name: --policy NAME")
    parser.add_argument("--training", type=Path, required=True, help="the training run")
    parser.add_argument("--eval", type=Path, required=True, help="its evaluation compare")
    parser.add_argument(
        "--eval-sampled", type=Path, help="its evaluation compare with --sample, if run"
    )
    parser.add_argument("--arm", default="learned", help="the policy's arm in that compare")
    parser.add_argument("--note", default="", help="one paragraph: what the evaluation says")
    args = parser.parse_args(argv)
    _, meta = load_policy(args.training)
    target = SHIPPED_POLICIES / args.name
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.training / POLICY_FILE, target / POLICY_FILE)
    shutil.copyfile(args.training / "config.json", target / "config.json")
    clone = args.training / "clone.json"
    updates = (args.training / "updates.jsonl").read_text().splitlines()
    record = {
        "name": args.name,
        "task": meta.task,
        "slot_ids": list(meta.slot_ids),
        "blueprints": list(meta.blueprints),
        "observation_version": meta.observation_version,
        "training": json.loads((args.training / "provenance.json").read_text()),
        "updates": len(updates),
        "clone": json.loads(clone.read_text()) if clone.is_file() else None,
        "evaluation": evaluation(args.eval, args.arm),
        "evaluation_sampled": evaluation(args.eval_sampled, args.arm)
        if args.eval_sampled
        else None,
        "note": args.note,
    }
    (target / "policy.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
