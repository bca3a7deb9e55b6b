"""``esper compare``: does growing beat a fixed network? Every arm on every seed.

An *arm* is a way to train the task: ``heuristic`` (grow with the rule-based controller),
``static`` (the host, never grown), ``static@X`` (a static host with every width scaled
by X) and ``static-matched`` (a static host widened to the grown runs' mean final
parameter count, resolved once the grown runs are done). Each arm x seed is an ordinary
run directory under ``OUT/runs/<arm>/seed-<n>/``, trained with one torch thread by one
worker of the pool `compare` is given: `LocalPool` (processes on this machine) or
`esper.compare_ray.RayPool` (tasks on a Ray cluster). A finished run is never trained
again, and an interrupted one resumes from its last checkpoint, so rerunning the same
command continues an interrupted compare.

The result: a table (mean and 95% t-interval over seeds of final and best accuracy,
parameters, training and evaluation FLOPs, wall time, seeds kept and the run's return,
the reward every controller's run records, plus each arm's paired difference in final
accuracy against the first arm), ``compare.json``,
``compare.md`` and ``accuracy_vs_flops.png`` (one point per run) in ``OUT``.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import platform
import queue
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from matplotlib.figure import Figure

from esper.arms import ARM_HELP, Arm, parse_arms, parse_seeds
from esper.config import RunConfig, from_dict, to_dict
from esper.run import RunError, finish_report, prepare_run_dir, read_config, run
from esper.telemetry.report import format_flops, read_history
from esper.training.builders import build_model, load_data
from esper.training.tasks import TaskOptions, get_task

__all__ = [
    "ARM_HELP",
    "METRICS",
    "Arm",
    "ArmSummary",
    "CompareResult",
    "LocalPool",
    "RunOutcome",
    "RunPool",
    "RunTask",
    "cached_outcome",
    "commit",
    "compare",
    "load_result",
    "machine",
    "matched_width",
    "mean_interval",
    "paired_difference",
    "parse_arms",
    "parse_seeds",
    "plot_accuracy_vs_flops",
    "provenance",
    "run_task",
    "table",
    "write_outputs",
    "write_report",
]

# ---------------------------------------------------------------- one run


@dataclass(frozen=True)
class RunTask:
    """One arm on one seed: where it runs and its full configuration (plain data)."""

    arm: str
    seed: int
    run_dir: str
    config: dict[str, Any]


@dataclass(frozen=True)
class RunOutcome:
    """A finished run's summary (``summary.json``), or why it failed."""

    arm: str
    seed: int
    run_dir: str
    summary: dict[str, Any] | None
    error: str | None = None
    cached: bool = False


def cached_outcome(task: RunTask) -> RunOutcome | None:
    """The outcome of ``task`` if its run directory already holds it finished (or was
    trained with other settings: an error outcome); None if it still has to run."""
    run_dir = Path(task.run_dir)
    try:
        config = from_dict(RunConfig, task.config)
        if not (run_dir / "config.json").is_file():
            return None
        if read_config(run_dir) != config:
            raise RunError(
                f"{run_dir} was trained with other settings; delete it or use another --out"
            )
        finished = _finished(run_dir, config.episode.epochs)
        if finished is not None:
            return RunOutcome(task.arm, task.seed, task.run_dir, finished, cached=True)
    except Exception as error:  # reported per run; the compare goes on
        return _failed(task, error)
    return None


def run_task(task: RunTask) -> RunOutcome:
    """Train one arm on one seed, or reuse its finished run, or resume its interrupted one.

    Runs in a worker process; failures come back as an outcome, not an exception, so one
    bad run never stops the others.
    """
    cached = cached_outcome(task)
    if cached is not None:
        return cached
    run_dir = Path(task.run_dir)
    try:
        config = from_dict(RunConfig, task.config)
        if (run_dir / "config.json").is_file():  # the same settings: cached_outcome checked
            # Interrupted: resume from its last checkpoint (or from epoch 1 if it had none).
            summary = run(run_dir, None, [], lambda row: None)
        else:
            summary = run(prepare_run_dir(run_dir), config, [], lambda row: None)
        return RunOutcome(task.arm, task.seed, task.run_dir, summary)
    except Exception as error:  # reported per run; the compare goes on
        return _failed(task, error)


