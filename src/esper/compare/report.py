"""What a compare shows: the table (mean and 95% interval of each of `METRICS` per arm,
and each arm's paired difference in final accuracy against the first), ``compare.json``,
``compare.md`` and ``accuracy_vs_flops.png`` (`RESULTS`; a table with failed runs may go
to `PARTIAL_RESULTS` instead, see `esper.compare.directory`); and the result read back
from ``compare.json`` for ``esper report``. Each file is replaced in one step
(`esper.rundir.atomic_write`): a reader sees the old file or the new one."""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from esper.arms import STATIC, Arm
from esper.compare.runs import RunOutcome
from esper.compare.statistics import ArmSummary, CompareResult, mean_interval, paired_difference
from esper.controller import CONTROLLERS
from esper.run import RunError
from esper.rundir import atomic_write
from esper.telemetry.report import format_flops

__all__ = [
    "METRICS",
    "PARTIAL_RESULTS",
    "RESULTS",
    "ResultFiles",
    "load_result",
    "plot_accuracy_vs_flops",
    "provenance_lines",
    "table",
    "write_outputs",
    "write_report",
]

METRICS: tuple[tuple[str, str], ...] = (
    ("test_accuracy", "test acc (%)"),
    ("final_accuracy", "final val acc (%)"),
    ("best_accuracy", "best val acc (%)"),
    ("params", "params"),
    ("train_flops", "train FLOPs"),
    ("eval_flops", "eval FLOPs"),
    ("wall_seconds", "wall (s)"),
    ("seeds_fossilized", "seeds kept"),
    ("total_reward", "return"),
)


@dataclass(frozen=True)
class ResultFiles:
    """The names of a compare's three result files in its ``--out``."""

    table: str
    """The result as data (`write_outputs`, read back by `load_result`)."""
    markdown: str
    plot: str

    @property
    def names(self) -> tuple[str, ...]:
        return astuple(self)


RESULTS = ResultFiles("compare.json", "compare.md", "accuracy_vs_flops.png")
"""Where a compare's table goes (and what ``esper report`` reads)."""
PARTIAL_RESULTS = ResultFiles(
    "compare.partial.json", "compare.partial.md", "accuracy_vs_flops.partial.png"
)
"""Where a table with failed runs goes when `RESULTS` holds a complete one."""


def _cell(values: Sequence[float], key: str) -> str:
    mean, half = mean_interval(values)
    if not values:
        return "-"
    if key.endswith("flops"):
        text = format_flops(mean).removesuffix("FLOPs").strip()
        spread = format_flops(half).removesuffix("FLOPs").strip() if math.isfinite(half) else ""
        return f"{text} ± {spread}" if spread else text
    digits = {
        "test_accuracy": 2,
        "final_accuracy": 2,
        "best_accuracy": 2,
        "seeds_fossilized": 1,
        "total_reward": 3,
    }.get(key, 0)
    if not math.isfinite(half):
        return f"{mean:,.{digits}f}"
    return f"{mean:,.{digits}f} ± {half:,.{digits}f}"


