"""What ``esper compare --ray`` costs against the local pool, for the same compare.

Run by hand on a quiet machine, e.g.::

    .venv/bin/python -m benchmarks.ray_compare --task digits --seeds 10 --rounds 3

This process starts a Ray on this machine (as many CPUs as it has cores, no dashboard,
loopback only) and stays idle as the cluster's head. Round by round it then runs the same
``esper compare`` twice, in a new process and a new ``--out`` each time (nothing cached):
with ``--workers <cores>`` (the local pool) and with ``--ray ADDRESS`` (each run a Ray
task; a new job, so new Ray workers, as any later compare on a cluster gets), timed end
to end from the command's start to its exit. The result is the ratio of the two in each
round (Ray / local; target <= 1.10), and Ray's start-up, which a cluster pays once.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import write_result


def _esper(args: list[str]) -> float:
    """Run ``esper ARGS`` in a new process; its wall time (it must succeed)."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "esper.cli", *args], check=True, stdout=subprocess.DEVNULL
    )
    return time.perf_counter() - start


def _trained_seconds(out: Path) -> float:
    """Seconds the runs spent training, summed (from compare.json)."""
    data = json.loads((out / "compare.json").read_text())
    return float(sum(run["summary"]["wall_seconds"] for run in data["runs"]))


def measure(compare: list[str], rounds: int, cores: int, address: str) -> dict[str, Any]:
    local: list[float] = []
    ray: list[float] = []
    local_train: list[float] = []
    ray_train: list[float] = []
    with tempfile.TemporaryDirectory(prefix="esper-ray-compare-") as scratch:
        for r in range(rounds):
            for name in ("local", "ray"):  # interleaved: both see the same machine
                out = Path(scratch) / f"{name}-{r}"
                flags = ["--workers", str(cores)] if name == "local" else ["--ray", address]
                seconds = _esper(["compare", *compare, "--quiet", "--out", str(out), *flags])
                (local if name == "local" else ray).append(seconds)
                (local_train if name == "local" else ray_train).append(_trained_seconds(out))
    ratios = [b / a for a, b in zip(local, ray, strict=True)]
    return {
        "local_seconds": local,
        "ray_seconds": ray,
        "local_training_seconds": local_train,
        "ray_training_seconds": ray_train,
        "ratios": ratios,
        "ratio": statistics.median(ratios),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits")
    parser.add_argument("--seeds", default="10")
    parser.add_argument("--arms", default="static,heuristic")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--data-dir")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    compare = ["--task", args.task, "--seeds", args.seeds, "--arms", args.arms]
    compare += ["--epochs", str(args.epochs)] if args.epochs else []
    compare += ["--data-dir", args.data_dir] if args.data_dir else []
    cores = os.cpu_count() or 1
    torch.set_num_threads(1)  # this process only waits
    # Every Ray connection on this machine stays on the loopback interface.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray  # after the setting above, which ray reads when imported

    start = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False)
    startup = time.perf_counter() - start
    try:
        result = measure(compare, args.rounds, cores, ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()
    command = " ".join(["esper compare", *compare])
    rows = [
        f"| {r + 1} | {a:.1f} | {b:.1f} | {ta:.1f} | {tb:.1f} | {b / a:.3f} |"
        for r, (a, b, ta, tb) in enumerate(
            zip(
                result["local_seconds"],
                result["ray_seconds"],
                result["local_training_seconds"],
                result["ray_training_seconds"],
                strict=True,
            )
        )
    ]
    table = "\n".join(
        [
            f"### `{command}`: local pool ({cores} workers) against Ray tasks ({cores} CPUs)",
            "",
            "| round | local (s) | Ray (s) | local, in runs (s) | Ray, in runs (s) | Ray / local |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"Median ratio: **{result['ratio']:.3f}** (target <= 1.10). Times are the whole "
            "command, start to exit; 'in runs' sums the runs' own wall times. Ray's start-up "
            f"on this machine (once per cluster, not per compare): {startup:.1f} s.",
        ]
    )
    payload = {**result, "ray_startup_seconds": startup, "compare": command, "cores": cores}
    path = write_result(f"ray-compare-{args.task}", payload, table)
    print(path.read_text())


if __name__ == "__main__":
    main()