def _failed(task: RunTask, error: Exception) -> RunOutcome:
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    return RunOutcome(task.arm, task.seed, task.run_dir, None, error=message)


def _finished(run_dir: Path, epochs: int) -> dict[str, Any] | None:
    """The summary of a run that trained all ``epochs`` (rebuilt from its history if it
    stopped before writing it), or None."""
    path = run_dir / "summary.json"
    if path.is_file():
        summary: dict[str, Any] = json.loads(path.read_text())
        if summary.get("epochs") == epochs:
            return summary
    if (run_dir / "history.jsonl").is_file():
        rows = read_history(run_dir / "history.jsonl")
        if rows and rows[-1].epoch == epochs:
            return finish_report(run_dir)
    return None


# ---------------------------------------------------------------- where runs execute


class RunPool(Protocol):
    """Where `compare` runs its tasks: `LocalPool` (processes on this machine) or
    `esper.compare_ray.RayPool` (tasks on a Ray cluster)."""

    def submit(self, task: RunTask) -> None:
        """Start ``task`` (or queue it); its outcome comes back from `next_done`."""

    def next_done(self) -> RunOutcome:
        """Block until a submitted task finishes; its outcome (failures included)."""

    def close(self) -> None:
        """Every task is done: release the workers."""

    def terminate(self) -> None:
        """Stop at once (Ctrl-C): unfinished runs keep their last checkpoint."""


class LocalPool:
    """Runs `RunTask`s in ``workers`` spawned processes, one torch thread each.

    ``workers=1`` runs every task in this process, one after another. Tasks can be
    submitted while others run; `next_done` blocks until one finishes.
    """

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"--workers must be at least 1, got {workers}")
        self.workers = workers
        self._waiting: list[RunTask] = []
        self._done: queue.Queue[RunOutcome] = queue.Queue()
        self._running = 0
        self._pool: Any = None
        if workers > 1:
            # spawn, not fork: a forked child inherits torch's thread pools mid-state.
            context = multiprocessing.get_context("spawn")
            self._pool = context.Pool(workers, initializer=_worker_init)

    def submit(self, task: RunTask) -> None:
        self._running += 1
        if self._pool is None:
            self._waiting.append(task)
        else:
            self._pool.apply_async(run_task, (task,), callback=self._done.put)

    def next_done(self) -> RunOutcome:
        if self._running == 0:
            raise RuntimeError("no task is running")
        self._running -= 1
        if self._pool is None:
            return run_task(self._waiting.pop(0))
        return self._done.get()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()

    def terminate(self) -> None:
        """Stop at once (Ctrl-C): every run keeps its last checkpoint and resumes later."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()


def _worker_init() -> None:
    # Ctrl-C is the parent's to handle: it terminates the workers, whose runs then
    # resume from their last checkpoint on the next compare.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


# ---------------------------------------------------------------- the comparison


@dataclass(frozen=True)
class ArmSummary:
    """One arm's runs and their statistics over seeds."""

    arm: Arm
    label: str
    """The arm as shown, e.g. ``static-matched (x1.83)``."""
    runs: tuple[RunOutcome, ...]
    width: float

    @property
    def finished(self) -> list[dict[str, Any]]:
        return [r.summary for r in self.runs if r.summary is not None]

    @property
    def failed(self) -> list[RunOutcome]:
        return [r for r in self.runs if r.summary is None]

    def values(self, key: str) -> list[float]:
        return [float(s[key]) for s in self.finished]


@dataclass(frozen=True)
class CompareResult:
    task: str
    epochs: int
    seeds: tuple[int, ...]
    arms: tuple[ArmSummary, ...]
    out: Path


