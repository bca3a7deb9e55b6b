"""Training the learned controller: episodes of `MorphogenesisEnv`, PPO updates, a run dir.

Each update is one `esper.rl.ppo.ppo_iteration`, the path the toy proofs and CartPole
run too: the one collector (`esper.rl.rollout.RolloutCollector`) starts a fresh episode
in each of ``envs`` environments (stepped in ``workers`` processes, or Ray actors) and
runs them to their end, then `ppo_update` learns from those whole sequences, discounted
by ``run.episode.reward.gamma`` (the discount reward shaping uses). Training episodes
draw their seeds from a fixed pool (`train_seed`) far from the small seeds used for
evaluation, so ``esper ppo eval --seeds 100-109`` is always held out. An episode that
ends early (a run the governor stopped) is followed at once, in the same environment, by
one on a spare seed; each update, and cloning, has a pool of spare seeds of its own, so
a resumed run replays them. With the paired baseline each pool seed's static run is
trained once per environment process.

With ``demonstrations`` the policy first clones the rule-based heuristic (`clone`), so PPO
starts from the baseline's behaviour rather than from a random policy.

A training directory is an Esper directory of its own kind (`esper.rundir.RunDirectory`,
kind ``ppo-train``: one writer at a time, under its lock, for the whole training). It holds
``config.json`` (a `PPOTrainConfig`), ``updates.jsonl`` (one row per update),
``checkpoint.pt`` and ``checkpoint.prev.pt`` (two verified generations of the trainer's
state, `Checkpoint`: policy, optimizer, random stream, updates done, whether cloning is
done), ``policy.pt`` (`esper.rl.agent`), ``training_curve.png``, and when cloning
``clone.json`` (a `CloneRecord`) and ``cloned.pt`` (the cloned policy). A training
resumed after any interruption gives the policy and rows an uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from esper.config import MAX_SEED, RunConfig, from_dict, merge, reject_non_finite, to_dict
from esper.rl.agent import POLICY_FILE, PolicyMeta, load_policy, save_policy
from esper.rl.buffer import RolloutBuffer
from esper.rl.env import MorphogenesisEnv, env_config
from esper.rl.policy import RecurrentFactoredPolicy
from esper.rl.ppo import (
    CloneStats,
    PPOConfig,
    Reference,
    UpdateRecord,
    adam,
    clone_update,
    ppo_iteration,
)
from esper.rl.rollout import RolloutCollector
from esper.rl.workers import EnvPool, PoolFactory
from esper.rundir import (
    Checkpoint,
    RunDirectory,
    RunError,
    atomic_write,
    is_run_directory,
    read_lines,
)
from esper.telemetry import LineFile
from esper.telemetry.updates import (
    UPDATES_FILE,
    UpdateRow,
    parse_update,
    plot_training,
    read_updates,
)

__all__ = [
    "CLONED_POLICY_FILE",
    "CLONE_FILE",
    "COMMAND",
    "KIND",
    "MAX_TRAINING_SEED",
    "UPDATES_FILE",
    "CloneRecord",
    "PPOTrainConfig",
    "Training",
    "UpdateRow",
    "clone",
    "load_train_config",
    "open_training",
    "plot_training",
    "read_updates",
    "resolve_train_config",
    "train",
    "train_seed",
]

log = logging.getLogger("esper")

KIND = "ppo-train"
"""The `esper.rundir.KINDS` entry of a training directory."""
COMMAND = "ppo train"
"""The command in a training checkpoint's `esper.rundir.Identity`."""
MAX_TRAINING_SEED = (MAX_SEED - 4_000_000) // 1_000
"""The largest ``seed``: every episode seed a training draws (`train_seed` and the spare
pools, all below 4,000,000 + 1,000 x seed) stays within `esper.config.MAX_SEED`."""
CLONE_FILE = "clone.json"
CLONED_POLICY_FILE = "cloned.pt"
"""The policy as cloning left it, before any PPO update (``esper ppo eval --policy``
takes it as it takes ``policy.pt``)."""


def _esper_ppo() -> PPOConfig:
    # Few, expensive episodes: a larger step than CleanRL's Atari default, two
    # minibatches of whole episodes, four passes.
    return PPOConfig(learning_rate=1e-3, num_minibatches=2, update_epochs=4, ent_coef=0.01)