def table(result: CompareResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table (FLOPs in SI units, e.g. 5.53 T). The last
    two columns: each arm's final validation minus test accuracy (how much better the
    split its decisions read looks than data none read), and its paired difference to
    the first arm on `CompareResult.score`."""
    first, score = result.arms[0], result.score
    what = "test" if score == "test_accuracy" else "final val"
    header = [
        "arm",
        "runs",
        *(name for _, name in METRICS),
        "val − test (pp)",
        f"Δ {what} vs {first.label} (pp)",
    ]
    rows = []
    for arm in result.arms:
        runs = f"{len(arm.finished)}/{len(arm.runs)}"
        cells = [_cell(arm.values(key), key) for key, _ in METRICS]
        gaps = [
            float(s["final_accuracy"]) - float(s["test_accuracy"])
            for s in arm.finished
            if s.get("test_accuracy") is not None
        ]
        cells.append(_delta(*mean_interval(gaps), len(gaps)))
        delta = "-" if arm is first else _delta(*paired_difference(arm, first, score))
        rows.append([arm.label, runs, *cells, delta])
    return header, rows


def _delta(mean: float, half: float, n: int) -> str:
    """A difference in pp with its 95% half-width ("-" when there is none)."""
    if n == 0:
        return "-"
    return f"{mean:+.2f}" + (f" ± {half:.2f}" if n > 1 else "")


def write_outputs(
    result: CompareResult, meta: dict[str, Any], files: ResultFiles = RESULTS
) -> None:
    """The table as data (``compare.json``), ``compare.md`` and ``accuracy_vs_flops.png``
    in ``result.out``, or the other names ``files`` gives."""
    payload = {
        **meta,
        "task": result.task,
        "epochs": result.epochs,
        "seeds": list(result.seeds),
        "arms": [
            {
                "arm": arm.arm.label,
                "label": arm.label,
                "width": arm.width,
                "runs": len(arm.runs),
                "finished": len(arm.finished),
                **{
                    key: dict(zip(("mean", "ci95"), mean_interval(arm.values(key)), strict=True))
                    for key, _ in METRICS
                },
            }
            for arm in result.arms
        ],
        "runs": [
            {
                "arm": o.arm,
                "seed": o.seed,
                "run_dir": os.path.relpath(o.run_dir, result.out) if o.run_dir else None,
                "summary": o.summary,
                "error": o.error,
            }
            for arm in result.arms
            for o in arm.runs
        ],
    }
    text = json.dumps(_plain(payload), indent=2) + "\n"
    atomic_write(result.out / files.table, text.encode())
    write_report(result, meta, files)


def provenance_lines(meta: dict[str, Any]) -> list[str]:
    """Command, commit, machine and date (`esper.provenance.provenance`) as the first
    lines of a Markdown result file."""
    machine = meta["machine"]
    return [
        f"Command: `{meta['command']}`  ",
        f"Commit: {meta['commit']}  ",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
        "one torch thread per run  ",
        f"Date: {meta['date']}",
    ]


def write_report(result: CompareResult, meta: dict[str, Any], files: ResultFiles = RESULTS) -> None:
    """``compare.md`` and ``accuracy_vs_flops.png`` in ``result.out`` (or ``files``)."""
    header, rows = table(result)
    lines = [
        *provenance_lines(meta),
        "",
        f"### {result.task}, {result.epochs} epochs, seeds "
        f"{_seed_text(result.seeds)} (mean ± 95% interval over seeds)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        "FLOPs: matrix multiplications, convolutions and attention (2 per multiply-add), "
        "forward and backward for training; evaluation includes counterfactual passes.",
        "Accuracies: *val* is the decision split, held out of training, which every "
        "epoch's evaluation, the controller, the gates and the counterfactuals read; "
        "*test* is the test split, read once by this report (none for tasks without one).",
    ]
    failures = [o for arm in result.arms for o in arm.failed]
    lines += [f"- failed: {o.arm} seed {o.seed}: {o.error}" for o in failures]
    atomic_write(result.out / files.markdown, ("\n".join(lines) + "\n").encode())
    plot_accuracy_vs_flops(result, result.out / files.plot)


_PROVENANCE = ("command", "commit", "machine", "date")


def load_result(out: Path) -> tuple[CompareResult, dict[str, Any]]:
    """The result and provenance that `write_outputs` saved to ``out/compare.json``, for
    ``esper report`` to rebuild the table and the plot from the file alone."""
    path = out / "compare.json"
    try:
        data = json.loads(path.read_text())
        arms = []
        for entry in data["arms"]:
            label = str(entry["arm"])
            runs = tuple(
                RunOutcome(
                    label,
                    int(run["seed"]),
                    str(out / run["run_dir"]) if run["run_dir"] else "",
                    run["summary"],
                    run["error"],
                )
                for run in data["runs"]
                if run["arm"] == label
            )
            width = math.nan if entry["width"] is None else float(entry["width"])
            controllers = [o.summary["controller"] for o in runs if o.summary]
            controller = controllers[0] if controllers else _controller_of(label)
            matched = label == "static-matched"
            arm = Arm(label, str(controller), None if matched else width)
            arms.append(ArmSummary(arm, str(entry["label"]), runs, width))
        meta = {key: data[key] for key in _PROVENANCE}
        result = CompareResult(
            str(data["task"]), int(data["epochs"]), tuple(data["seeds"]), tuple(arms), out
        )
    except OSError as error:
        raise RunError(f"cannot read {path} ({error.strerror})") from None
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise RunError(f"{path} is not a compare.json written by esper compare ({error})") from None
    if not result.arms:
        raise RunError(f"{path} lists no arm")
    return result, meta


def _controller_of(label: str) -> str:
    """The controller of an arm with no finished run to say: the registered controller
    whose arm has this label (every other arm is static)."""
    named = (spec.name for _, spec in CONTROLLERS.items() if spec.arm_label == label)
    return next(named, STATIC)


def _seed_text(seeds: Sequence[int]) -> str:
    ordered = sorted(seeds)
    if ordered == list(range(ordered[0], ordered[-1] + 1)) and len(ordered) > 2:
        return f"{ordered[0]}-{ordered[-1]}"
    return ", ".join(map(str, ordered))


def _plain(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def plot_accuracy_vs_flops(result: CompareResult, path: Path) -> None:
    """Accuracy (`CompareResult.score`) against training FLOPs: one small point per run,
    and each arm's mean with its 95% intervals on both axes."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
    for index, arm in enumerate(result.arms):
        colour = colours[index % len(colours)]
        xs, ys = arm.values("train_flops"), arm.values(result.score)
        if not xs:
            continue
        ax.scatter(xs, ys, s=18, color=colour, alpha=0.5)
        (mx, hx), (my, hy) = mean_interval(xs), mean_interval(ys)
        ax.errorbar(
            [mx],
            [my],
            xerr=[[hx if math.isfinite(hx) else 0.0]],
            yerr=[[hy if math.isfinite(hy) else 0.0]],
            fmt="o",
            ms=7,
            color=colour,
            capsize=3,
            label=f"{arm.label} (n={len(xs)})",
        )
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs per run")
    ax.set_ylabel(
        "test accuracy (%)" if result.score == "test_accuracy" else "final validation accuracy (%)"
    )
    ax.set_title(f"{result.task}, {result.epochs} epochs: accuracy against training compute")
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:  # no finished run: an empty plot, no legend
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=110)
    atomic_write(path, image.getvalue())
