"""The ``esper`` command line: every command's arguments.

Torch-free on purpose: ``esper --help``, ``esper COMMAND --help`` and argument errors are
answered from this module alone, before any command imports torch and its friends.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from esper import __version__
from esper.arms import MAX_RUNS, MAX_SEED_COUNT, arm_help
from esper.config import MAX_SEED
from esper.controller.registry import CONTROLLERS, ControllerSpec, shipped_policies
from esper.training.tasks import TASKS

__all__ = [
    "build_parser",
    "compare_options",
    "controller_command",
    "positive_seconds",
    "ray_argument",
    "run_options",
    "search_options",
    "tensorboard_option",
    "threads_argument",
]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points at --help (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


POLICY_HELP = (
    "the training run (or its policy.pt), or the name of a policy that comes with Esper: "
    + (", ".join(shipped_policies()) or "none yet")
)


def build_parser() -> argparse.ArgumentParser:
    tasks = "\n".join(f"  {name:<14} {spec.help}" for name, spec in TASKS.items())
    parser = _Parser(
        prog="esper",
        description="Morphogenetic training: a host network grows seeds while it trains.",
        epilog=f"tasks:\n{tasks}\n\nrun 'esper COMMAND --help' for each command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"esper {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run_commands(commands)
    _add_compare_command(commands)
    _add_search_command(commands)
    _add_ppo_command(commands)
    _add_watch_command(commands)
    return parser


def threads_argument(text: str) -> int | str:
    """``--threads``: ``auto`` or a positive count."""
    if text == "auto":
        return text
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive number, got {text!r}")
    return count


def ray_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--ray [ADDRESS]``: None without it, "" for the default connection."""
    parser.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help=f"{what} on a Ray cluster: its head's HOST:6379, ray://HOST:10001 or 'auto' "
        "(alone: the cluster RAY_ADDRESS names, else a new Ray on this machine); needs "
        "pip install 'esper[ray]' and, on every node, esper and the data at the same path",
    )


def _non_negative(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = -1
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"expected a number of at least 0, got {text!r}")
        return value

    return parse


# ---------------------------------------------------------------- heuristic, baseline, report


def _add_run_commands(commands: Any) -> None:
    """One command per registered controller with a command of its own (``heuristic``,
    ``baseline``; ``ppo run`` is under ``ppo``), and ``report``."""
    for _, spec in CONTROLLERS.items():
        if len(spec.command) == 1:
            controller_command(commands, spec)
    report = commands.add_parser(
        "report",
        help="rebuild the summary and plots of a run, a PPO training or a compare, from its files",
        description="From the files alone, and on interrupted runs too: for a run "
        "directory, read history.jsonl and config.json, rewrite summary.json and "
        "timeline.png and print the summary; for an 'esper ppo train' directory, redraw "
        "training_curve.png from updates.jsonl and print a summary table; for an 'esper "
        "compare' directory, rewrite compare.md and accuracy_vs_flops.png from "
        "compare.json and print the table.",
    )
    report.add_argument(
        "run_dir",
        type=Path,
        metavar="RUN_DIR",
        help="a run directory, an 'esper ppo train' directory or an 'esper compare' --out",
    )
    export = commands.add_parser(
        "export",
        help="write a run's grown network as a plain PyTorch model (esper.load_model)",
        description="Write the network of a run (its newest intact checkpoint) as one file "
        "of widths and weights that loads with torch.load(weights_only=True); "
        "esper.load_model(FILE) builds it as a plain nn.Module, without the lifecycle "
        "machinery, whose outputs are the run's final model's.",
    )
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory")
    export.add_argument(
        "--out", type=Path, metavar="FILE", help="where to write it (default: RUN_DIR/network.pt)"
    )


def controller_command(commands: Any, spec: ControllerSpec) -> argparse.ArgumentParser:
    """The command that runs ``spec``'s controller (its last word, under ``commands``)."""
    parser: argparse.ArgumentParser = commands.add_parser(
        spec.command[-1], help=spec.help, description=spec.description or spec.help
    )
    run_options(parser)
    if spec.needs_policy:
        parser.add_argument("--policy", metavar="DIR|NAME", help=POLICY_HELP)
        _sample_option(parser.add_argument)
    parser.set_defaults(controller=spec.name)
    return parser


def _epoch_options(add: Callable[..., Any], epochs: str, default: str) -> None:
    """How long and on how much data a command's runs train."""
    add("--epochs", type=int, metavar="N", help=f"{epochs} (default: {default})")
    add("--max-batches", type=int, metavar="N", help="train on at most N batches per epoch")
    add(
        "--max-val-batches",
        type=int,
        metavar="N",
        help="validate on at most N batches (default: the whole validation set)",
    )


