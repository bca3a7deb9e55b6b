"""``esper ppo train|eval|run``: train the learned controller, compare it, watch it grow."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import shlex
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from esper.arms import check_size
from esper.cli.common import Terminated, print_error
from esper.cli.compare import ComparePlan, out_directory, run_compare
from esper.cli.runs import read_config_file, train_command
from esper.cluster import connected, import_ray
from esper.compare import parse_arms, parse_seeds
from esper.config import RunConfig, to_dict
from esper.controller.registry import SHIPPED_POLICIES, policy_source, shipped_policies
from esper.provenance import provenance
from esper.rl.agent import POLICY_FILE, PolicyError, load_policy
from esper.rl.env import env_config
from esper.rl.ray_envs import RayEnvPool
from esper.rl.training import (
    CloneRecord,
    PPOTrainConfig,
    Training,
    UpdateRow,
    load_train_config,
    open_training,
    resolve_train_config,
    train,
)
from esper.rl.workers import EnvPool, EnvWorkerError, PoolFactory
from esper.run import RunError, RunFailedError
from esper.rundir import atomic_write
from esper.telemetry.tensorboard import TENSORBOARD_DIR, TrainingTensorBoard, require_tensorboard

__all__ = ["PROVENANCE_FILE", "ppo_command"]

PROVENANCE_FILE = "provenance.json"
"""In a training directory: the command, commit, machine and date the training started
with (`esper.provenance.provenance`)."""


def ppo_command(args: argparse.Namespace, console: Console) -> int:
    if args.ppo_command == "train":
        return _train(args, console)
    if args.ppo_command == "eval":
        return _eval(args, console)
    if args.policy is None and args.resume is None:
        raise RunError(
            "esper ppo run needs --policy DIR (a training run) or the name of a policy that "
            f"comes with Esper ({', '.join(shipped_policies()) or 'none'})"
        )
    if args.policy is None:
        return train_command(args, console)  # --resume: the run's saved configuration
    # The policy's task and the episodes it was trained on, unless flags say otherwise.
    source = policy_source(args.policy)
    args.task = _check_policy(source, args.task)
    trained = _training_environment(source)
    return train_command(args, console, None if trained is None else to_dict(trained))


def _check_policy(path: Path, task: str | None) -> str:
    """The policy's task, after checking that it loads and fits ``task`` (if given)."""
    try:
        _, meta = load_policy(path)
    except PolicyError as error:
        raise RunError(str(error)) from None
    if task is not None and task != meta.task:
        raise RunError(
            f"{path} was trained on task {meta.task!r}, not {task!r}: use --task {meta.task}"
        )
    return meta.task


def _training_environment(policy: Path) -> RunConfig | None:
    """The environment a policy (a training directory or its policy.pt) was trained in,
    from the training's ``config.json``, if saved."""
    trained = (policy if policy.is_dir() else policy.parent) / "config.json"
    if not trained.is_file():
        return None
    try:
        return load_train_config(trained).run
    except (ValueError, OSError) as error:
        raise RunError(f"{trained}: {str(error).splitlines()[0]}") from None


# ---------------------------------------------------------------- train


RESUME_REFUSES = (
    "episodes",
    "envs",
    "workers",
    "seed",
    "task",
    "epochs",
    "max_batches",
    "max_val_batches",
    "demonstrations",
    "data_dir",
    "text_file",
    "config",
    "out",
)
"""The ``ppo train`` flags that set a training's configuration or directory, which
``--resume`` takes from the directory instead (and refuses, rather than ignore)."""