METRICS: tuple[tuple[str, str], ...] = (
    ("final_accuracy", "final acc (%)"),
    ("best_accuracy", "best acc (%)"),
    ("params", "params"),
    ("train_flops", "train FLOPs"),
    ("eval_flops", "eval FLOPs"),
    ("wall_seconds", "wall (s)"),
    ("seeds_fossilized", "seeds kept"),
    ("total_reward", "return"),
)


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% t-interval (NaN half-width for fewer than 2)."""
    mean = statistics.fmean(values) if values else math.nan
    if len(values) < 2:
        return mean, math.nan
    # Imported here, for start-up time only: scipy.stats takes a noticeable part of a
    # second to import, and every command that loads this module need not pay it.
    from scipy import stats

    half = float(stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values)
    return mean, half / math.sqrt(len(values))


def matched_width(config: RunConfig, target_params: float) -> float:
    """The width multiplier (to 0.01) whose static host has closest to ``target_params``."""
    spec = get_task(config.task)
    split = load_data(spec, _options(config))

    def params(multiplier: float) -> int:
        return build_model(spec, split, config.slots, None, multiplier).host_params

    low, high = 100, 1600  # multipliers in hundredths; host params never fall with width
    while low < high:
        mid = (low + high) // 2
        if params(mid / 100) >= target_params:
            high = mid
        else:
            low = mid + 1
    # The first multiplier reaching the target, or the one below it if that is closer.
    best = min((low, max(low - 1, 1)), key=lambda m: abs(params(m / 100) - target_params))
    return best / 100


def _options(config: RunConfig) -> TaskOptions:
    return TaskOptions(
        data_dir=Path(config.data_dir) if config.data_dir else None,
        text_file=Path(config.text_file) if config.text_file else None,
    )


def _run_config(base: RunConfig, arm: Arm, width: float, seed: int) -> RunConfig:
    return replace(
        base,
        controller=arm.controller,  # type: ignore[arg-type]
        policy=arm.policy,
        width_multiplier=width,
        threads=1,
        telemetry_level="lifecycle",
        episode=replace(base.episode, seed=seed),
    )


def _task(out: Path, base: RunConfig, arm: Arm, width: float, seed: int) -> RunTask:
    folder = arm.label if arm.width is not None else f"static@{width:g}"
    run_dir = out / "runs" / folder / f"seed-{seed}"
    return RunTask(arm.label, seed, str(run_dir), to_dict(_run_config(base, arm, width, seed)))


def compare(
    out: Path,
    base: RunConfig,
    arms: Sequence[Arm],
    seeds: Sequence[int],
    pool: RunPool,
    on_done: Callable[[RunOutcome, int, int], None] = lambda outcome, done, total: None,
) -> CompareResult:
    """Run every arm on every seed through ``pool`` and summarise them.

    ``on_done(outcome, finished, total)`` is called as each run finishes. Matched arms
    are started once every run of the first growing arm has finished.
    """
    out.mkdir(parents=True, exist_ok=True)
    order = sorted(arms, key=lambda a: (not a.grows, a.width is None))
    reference = next((a for a in order if a.grows), None)
    total = len(arms) * len(seeds)
    outcomes: dict[str, list[RunOutcome]] = {a.label: [] for a in arms}
    widths: dict[str, float] = {a.label: a.width for a in arms if a.width is not None}
    matched = [a for a in arms if a.width is None]
    done = pending = 0

    def finished(outcome: RunOutcome) -> None:
        nonlocal done
        outcomes[outcome.arm].append(outcome)
        done += 1
        on_done(outcome, done, total)

    try:
        for arm in order:
            if arm.width is not None:
                for seed in seeds:
                    pool.submit(_task(out, base, arm, arm.width, seed))
                    pending += 1
        while pending:
            finished(pool.next_done())
            pending -= 1
            if matched and reference is not None and len(outcomes[reference.label]) == len(seeds):
                sizes = [float(o.summary["params"]) for o in outcomes[reference.label] if o.summary]
                for arm in matched:
                    if not sizes:
                        for seed in seeds:
                            finished(RunOutcome(arm.label, seed, "", None, "no grown run to match"))
                        continue
                    widths[arm.label] = matched_width(base, statistics.fmean(sizes))
                    for seed in seeds:
                        pool.submit(_task(out, base, arm, widths[arm.label], seed))
                        pending += 1
                matched = []
    except BaseException:
        pool.terminate()
        raise
    pool.close()
    summaries = tuple(
        ArmSummary(
            arm,
            arm.label
            if arm.label not in widths or arm.width is not None
            # A matched arm has no width when no grown run finished to size it.
            else f"{arm.label} (x{widths[arm.label]:g})",
            tuple(sorted(outcomes[arm.label], key=lambda o: o.seed)),
            widths.get(arm.label, math.nan),
        )
        for arm in arms
    )
    return CompareResult(base.task, base.episode.epochs, tuple(seeds), summaries, out)


# ---------------------------------------------------------------- reporting


def _cell(values: Sequence[float], key: str) -> str:
    mean, half = mean_interval(values)
    if not values:
        return "-"
    if key.endswith("flops"):
        text = format_flops(mean).removesuffix("FLOPs").strip()
        spread = format_flops(half).removesuffix("FLOPs").strip() if math.isfinite(half) else ""
        return f"{text} ± {spread}" if spread else text
    digits = {
        "final_accuracy": 2,
        "best_accuracy": 2,
        "seeds_fossilized": 1,
        "total_reward": 3,
    }.get(key, 0)
    if not math.isfinite(half):
        return f"{mean:,.{digits}f}"
    return f"{mean:,.{digits}f} ± {half:,.{digits}f}"


def paired_difference(arm: ArmSummary, reference: ArmSummary) -> tuple[float, float, int]:
    """Mean and 95% half-width of this arm's final accuracy minus the reference's, over
    the seeds both finished (pairing by seed removes the seed-to-seed spread)."""
    ours = {o.seed: o.summary for o in arm.runs if o.summary}
    theirs = {o.seed: o.summary for o in reference.runs if o.summary}
    diffs = [
        float(ours[s]["final_accuracy"]) - float(theirs[s]["final_accuracy"])
        for s in sorted(ours.keys() & theirs.keys())
    ]
    mean, half = mean_interval(diffs)
    return mean, half, len(diffs)


def table(result: CompareResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table (FLOPs in SI units, e.g. 5.53 T)."""
    first = result.arms[0]
    header = ["arm", "runs", *(name for _, name in METRICS), f"Δ final vs {first.label} (pp)"]
    rows = []
    for arm in result.arms:
        runs = f"{len(arm.finished)}/{len(arm.runs)}"
        cells = [_cell(arm.values(key), key) for key, _ in METRICS]
        if arm is first:
            delta = "-"
        else:
            mean, half, n = paired_difference(arm, first)
            delta = "-" if n == 0 else f"{mean:+.2f}" + (f" ± {half:.2f}" if n > 1 else "")
        rows.append([arm.label, runs, *cells, delta])
    return header, rows


