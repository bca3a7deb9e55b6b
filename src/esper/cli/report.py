"""``esper report DIR``: rebuild the summary and plots of a run, a PPO training or a
compare from its files alone (finished or interrupted)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from esper.cli import runs
from esper.cli.compare import print_compare
from esper.compare import load_result, write_report
from esper.rl.training import PPOTrainConfig, load_train_config
from esper.run import RunError
from esper.telemetry.updates import (
    UPDATES_FILE,
    UpdateRow,
    plot_training,
    read_updates,
    summarize_updates,
)

__all__ = ["report_command"]


def report_command(args: argparse.Namespace, console: Console) -> int:
    """A compare directory (``compare.json``), a PPO training (``updates.jsonl``), or
    else a run directory."""
    path: Path = args.run_dir
    if (path / "compare.json").is_file():
        return _report_compare(path, console)
    if (path / UPDATES_FILE).is_file():
        return _report_training(path, console)
    return runs.report_command(args, console)


def _report_compare(out: Path, console: Console) -> int:
    result, meta = load_result(out)
    write_report(result, meta)
    print_compare(result, out, console)  # names failed runs; the report itself succeeded
    return 0


def _report_training(out: Path, console: Console) -> int:
    config_path = out / "config.json"
    try:
        config = load_train_config(config_path)
    except OSError as error:
        raise RunError(f"cannot read {config_path} ({error.strerror})") from None
    except ValueError as error:
        raise RunError(f"{config_path}: {str(error).splitlines()[0]}") from None
    try:
        rows = read_updates(out / UPDATES_FILE)
    except ValueError as error:
        raise RunError(f"{out / UPDATES_FILE} is damaged ({error})") from None
    if not rows:
        raise RunError(f"{out}: no PPO update has finished yet, nothing to report")
    plot_training(rows, out / "training_curve.png", config.run.task)
    console.print(_training_table(rows, config))
    console.print(f"training curve: {out / 'training_curve.png'}", soft_wrap=True)
    return 0


def _training_table(rows: list[UpdateRow], config: PPOTrainConfig) -> Table:
    s = summarize_updates(rows)
    run = config.run
    table = Table(title=f"PPO on {run.task}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right", overflow="fold")

    def number(value: float, form: str) -> str:
        return format(value, form) if math.isfinite(value) else "-"

    for name, value in (
        ("updates", f"{s['updates']} of {config.updates}"),
        (
            "episodes",
            f"{s['episodes']} of {config.episodes} ({config.envs} per update, "
            f"{run.episode.epochs} epochs each)",
        ),
        (
            "mean return",
            f"{number(s['mean_return'], '+.3f')} (best {number(s['best_mean_return'], '+.3f')}, "
            f"update {s['best_return_update']})",
        ),
        (
            "mean final accuracy",
            f"{number(s['mean_final_accuracy'], '.2f')}% (best "
            f"{number(s['best_mean_final_accuracy'], '.2f')}%, update {s['best_accuracy_update']})",
        ),
        ("mean added parameters", number(s["mean_added_params"], ",.0f")),
        ("mean seeds kept", number(s["mean_seeds_kept"], ".2f")),
        ("approx KL", number(s["approx_kl"], ".4f")),
        ("clip fraction", number(s["clip_fraction"], ".3f")),
        ("entropy", number(s["entropy"], ".3f")),
        ("explained variance", number(s["explained_variance"], ".3f")),
        ("rollout / update time", f"{s['rollout_seconds']:.0f} s / {s['update_seconds']:.1f} s"),
    ):
        table.add_row(name, value)
    return table
