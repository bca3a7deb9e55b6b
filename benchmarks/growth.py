"""Does growing beat training a fixed network? A thin wrapper of ``esper compare``.

Runs ``esper compare`` with the given arguments and copies its table, JSON and plot to
``benchmarks/results/<name>.{md,json,png}``, e.g.::

    .venv/bin/python -m benchmarks.growth --name growth-cifar10 -- \\
        --task cifar10 --data-dir /tmp/cifar10 --seeds 5 --out runs/compare-cifar10

Everything after ``--`` goes to ``esper compare`` unchanged; its ``--out`` keeps the
runs, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from benchmarks.common import RESULTS
from esper.cli import main as esper


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="result file name, e.g. growth-cifar10")
    parser.add_argument("compare", nargs=argparse.REMAINDER, help="-- then esper compare flags")
    args = parser.parse_args(argv)
    flags = [f for f in args.compare if f != "--"]
    if "--out" not in flags:
        flags += ["--out", f"runs/{args.name}"]
    out = Path(flags[flags.index("--out") + 1])
    status = esper(["compare", *flags])
    if status not in (0, 1):
        return status
    RESULTS.mkdir(parents=True, exist_ok=True)
    for source, suffix in (
        ("compare.md", "md"),
        ("compare.json", "json"),
        ("accuracy_vs_flops.png", "png"),
    ):
        shutil.copyfile(out / source, RESULTS / f"{args.name}.{suffix}")
    print(f"results in {RESULTS / args.name}.md")
    return status


if __name__ == "__main__":
    sys.exit(main())
