"""How much did scoring runs on the split their decisions read flatter growth?

Before the three splits, a grown run was selected (seeds kept or culled, the governor's
snapshots) on the split it was scored on; a static run was not. With a decision split
and a test split, each run has both accuracies. For every seed, this takes

    (grown decision accuracy - grown test accuracy) - (static decision - static test)

which is how much further a grown run's decision-split score sits above its test score
than a static run's does: the part of the old way's reported gain that selection bought.
The mean and 95% interval over seeds, for each arm against the first, of one or more
``esper compare`` outputs (their ``compare.json``)::

    .venv/bin/python -m benchmarks.selection_bias runs/compare-digits [more compare dirs]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from esper.compare import mean_interval


def _by_arm(compare: dict[str, Any]) -> dict[str, dict[int, dict[str, Any]]]:
    arms: dict[str, dict[int, dict[str, Any]]] = {}
    for run in compare["runs"]:
        summary = run["summary"]
        if summary is not None and summary.get("test_accuracy") is not None:
            arms.setdefault(run["arm"], {})[int(run["seed"])] = summary
    return arms


def flattery(out: Path) -> list[str]:
    """One line per arm after the first: the paired gap difference, in pp."""
    compare = json.loads((out / "compare.json").read_text())
    arms = _by_arm(compare)
    reference, *others = list(arms)
    lines = []
    for arm in others:
        seeds = sorted(arms[arm].keys() & arms[reference].keys())

        def gap(summary: dict[str, Any]) -> float:
            return float(summary["final_accuracy"]) - float(summary["test_accuracy"])

        diffs = [gap(arms[arm][s]) - gap(arms[reference][s]) for s in seeds]
        old = [
            float(arms[arm][s]["final_accuracy"]) - float(arms[reference][s]["final_accuracy"])
            for s in seeds
        ]
        new = [
            float(arms[arm][s]["test_accuracy"]) - float(arms[reference][s]["test_accuracy"])
            for s in seeds
        ]
        (d, dh), (o, oh), (n, nh) = mean_interval(diffs), mean_interval(old), mean_interval(new)
        lines.append(
            f"{out.name}: {arm} vs {reference}, {len(seeds)} seeds: gain on the decision split "
            f"{o:+.2f} ± {oh:.2f} pp, on the test split {n:+.2f} ± {nh:.2f} pp; "
            f"flattery {d:+.2f} ± {dh:.2f} pp"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outs", nargs="+", type=Path, help="esper compare --out directories")
    for out in parser.parse_args(argv).outs:
        for line in flattery(out):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