def _data_options(add: Callable[..., Any]) -> None:
    """Where file-based tasks find their data."""
    add("--data-dir", metavar="DIR", help="data directory for cifar10 / fashion_mnist")
    add("--text-file", metavar="PATH", help="UTF-8 text file for the text task")


def run_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--task", help=f"task to train: {', '.join(TASKS.names())} (default: digits)")
    _epoch_options(add, "epochs to train", "the task's")
    add(
        "--seed",
        type=int,
        metavar="N",
        help="random seed for init, data order, everything (default: 0)",
    )
    add("--slots", nargs="+", metavar="ID", help="enabled slots, e.g. r0c0 r0c2 (default: all)")
    add("--max-seeds", type=int, metavar="N", help="germinate at most N seeds in the run")
    add("--batch-size", type=int, metavar="N", help="training batch size (default: the task's)")
    add("--device", help="cpu, cuda or cuda:N (default: cpu)")
    add(
        "--threads",
        type=threads_argument,
        metavar="N",
        help="CPU threads for torch, or 'auto' (default): one when a batch is too small to "
        "split, else one per physical core that other processes leave free",
    )
    add(
        "--compile",
        action="store_true",
        default=None,
        help="compile forward + loss with torch.compile (slow start on CPU)",
    )
    add(
        "--telemetry-level",
        choices=["off", "lifecycle", "normal", "debug"],
        help="what goes to events.jsonl and the console (default: normal)",
    )
    add(
        "--width-multiplier",
        type=float,
        metavar="X",
        help="scale every host width by X, e.g. a static host of the grown size (default: 1)",
    )
    _data_options(add)
    add(
        "--config",
        type=Path,
        metavar="FILE",
        help="JSON run configuration (unknown keys are errors); flags override it",
    )
    add(
        "--out",
        metavar="DIR",
        help="run directory: new, empty, or an Esper run that never started "
        "(default: runs/<command>-<task>-<time>)",
    )
    add(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue an interrupted run from its last checkpoint",
    )
    add("--quiet", action="store_true", help="no progress bar or event lines, only the summary")
    tensorboard_option(parser)


def tensorboard_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard event files to DIR/tensorboard/ (needs "
        "pip install 'esper[tensorboard]'; view with: tensorboard --logdir runs)",
    )


# ---------------------------------------------------------------- compare


def _add_compare_command(commands: Any) -> None:
    compare_parser = commands.add_parser(
        "compare",
        help="train grown and static arms on several seeds and compare them",
        description="Train every arm on every seed (a local process pool, or Ray tasks with "
        "--ray; one torch thread per run) and print a table of mean and 95% interval over "
        "seeds: final and best accuracy, parameters, training and evaluation FLOPs, wall "
        "time, seeds kept, return, and each arm's paired difference against the first. Writes "
        "compare.json, compare.md and accuracy_vs_flops.png to --out, replaced only by a "
        "complete table (one with failed runs goes to compare.partial.*). Finished runs are "
        "kept and interrupted ones resume: rerun the same command to continue (the arms and "
        "seeds may change, the other settings may not). One compare per --out at a time; "
        f"at most {MAX_RUNS:,} runs (arms x seeds) per compare.",
    )
    compare_options(compare_parser)


def compare_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--task", help=f"task to train: {', '.join(TASKS.names())} (default: digits)")
    add(
        "--arms",
        default="static,heuristic,static-matched",
        help=f"comma-separated arms (default: %(default)s): {arm_help()}",
    )
    add(
        "--seeds",
        default="5",
        help=f"a count up to {MAX_SEED_COUNT} (5: seeds 0-4), an inclusive range (100-109) "
        f"or a list (1,3,7) of seeds 0 to {MAX_SEED} (default: %(default)s)",
    )
    _epoch_options(add, "epochs per run", "the task's")
    add(
        "--workers",
        type=int,
        metavar="W",
        help="runs the local pool trains at once, one torch thread each, at most one per "
        "run (default: one per CPU core; with --ray, Ray decides)",
    )
    add("--batch-size", type=int, metavar="N", help="training batch size (default: the task's)")
    _data_options(add)
    add(
        "--config",
        type=Path,
        metavar="FILE",
        help="JSON run configuration shared by every arm (e.g. heuristic settings)",
    )
    add(
        "--out",
        metavar="DIR",
        help="where the runs and results go: a new or empty directory, or a compare's "
        "--out to continue it with the same settings (default: runs/compare-<task>)",
    )
    add("--quiet", action="store_true", help="no line per finished run, only the table")
    ray_argument(parser, "run every arm x seed as a task (one CPU each)")
    add(
        "--gpus-per-run",
        type=_non_negative(float),
        metavar="X",
        help="with --ray: GPUs each run asks for, e.g. 0.25 to share one GPU among four "
        "runs (default: 0, CPU only)",
    )
    _max_retries_option(add)


