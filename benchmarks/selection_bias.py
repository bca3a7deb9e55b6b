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
from pathlib import Path

from esper.compare import load_result, mean_interval, paired_differences


def flattery(out: Path) -> list[str]:
    """One line per arm after the first: its gains over the first arm on the decision
    and the test split, and the per-seed difference of the two (pp)."""
    result, _ = load_result(out)
    reference, *others = result.arms
    lines = []
    for arm in others:
        old = paired_differences(arm, reference, "final_accuracy")
        new = paired_differences(arm, reference, "test_accuracy")
        seeds = sorted(old.keys() & new.keys())
        o, oh = mean_interval([old[s] for s in seeds])
        n, nh = mean_interval([new[s] for s in seeds])
        d, dh = mean_interval([old[s] - new[s] for s in seeds])
        lines.append(
            f"{out.name}: {arm.label} vs {reference.label}, {len(seeds)} seeds: gain on the "
            f"decision split {o:+.2f} ± {oh:.2f} pp, on the test split {n:+.2f} ± {nh:.2f} pp; "
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