def _train(args: argparse.Namespace, console: Console) -> int:
    _check_train_flags(args)
    config: PPOTrainConfig | None = None
    if args.resume is not None:
        given = [f"--{n.replace('_', '-')}" for n in RESUME_REFUSES if getattr(args, n) is not None]
        if given:
            raise RunError(
                "--resume continues a training with its saved configuration; "
                f"drop {', '.join(given)}"
            )
        out: Path = args.resume
    else:
        config = _resolve(args)
        if args.out is not None and not args.out.strip():
            raise RunError("--out is empty; name the training directory")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path(args.out) if args.out else Path("runs") / f"ppo-train-{config.run.task}-{stamp}"
    command = shlex.join(["esper", *args.argv])
    with (
        open_training(out, config, _warn, command) as training,
        contextlib.ExitStack() as stack,
    ):
        _record_provenance(args, training)
        config = training.config
        make_pool: PoolFactory = EnvPool
        where = f"{config.workers} worker(s)"
        if args.ray is not None:
            stack.enter_context(connected(args.ray or None))
            make_pool = functools.partial(RayEnvPool, warn=_warn)
            where = f"{min(config.workers, config.envs)} Ray actor(s)"
        if not args.quiet:
            console.print(
                f"training {config.updates} updates of {config.envs} episodes "
                f"({config.run.task}, {config.run.episode.epochs} epochs each, "
                f"{where}) in {out}",
                soft_wrap=True,
            )
        return _train_with_progress(args, console, training, make_pool)