def _max_retries_option(add: Callable[..., Any]) -> None:
    add(
        "--max-retries",
        type=_non_negative(int),
        default=3,
        metavar="N",
        help="with --ray: times a run is retried when its worker or node dies "
        "(default: %(default)s)",
    )


# ---------------------------------------------------------------- search


def _add_search_command(commands: Any) -> None:
    parser = commands.add_parser(
        "search",
        help="measure the headroom over the heuristic: search scripted growth plans",
        description="Search a family of scripted plans (what to grow where and when, and "
        "when to ask to keep it: the schedule controller) on --train-seeds, scored on the "
        "decision split only, then run the best plan against the heuristic on "
        "--eval-seeds, paired, scored on the test split. Writes search.json, search.md, "
        "best.config.json (for 'esper compare --arms heuristic,schedule --config') and the "
        "evaluation compare (eval/PLAN/) to --out. Runs are reused: rerun the same "
        "command to continue an interrupted search; a search with another objective or "
        "budget in the same --out trains only the plans it has not seen (search.json and "
        "search.md are the latest search's).",
    )
    search_options(parser)


def search_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--task", help=f"task to train: {', '.join(TASKS.names())} (default: digits)")
    seeds = f"a count up to {MAX_SEED_COUNT}, an inclusive range (100-109) or a list (1,3,7)"
    add(
        "--train-seeds",
        default="3",
        help=f"seeds the search scores plans on: {seeds} (default: %(default)s, seeds 0-2)",
    )
    add(
        "--eval-seeds",
        default="100-109",
        help=f"held-out seeds the best plan and the "
        f"heuristic are compared on: {seeds} (default: %(default)s)",
    )
    add(
        "--candidates",
        type=int,
        default=48,
        metavar="N",
        help="plans to train in all, each on every training seed (default: %(default)s)",
    )
    add(
        "--population",
        type=int,
        default=8,
        metavar="N",
        help="plans per generation (default: %(default)s)",
    )
    add(
        "--search-seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of the search's own choices (default: %(default)s)",
    )
    add(
        "--objective",
        choices=["accuracy", "return"],
        default="accuracy",
        help="rank plans by final decision-split accuracy within the FLOP budget, or by "
        "the episode's return (default: %(default)s)",
    )
    add(
        "--max-flops-ratio",
        type=float,
        default=1.0,
        metavar="X",
        help="with --objective accuracy: plans may use at most X times the heuristic's "
        "training FLOPs on the training seeds (default: %(default)s)",
    )
    _epoch_options(add, "epochs per run", "the task's")
    add("--batch-size", type=int, metavar="N", help="training batch size (default: the task's)")
    _data_options(add)
    add(
        "--config",
        type=Path,
        metavar="FILE",
        help="JSON run configuration every run shares (e.g. heuristic settings)",
    )
    add("--out", metavar="DIR", help="where the runs and results go (default: runs/search-<task>)")
    add(
        "--workers",
        type=int,
        metavar="W",
        help="runs the local pool trains at once (default: one per CPU core)",
    )
    add("--quiet", action="store_true", help="no line per finished plan, only the result")
    ray_argument(parser, "run every plan x seed as a task (one CPU each)")
    _max_retries_option(add)


# ---------------------------------------------------------------- ppo