def commit() -> str:
    """The checked-out commit of Esper's source (``+dirty`` with local changes)."""
    source = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=source,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=source,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    """The machine results come from: CPU model, cores, torch and Python versions."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):  # no /proc: keep platform's name
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def provenance(command: str) -> dict[str, Any]:
    """Command, commit, machine and date: what any result file records."""
    return {
        "command": command,
        "commit": commit(),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def write_outputs(result: CompareResult, meta: dict[str, Any]) -> None:
    """``compare.json``, ``compare.md`` and ``accuracy_vs_flops.png`` in ``result.out``."""
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
    (result.out / "compare.json").write_text(json.dumps(_plain(payload), indent=2) + "\n")
    write_report(result, meta)


def write_report(result: CompareResult, meta: dict[str, Any]) -> None:
    """``compare.md`` and ``accuracy_vs_flops.png`` in ``result.out``."""
    header, rows = table(result)
    machine = meta["machine"]
    lines = [
        f"Command: `{meta['command']}`  ",
        f"Commit: {meta['commit']}  ",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
        "one torch thread per run  ",
        f"Date: {meta['date']}",
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
    ]
    failures = [o for arm in result.arms for o in arm.failed]
    lines += [f"- failed: {o.arm} seed {o.seed}: {o.error}" for o in failures]
    (result.out / "compare.md").write_text("\n".join(lines) + "\n")
    plot_accuracy_vs_flops(result, result.out / "accuracy_vs_flops.png")


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
            controller = controllers[0] if controllers else _CONTROLLERS.get(label, "baseline")
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


_CONTROLLERS = {"heuristic": "heuristic", "learned": "ppo"}
"""The controller of an arm with no finished run to say (every other arm is static)."""


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
    """Final accuracy against training FLOPs: one small point per run, and each arm's
    mean with its 95% intervals on both axes."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
    for index, arm in enumerate(result.arms):
        colour = colours[index % len(colours)]
        xs, ys = arm.values("train_flops"), arm.values("final_accuracy")
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
    ax.set_ylabel("final validation accuracy (%)")
    ax.set_title(f"{result.task}, {result.epochs} epochs: accuracy against training compute")
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:  # no finished run: an empty plot, no legend
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