@dataclass(frozen=True)
class PPOTrainConfig:
    """An ``esper ppo train`` run, as saved to its ``config.json``."""

    run: RunConfig = field(default_factory=RunConfig)
    """The environment: task, episode length, gates, reward (its gamma is PPO's too)."""
    ppo: PPOConfig = field(default_factory=_esper_ppo)
    """PPO's hyperparameters (the discount is ``run.episode.reward.gamma``)."""
    episodes: int = 64
    """Training episodes in all (rounded up to whole updates of ``envs`` episodes)."""
    envs: int = 4
    """Episodes per update, run side by side."""
    workers: int = 1
    """Processes (or Ray actors) the environments step in (one torch thread each)."""
    seed: int = 0
    """Seeds the policy's initial weights, action sampling and minibatch order."""
    train_seeds: int = 16
    """Size of the pool of episode seeds training cycles through (see `train_seed`)."""
    hidden: int = 128
    """Width of the policy's encoder and LSTM."""
    paired_baseline: bool = True
    """Pay the terminal reward relative to the static host on the same seed."""
    demonstrations: int = 0
    """Episodes of the rule-based heuristic (the run config's settings) to clone before
    PPO starts, on the first seeds of the training pool, rounded up to whole groups of
    ``envs``: the policy starts where the heuristic is (behaviour cloning) instead of at
    random. 0: no cloning."""
    clone_epochs: int = 100
    """At most this many passes over the demonstrations when cloning them."""
    clone_held_out: float = 0.25
    """Share of the demonstrations held out of cloning (at least one of two or more):
    the policy keeps the pass under which they were likeliest (0: fit every
    demonstration, keep the last pass)."""
    clone_patience: int = 10
    """Stop cloning once the held-out likelihood has not risen for this many passes."""
    clone_entropy_floor: float = 0.25
    """Never keep a cloned policy whose mean entropy per decision (nats, over the heads
    that apply) on the held-out demonstrations is below this: cloned to certainty, PPO
    would have nothing to compare (0: no floor)."""
    clone_kl: float = 0.1
    """At PPO's first update after cloning, the weight of KL(policy || cloned policy) in
    its loss; it falls linearly to 0 over ``clone_kl_updates`` of the updates (0: none)."""
    clone_kl_updates: float = 0.5
    """The share of the updates over which the KL weight falls to 0."""

    def __post_init__(self) -> None:
        reject_non_finite(self)
        positive = ("episodes", "envs", "workers", "train_seeds", "hidden", "clone_epochs")
        for name in (*positive, "clone_patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.demonstrations < 0:
            raise ValueError(f"demonstrations must be at least 0, got {self.demonstrations}")
        if not 0 <= self.clone_held_out < 1:
            raise ValueError(f"clone_held_out must be in [0, 1), got {self.clone_held_out}")
        for name in ("clone_entropy_floor", "clone_kl"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}")
        if not 0 < self.clone_kl_updates <= 1:
            raise ValueError(f"clone_kl_updates must be in (0, 1], got {self.clone_kl_updates}")
        if not 0 <= self.seed <= MAX_TRAINING_SEED:
            raise ValueError(
                f"seed must be in 0..{MAX_TRAINING_SEED} (training episodes run on seeds "
                f"1,000,000 + 1,000 x seed + k, which must stay within {MAX_SEED}), "
                f"got {self.seed}"
            )
        if self.ppo.num_minibatches > self.envs:
            raise ValueError(
                f"ppo.num_minibatches ({self.ppo.num_minibatches}) cannot exceed envs "
                f"({self.envs}): minibatches are whole episodes"
            )

    @property
    def updates(self) -> int:
        return math.ceil(self.episodes / self.envs)

    def kl_weight(self, update: int) -> float:
        """The weight of the KL toward the cloned policy at update ``update`` (0-based)."""
        span = self.clone_kl_updates * self.updates
        return self.clone_kl * max(0.0, 1.0 - update / span)


def train_seed(config: PPOTrainConfig, episode: int) -> int:
    """Seed of training episode ``episode`` (0-based): the pool 1,000,000 + 1,000 x seed
    + (episode mod train_seeds), far from evaluation's small seeds."""
    return 1_000_000 + 1_000 * config.seed + episode % config.train_seeds


def _factory(config: PPOTrainConfig) -> Callable[[], MorphogenesisEnv]:
    return functools.partial(
        MorphogenesisEnv,
        config=to_dict(config.run),
        paired_baseline=config.paired_baseline,
        demonstrator=config.demonstrations > 0,
    )


@dataclass
class Training:
    """An ``esper ppo train`` directory held under its lock, its configuration, and where
    the training stands (`open_training`); a context manager that releases the lock."""

    directory: RunDirectory
    config: PPOTrainConfig
    checkpoint: Checkpoint | None
    """The checkpoint to continue from; None: the training starts at the beginning."""
    lines: list[bytes]
    """The lines of ``updates.jsonl`` that the checkpoint follows."""
    resumed: bool
    """Opened with ``--resume`` (the directory held a training already)."""

    def __post_init__(self) -> None:
        self._updates = LineFile(self.path / UPDATES_FILE, self.lines)

    @property
    def path(self) -> Path:
        return self.directory.path

    @property
    def clones(self) -> bool:
        """Whether the training clones the heuristic before its next update."""
        done = self.checkpoint is not None and bool(self.checkpoint.state.get("cloned"))
        return self.config.demonstrations > 0 and not done

    def append(self, row: UpdateRow) -> None:
        """Append ``row`` to ``updates.jsonl``."""
        self._updates.append(row.to_json())

    def save(self, trainer: _Trainer) -> None:
        """Write ``trainer``'s state as the newest checkpoint generation, after the rows
        of ``updates.jsonl`` written so far."""
        identity = self.directory.identity(COMMAND, self.config.run.task, to_dict(self.config))
        checkpoint = Checkpoint(identity, trainer.updates, self._updates.digest, trainer.state())
        self.directory.save_checkpoint(checkpoint)

    def close(self) -> None:
        self.directory.close()

    def __enter__(self) -> Training:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_training(
    out: Path,
    config: PPOTrainConfig | None,
    warn: Callable[[str], None] = log.warning,
    command: str | None = None,
) -> Training:
    """Lock ``out`` for a new training of ``config``, or (``config`` None) to continue the
    training it holds; `RunError`, in one line, if it cannot be used, and nothing is
    written then. The lock names ``command`` (default: this process's command line) to
    whoever finds the directory in use.

    A new training gets a new or empty directory, or Esper's own training directory that
    never started (`RunDirectory.create`). A resumed one continues from the newest
    checkpoint generation that is intact, this training's and in step with
    ``updates.jsonl`` and ``config.json`` (``warn`` names a generation skipped), or from
    the beginning if it stopped before its first checkpoint.
    """
    if config is None and not (out / "config.json").is_file():
        if is_run_directory(out):
            raise RunError(
                f"{out} holds no training yet (it stopped before it started); start it "
                f"again with --out {out}"
            )
        raise RunError(f"{out} holds no config.json to resume (not an 'esper ppo train' run)")
    opener = RunDirectory.open if config is None else RunDirectory.create
    directory = opener(out, command, kind=KIND)
    try:
        if config is None:
            return _resume_point(directory, warn)
        # At once, so that `esper watch` sees a training while the data loads.
        atomic_write(out / UPDATES_FILE, b"")
        return Training(directory, config, None, [], resumed=False)
    except BaseException:
        directory.close()
        raise


def _resume_point(directory: RunDirectory, warn: Callable[[str], None]) -> Training:
    """The saved training in ``directory``: its configuration, checkpoint and rows."""
    out = directory.path
    try:
        config = load_train_config(out / "config.json")
    except (ValueError, OSError, RecursionError) as error:
        raise RunError(f"{out / 'config.json'}: {str(error).splitlines()[0]}") from None
    try:
        read_updates(out / UPDATES_FILE)  # every complete line must be an update row
    except ValueError as error:
        raise RunError(
            f"{out / UPDATES_FILE} is damaged ({error}); this training cannot be resumed: "
            "start it again with another --out"
        ) from None
    lines = read_lines(out / UPDATES_FILE)
    identity = directory.identity(COMMAND, config.run.task, to_dict(config))
    checkpoint = directory.load_checkpoint(identity, lines, warn, UPDATES_FILE, "update")
    if checkpoint is None:
        if lines:
            warn(f"{out} has no checkpoint: the training restarts from update 1")
        return Training(directory, config, None, [], resumed=True)
    if checkpoint.epoch > config.updates:
        raise RunError(
            f"the checkpoint in {out} is at update {checkpoint.epoch}, beyond the "
            f"{config.updates} updates of its config.json: it is not this training's"
        )
    if checkpoint.epoch == config.updates:
        raise RunError(
            f"{out} finished all {config.updates} updates; see its results with: esper report {out}"
        )
    return Training(directory, config, checkpoint, lines[: checkpoint.epoch], resumed=True)


@dataclass
class _Trainer:
    """What a training checkpoint holds: the policy, its optimizer, the one random
    stream (actions, minibatches), the updates done and whether cloning is done."""

    meta: PolicyMeta
    policy: RecurrentFactoredPolicy
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    updates: int = 0
    cloned: bool = False

    @classmethod
    def fresh(cls, config: PPOTrainConfig, meta: PolicyMeta) -> _Trainer:
        torch.manual_seed(config.seed)
        policy = meta.build()
        generator = torch.Generator().manual_seed(config.seed)
        return cls(meta, policy, adam(policy, config.ppo), generator)

    def state(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "cloned": self.cloned,
        }

    def load(self, checkpoint: Checkpoint) -> None:
        state = checkpoint.state
        try:
            self.policy.load_state_dict(state["policy"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.generator.set_state(state["generator"])
            self.cloned = bool(state["cloned"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            first = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
            raise RunError(
                f"the checkpoint of update {checkpoint.epoch} does not fit this training's "
                f"policy ({type(error).__name__}: {first}); it was not written by Esper"
            ) from None
        self.updates = checkpoint.epoch


def train(
    training: Training,
    on_update: Callable[[UpdateRow], None] = lambda row: None,
    make_pool: PoolFactory = EnvPool,
    on_clone: Callable[[CloneRecord], None] = lambda record: None,
) -> list[UpdateRow]:
    """Train, or continue, the training `open_training` opened; returns every row.

    With ``config.demonstrations`` the policy first clones the heuristic (`clone`), and
    ``on_clone`` hears how that went; then PPO updates follow, each reported to
    ``on_update``. Each update appends its row to ``updates.jsonl``, then writes
    ``policy.pt``, then a checkpoint; a resumed training goes on from its checkpoint and
    keeps exactly the rows that checkpoint follows. ``make_pool`` builds the
    environments' pool from (factory, envs, workers): local processes (`EnvPool`) or Ray
    actors (`esper.rl.ray_envs.RayEnvPool`); both give the same policy."""
    config, out = training.config, training.path
    # One torch thread: the policy is small, and the environments in this process (with
    # --workers 1) are the same small runs each worker process trains on one thread.
    torch.set_num_threads(1)
    probe = MorphogenesisEnv(config=config.run)
    meta = PolicyMeta(
        config.run.task, tuple(probe.slot_ids), tuple(probe.blueprints), config.hidden
    )
    steps = config.run.episode.epochs - 1  # the first epoch is trained by reset
    trainer = _Trainer.fresh(config, meta)
    rows = _start(training, trainer)
    with make_pool(_factory(config), config.envs, config.workers) as pool:
        collector = RolloutCollector(pool, trainer.policy, trainer.generator)
        if config.demonstrations and not trainer.cloned:
            on_clone(_clone_and_save(training, trainer, collector, steps))
        cloned = _cloned_policy(training) if config.demonstrations and config.clone_kl else None
        for update in range(trainer.updates, config.updates):
            iteration = ppo_iteration(
                collector,
                trainer.optimizer,
                config.ppo,
                config.run.episode.reward.gamma,
                update=update,
                updates=config.updates,
                steps=steps,
                seeds=_update_seeds(config, update),
                restart=True,
                reference=None if cloned is None else Reference(cloned, config.kl_weight(update)),
            )
            rows.append(_row(update + 1, (update + 1) * config.envs, iteration))
            training.append(rows[-1])
            save_policy(out / POLICY_FILE, trainer.policy, meta)
            trainer.updates = update + 1
            training.save(trainer)
            plot_training(rows, out / "training_curve.png", config.run.task)
            on_update(rows[-1])
    return rows


def _cloned_policy(training: Training) -> RecurrentFactoredPolicy:
    """The policy cloning left (``cloned.pt``), frozen: what PPO is held near."""
    policy, _ = load_policy(training.path / CLONED_POLICY_FILE)
    policy.eval()
    for parameter in policy.parameters():
        parameter.requires_grad_(False)
    return policy


def _start(training: Training, trainer: _Trainer) -> list[UpdateRow]:
    """Load the checkpoint into ``trainer`` and cut ``updates.jsonl`` back to the rows it
    follows; or, at the beginning, write the configuration, an empty ``updates.jsonl``
    and the first checkpoint (update 0). Returns the rows so far."""
    out = training.path
    if training.checkpoint is not None:
        trainer.load(training.checkpoint)
        atomic_write(out / UPDATES_FILE, b"".join(training.lines))
        return [parse_update(line.decode("utf-8")) for line in training.lines]
    if not training.resumed:
        # Written only now that the data is loaded, so a training that cannot start
        # leaves no config.json behind to block the corrected command.
        text = json.dumps(to_dict(training.config), indent=2) + "\n"
        atomic_write(out / "config.json", text.encode("utf-8"))
    atomic_write(out / UPDATES_FILE, b"")
    training.save(trainer)
    return []


def _clone_and_save(
    training: Training, trainer: _Trainer, collector: RolloutCollector, steps: int
) -> CloneRecord:
    """Clone the heuristic (`clone`), write ``clone.json``, ``cloned.pt`` and
    ``policy.pt``, then the checkpoint that says cloning is done."""
    out = training.path
    record = clone(collector, training.config, steps)
    text = json.dumps(dataclasses.asdict(record), indent=2) + "\n"
    atomic_write(out / CLONE_FILE, text.encode("utf-8"))
    save_policy(out / CLONED_POLICY_FILE, trainer.policy, trainer.meta)
    save_policy(out / POLICY_FILE, trainer.policy, trainer.meta)
    trainer.cloned = True
    training.save(trainer)
    return record


@dataclass(frozen=True)
class CloneRecord(CloneStats):
    """How cloning the heuristic went (saved as ``clone.json``): the fit (`CloneStats`)
    and the demonstrations it was fitted to."""

    demonstrations: int
    """Heuristic episodes cloned."""
    mean_return: float
    """The demonstrations' mean episode return."""
    mean_final_accuracy: float
    seconds: float


def clone(collector: RolloutCollector, config: PPOTrainConfig, steps: int) -> CloneRecord:
    """Run ``config.demonstrations`` heuristic episodes of ``steps`` steps (groups of
    ``envs``, on the first seeds of the training pool; an episode that ends early is
    followed by one on a spare seed of cloning's own pool) and fit ``collector.policy``
    to them (`clone_update`, with an optimizer of its own so PPO's starts fresh)."""
    began = time.perf_counter()
    policy, buffers, episodes = collector.policy, [], []
    spare = _clone_spare_seeds(config)
    groups = math.ceil(config.demonstrations / config.envs)
    for group in range(groups):
        fresh = [train_seed(config, group * config.envs + i) for i in range(config.envs)]
        rollout = collector.collect(
            steps, itertools.chain(fresh, spare), restart=True, demonstrated=True
        )
        buffers.append(rollout.buffer)
        episodes += rollout.episodes
    policy.train()
    stats = clone_update(
        policy,
        adam(policy, config.ppo),
        RolloutBuffer.concat(buffers),
        config.ppo,
        config.run.episode.reward.gamma,
        config.clone_epochs,
        collector.generator,
        held_out=config.clone_held_out,
        patience=config.clone_patience,
        entropy_floor=config.clone_entropy_floor,
    )
    policy.eval()
    return CloneRecord(
        **dataclasses.asdict(stats),
        demonstrations=groups * config.envs,
        mean_return=float(np.mean([e.episode_return for e in episodes])),
        mean_final_accuracy=float(
            np.mean([e.summary.get("final_accuracy", math.nan) for e in episodes])
        ),
        seconds=time.perf_counter() - began,
    )


def _update_seeds(config: PPOTrainConfig, update: int) -> Iterator[int]:
    """The seeds of update ``update``'s episodes, in the order they start: one from the
    training pool for each environment (`train_seed`), then, for episodes started after
    one ended early (a run the governor stopped), spare seeds 2,000,000 + 1,000 x seed +
    100 x update + k, determined by the update, so resume replays them."""
    first = update * config.envs
    fresh = [train_seed(config, first + i) for i in range(config.envs)]
    spare = (2_000_000 + 1_000 * config.seed + 100 * update + k for k in itertools.count())
    return itertools.chain(fresh, spare)


def _clone_spare_seeds(config: PPOTrainConfig) -> Iterator[int]:
    """Seeds for demonstrations started after one ended early: 3,000,000 + 1,000 x seed
    + k, apart from the training pool (1,000,000 + ...) and PPO's spares (2,000,000 +
    ...), determined by the run, so a rerun of cloning replays them."""
    return (3_000_000 + 1_000 * config.seed + k for k in itertools.count())


def _row(update: int, episodes: int, iteration: UpdateRecord) -> UpdateRow:
    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else math.nan

    stats = iteration.stats
    finished = iteration.episodes
    summaries = [e.summary for e in finished]
    return UpdateRow(
        update=update,
        episodes=episodes,
        mean_return=mean([e.episode_return for e in finished]),
        mean_final_accuracy=mean([s.get("final_accuracy", math.nan) for s in summaries]),
        mean_added_params=mean([s.get("seed_params", math.nan) for s in summaries]),
        mean_seeds_kept=mean([s.get("seeds_fossilized", math.nan) for s in summaries]),
        illegal_fraction=mean([s.get("illegal_fraction", 0.0) for s in summaries]),
        learning_rate=iteration.learning_rate,
        policy_loss=stats.policy_loss,
        value_loss=stats.value_loss,
        entropy=stats.entropy,
        approx_kl=stats.approx_kl,
        clip_fraction=stats.clip_fraction,
        ratio_min=stats.ratio_min,
        ratio_max=stats.ratio_max,
        explained_variance=stats.explained_variance,
        rollout_seconds=iteration.rollout_seconds,
        update_seconds=iteration.update_seconds,
        approx_kl_last=stats.approx_kl_last,
        reference_kl=stats.reference_kl,
    )


def load_train_config(path: Path) -> PPOTrainConfig:
    """A saved ``config.json`` of a training run. One written before the discount was
    set in one place holds ``ppo.gamma``: dropped when it equals
    ``run.episode.reward.gamma``, refused (ValueError, one line) when it differs."""
    data = json.loads(path.read_text())
    ppo = data.get("ppo") if isinstance(data, dict) else None
    old_gamma = ppo.pop("gamma") if isinstance(ppo, dict) and "gamma" in ppo else None
    config: PPOTrainConfig = from_dict(PPOTrainConfig, data)
    if old_gamma is not None and old_gamma != config.run.episode.reward.gamma:
        raise ValueError(
            f"ppo.gamma ({old_gamma}) differs from run.episode.reward.gamma "
            f"({config.run.episode.reward.gamma}); the discount is set once, as "
            "run.episode.reward.gamma: remove ppo.gamma"
        )
    return config


def resolve_train_config(
    file_data: dict[str, Any], run_overrides: dict[str, Any], flags: dict[str, Any]
) -> PPOTrainConfig:
    """Defaults, then a config file's data, then flags, merged key by key (the one merge,
    `esper.config.merge`): the file's ``run`` section and ``run_overrides`` go to the
    environment (`env_config`: task, epochs, ...), ``flags`` to the top level (episodes,
    envs, ...). The discount comes from the environment's reward config only."""
    run = env_config(file_data.get("run"), **run_overrides)
    ppo_section = file_data.get("ppo", {})
    if isinstance(ppo_section, Mapping) and "gamma" in ppo_section:
        raise ValueError("set the discount as run.episode.reward.gamma, not ppo.gamma")
    rest = {key: value for key, value in file_data.items() if key != "run"}
    merged = merge(to_dict(PPOTrainConfig(run=run)), rest, flags)
    merged["run"] = to_dict(run)
    config: PPOTrainConfig = from_dict(PPOTrainConfig, merged)
    return config