def _add_ppo_command(commands: Any) -> None:
    """ppo train, eval and run."""
    ppo = commands.add_parser(
        "ppo",
        help="train the learned (PPO) controller, evaluate it, or run one episode with it",
        description="The learned controller: a recurrent policy over the run's signals, "
        "trained with PPO on episodes of the task (see 'esper ppo train --help').",
    )
    actions = ppo.add_subparsers(dest="ppo_command", required=True, metavar="ACTION")
    _train_options(
        actions.add_parser(
            "train",
            help="train a policy with PPO",
            description="Train a policy: each update runs --envs episodes side by side "
            "(in --workers processes, or Ray actors with --ray) and takes PPO steps on them. "
            "Writes config.json, updates.jsonl, policy.pt, checkpoint.pt and "
            "training_curve.png (and clone.json and cloned.pt with --demonstrations) to --out; "
            "--resume DIR continues an interrupted training.",
        )
    )
    evaluate = actions.add_parser(
        "eval",
        help="compare a trained policy with the heuristic and the static host",
        description="Run the policy, the heuristic and the static host on held-out seeds "
        "and print mean and 95% interval of final accuracy, added parameters and "
        "training FLOPs (an 'esper compare' with the policy as an arm, and its guarantees: "
        "see 'esper compare --help'). The policy's runs are keyed on its file's contents: "
        "after the policy changes (ppo train --resume), a rerun trains them again.",
    )
    _eval_options(evaluate)
    for _, spec in CONTROLLERS.items():
        if spec.command[:-1] == ("ppo",):
            controller_command(actions, spec)


def _train_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--task", help=f"task to train on: {', '.join(TASKS.names())} (default: digits)")
    add("--episodes", type=int, metavar="E", help="training episodes in all (default: 64)")
    add("--envs", type=int, metavar="N", help="episodes per update, side by side (default: 4)")
    add(
        "--workers",
        type=int,
        metavar="W",
        help="processes (Ray actors with --ray) the environments step in, one torch thread "
        "each (default: 1)",
    )
    _epoch_options(add, "epochs per episode", "the task's")
    add("--seed", type=int, metavar="N", help="seed of the policy and its sampling (default 0)")
    add(
        "--demonstrations",
        type=int,
        metavar="D",
        help="first clone D episodes of the heuristic, so PPO starts from its behaviour "
        "(default: 0, a random policy)",
    )
    _data_options(add)
    add(
        "--config",
        type=Path,
        metavar="FILE",
        help="JSON training configuration ({'run': ..., 'ppo': ..., 'episodes': ...})",
    )
    add("--out", metavar="DIR", help="training directory (default: runs/ppo-train-<task>-<time>)")
    add("--resume", type=Path, metavar="DIR", help="continue an interrupted training")
    add("--quiet", action="store_true", help="only the final line")
    tensorboard_option(parser)
    ray_argument(parser, "step the environments in --workers actors (one CPU each)")


def _sample_option(add: Callable[..., Any]) -> None:
    add(
        "--sample",
        dest="policy_sampling",
        action="store_const",
        const=True,
        help="sample each decision from the policy (seeded by the run's seed) instead of "
        "taking its most likely action",
    )


def _eval_options(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--policy", required=True, metavar="DIR|NAME", help=POLICY_HELP)
    _sample_option(add)
    add("--task", help="task (default: the policy's)")
    add(
        "--seeds",
        default="100-109",
        help="held-out seeds: an inclusive range, a list (1,3,7) or a count up to "
        f"{MAX_SEED_COUNT} (default: %(default)s)",
    )
    add(
        "--arms",
        default="learned,heuristic,static",
        help="arms to compare (default: %(default)s; 'learned' is the policy)",
    )
    _epoch_options(add, "epochs per run", "the policy's")
    add(
        "--workers",
        type=int,
        metavar="W",
        help="runs trained at once, at most one per run (default: cores)",
    )
    _data_options(add)
    add(
        "--out",
        metavar="DIR",
        help="results: a new or empty directory, or an earlier eval's to continue it "
        "(default: eval-<task> beside the policy; eval-<name>-<task> for another file "
        "than policy.pt, e.g. cloned.pt)",
    )
    add("--quiet", action="store_true", help="no line per finished run, only the table")
    ray_argument(parser, "run every arm x seed as a task (one CPU each)")


# ---------------------------------------------------------------- watch


def positive_seconds(text: str) -> float:
    """``--interval``: a positive number of seconds."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return seconds


def _add_watch_command(commands: Any) -> None:
    watch = commands.add_parser(
        "watch",
        help="watch a run or a PPO training live in the terminal (reads its files only)",
        description="A live terminal view of a run directory ('esper heuristic', "
        "'baseline', 'ppo run') or an 'esper ppo train' directory, running or finished. It "
        "only reads the files the run writes (no lock, nothing written), so it can watch a "
        "run started elsewhere. Keys: q quit, p pause, left/right (or 1-9) pick a slot, "
        "0 all slots. Needs pip install 'esper[watch]'.",
    )
    watch.add_argument("run_dir", type=Path, metavar="DIR", help="a run or PPO training directory")
    watch.add_argument(
        "--interval",
        type=positive_seconds,
        default=1.0,
        metavar="S",
        help="seconds between two reads of the files (default: %(default)s)",
    )