def _check_train_flags(args: argparse.Namespace) -> None:
    """The checks that need no directory: before anything is written, one line each."""
    if args.tensorboard:
        require_tensorboard()  # one line if it is missing
    for name in ("episodes", "envs", "workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise RunError(f"--{name} must be at least 1, got {value}")
    if args.demonstrations is not None and args.demonstrations < 0:
        raise RunError(f"--demonstrations must be at least 0, got {args.demonstrations}")
    if args.ray is not None:
        import_ray()  # without Ray, one line and nothing else


def _record_provenance(args: argparse.Namespace, training: Training) -> None:
    """Write `PROVENANCE_FILE` for a training that starts now; a resumed training keeps
    the record of its start (and writes one only if it has none)."""
    path = training.path / PROVENANCE_FILE
    if training.resumed and path.is_file():
        return
    record = provenance(" ".join(["esper", *map(shlex.quote, args.argv)]))
    atomic_write(path, (json.dumps(record, indent=2) + "\n").encode("utf-8"))


def _warn(message: str) -> None:
    print_error(f"esper: warning: {message}", style="yellow")


def _train_with_progress(
    args: argparse.Namespace,
    console: Console,
    training: Training,
    make_pool: PoolFactory,
) -> int:
    out, config = training.path, training.config
    progress = Progress(
        TextColumn("update"),
        MofNCompleteColumn(),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        disable=args.quiet or not console.is_terminal,
    )
    board = TrainingTensorBoard(out) if args.tensorboard else None
    with progress:
        bar = progress.add_task("ppo", total=config.updates, status="collecting episodes")

        def on_update(row: UpdateRow) -> None:
            if board is not None:
                board.write_update(row)
            status = _status(row)
            progress.update(bar, completed=row.update, status=status)
            if not console.is_terminal and not args.quiet:
                console.print(f"update {row.update}/{config.updates}  {status}", soft_wrap=True)

        def on_clone(record: CloneRecord) -> None:
            if not args.quiet:
                progress.console.print(_cloned(record), soft_wrap=True)

        if training.clones:
            progress.update(bar, status=f"running {config.demonstrations} heuristic episodes")
        try:
            rows = train(training, on_update, make_pool=make_pool, on_clone=on_clone)
        except EnvWorkerError as error:
            progress.stop()
            raise RunFailedError(
                f"{error}; continue with: esper ppo train --resume {out}"
            ) from None
        except KeyboardInterrupt as interrupt:
            progress.stop()
            console.print(
                f"interrupted; continue with: esper ppo train --resume {out}", soft_wrap=True
            )
            return 143 if isinstance(interrupt, Terminated) else 130
        finally:
            if board is not None:
                board.close()
    last = rows[-1] if rows else None
    if last is not None:
        console.print(f"done: {_status(last)}; policy in {out / 'policy.pt'}", soft_wrap=True)
    if board is not None:
        console.print(
            f"TensorBoard files in {out / TENSORBOARD_DIR}; side by side with the runs "
            f"beside it: tensorboard --logdir {out.parent}",
            soft_wrap=True,
        )
    return 0


def _cloned(record: CloneRecord) -> str:
    """How cloning went, in one line: the fit, where it stopped, entropy per head."""

    def entropies(heads: dict[str, float]) -> str:
        return " ".join(f"{name} {value:.2f}" for name, value in heads.items())

    judged = f"{record.held_out} held out" if record.held_out else "all fitted"
    return (
        f"cloned {record.demonstrations} heuristic episodes (return {record.mean_return:+.3f}, "
        f"final acc {record.mean_final_accuracy:.2f}%; {judged}): likelihood of its actions "
        f"{record.held_out_likelihood:.2f}, pass {record.kept_epoch} of {record.epochs} kept "
        f"(stopped: {record.stopped}); entropy per head {entropies(record.entropy_before)} -> "
        f"{entropies(record.entropy_after)}; {record.seconds:.0f} s"
    )


def _status(row: UpdateRow) -> str:
    return (
        f"episodes {row.episodes}  return {row.mean_return:+.3f}  final acc "
        f"{row.mean_final_accuracy:.2f}%  KL {row.approx_kl:.4f} (last "
        f"{row.approx_kl_last:.4f})  clip {row.clip_fraction:.3f}  entropy {row.entropy:.2f}"
    )


def _resolve(args: argparse.Namespace) -> PPOTrainConfig:
    file_data = read_config_file(args.config)
    run = {
        name: getattr(args, name)
        for name in ("task", "epochs", "max_batches", "max_val_batches", "data_dir", "text_file")
        if getattr(args, name) is not None
    }
    flags = {
        name: getattr(args, name)
        for name in ("episodes", "envs", "workers", "seed", "demonstrations")
        if getattr(args, name) is not None
    }
    try:
        return resolve_train_config(file_data, run, flags)
    except ValueError as error:
        raise RunError(str(error).splitlines()[0]) from None


# ---------------------------------------------------------------- eval


def _eval_dir(policy: Path, task: str) -> Path:
    """Default results directory: ``eval-<task>`` beside the policy, ``eval-<name>-<task>``
    for a policy file other than the training's ``policy.pt`` (e.g. ``cloned.pt``), so
    two policies of one training never share (and refuse) each other's runs; for a policy
    that comes with Esper, ``eval-<name>-<task>`` here (never inside the package)."""
    if policy.parent == SHIPPED_POLICIES:
        return Path(f"eval-{policy.name}-{task}")
    if policy.is_dir():
        return policy / f"eval-{task}"
    name = "" if policy.name == POLICY_FILE else f"{policy.stem}-"
    return policy.parent / f"eval-{name}{task}"


def _eval(args: argparse.Namespace, console: Console) -> int:
    """``esper ppo eval``: a compare (`run_compare`) with the policy as the arm
    ``learned``, on its task and the episodes it was trained on."""
    policy_dir = policy_source(args.policy)
    try:
        _, meta = load_policy(policy_dir, args.task)
    except PolicyError as error:
        raise RunError(str(error)) from None
    base = _training_environment(policy_dir)
    try:
        seeds = parse_seeds(args.seeds)
        arms = parse_arms(args.arms.replace("learned", f"ppo:{policy_dir}"))
        check_size(arms, seeds)
    except ValueError as error:
        raise RunError(str(error)) from None
    run = _eval_config(args, meta.task, base)
    out = out_directory(args.out, _eval_dir(policy_dir, run.task))
    intro = f"evaluating {policy_dir} on seeds {args.seeds}"
    return run_compare(args, console, ComparePlan(out, run, arms, seeds, intro))


def _eval_config(args: argparse.Namespace, task: str, base: RunConfig | None) -> RunConfig:
    """The training run's environment (if the task is the same), with the flags on top."""
    overrides = {
        name: getattr(args, name)
        for name in (
            "epochs", "max_batches", "max_val_batches", "data_dir", "text_file",
            "policy_sampling",
        )
        if getattr(args, name) is not None
    }  # fmt: skip
    if base is not None and base.task == task:
        return env_config(base, **overrides)
    return env_config(None, task=task, **overrides)
