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

A training directory holds ``config.json`` (a `PPOTrainConfig`), ``updates.jsonl`` (one
row per update), ``policy.pt`` (`esper.rl.agent`), ``trainer.pt`` (optimizer and random
state for ``--resume``; tensors and plain data only), ``training_curve.png``, and when
cloning ``clone.json`` (a `CloneRecord`) and ``cloned.pt`` (the cloned policy). A run
resumed after any interruption gives the policy an uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from esper.config import RunConfig, from_dict, merge, reject_non_finite, to_dict
from esper.rl.agent import POLICY_FILE, PolicyMeta, save_policy
from esper.rl.buffer import RolloutBuffer
from esper.rl.env import MorphogenesisEnv, env_config
from esper.rl.policy import RecurrentFactoredPolicy
from esper.rl.ppo import (
    CloneStats,
    PPOConfig,
    UpdateRecord,
    adam,
    clone_update,
    ppo_iteration,
)
from esper.rl.rollout import RolloutCollector
from esper.rl.workers import EnvPool, PoolFactory
from esper.rundir import atomic_write, save_atomic
from esper.telemetry.updates import UPDATES_FILE, UpdateRow, plot_training, read_updates

__all__ = [
    "CLONED_POLICY_FILE",
    "CLONE_FILE",
    "TRAINER_FILE",
    "UPDATES_FILE",
    "CloneRecord",
    "PPOTrainConfig",
    "UpdateRow",
    "clone",
    "load_train_config",
    "plot_training",
    "read_updates",
    "resolve_train_config",
    "train",
    "train_seed",
]

TRAINER_FILE = "trainer.pt"
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
    """Passes over the demonstrations when cloning them."""

    def __post_init__(self) -> None:
        reject_non_finite(self)
        for name in ("episodes", "envs", "workers", "train_seeds", "hidden", "clone_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.demonstrations < 0:
            raise ValueError(f"demonstrations must be at least 0, got {self.demonstrations}")
        if self.ppo.num_minibatches > self.envs:
            raise ValueError(
                f"ppo.num_minibatches ({self.ppo.num_minibatches}) cannot exceed envs "
                f"({self.envs}): minibatches are whole episodes"
            )

    @property
    def updates(self) -> int:
        return math.ceil(self.episodes / self.envs)


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


def train(
    out: Path,
    config: PPOTrainConfig,
    on_update: Callable[[UpdateRow], None] = lambda row: None,
    resume: bool = False,
    make_pool: PoolFactory = EnvPool,
    on_clone: Callable[[CloneRecord], None] = lambda record: None,
) -> list[UpdateRow]:
    """Train (or, with ``resume``, continue training) a policy into ``out``.

    With ``config.demonstrations`` the policy first clones the heuristic (`clone`), and
    ``on_clone`` hears how that went; then PPO updates follow, each reported to
    ``on_update``.

    Resuming continues after the last update whose state was saved (``trainer.pt``), or
    starts again if none was. ``make_pool`` builds the environments' pool from (factory,
    envs, workers): local processes (`EnvPool`) or Ray actors
    (`esper.rl.ray_envs.RayEnvPool`); both give the same policy."""
    # One torch thread: the policy is small, and the environments in this process (with
    # --workers 1) are the same small runs each worker process trains on one thread.
    torch.set_num_threads(1)
    probe = MorphogenesisEnv(config=config.run)
    meta = PolicyMeta(
        config.run.task, tuple(probe.slot_ids), tuple(probe.blueprints), config.hidden
    )
    steps = config.run.episode.epochs - 1  # the first epoch is trained by reset
    torch.manual_seed(config.seed)
    policy = meta.build()
    optimizer = adam(policy, config.ppo)
    generator = torch.Generator().manual_seed(config.seed)
    saved = resume and (out / TRAINER_FILE).is_file()  # written after cloning too
    start, rows = (
        _restore(out, config, policy, optimizer, generator) if saved else _begin(out, config)
    )
    with make_pool(_factory(config), config.envs, config.workers) as pool:
        collector = RolloutCollector(pool, policy, generator)
        if config.demonstrations and not saved:
            record = clone(collector, config, steps)
            (out / CLONE_FILE).write_text(json.dumps(dataclasses.asdict(record), indent=2) + "\n")
            _save(out, policy, meta, optimizer, generator, 0)
            save_policy(out / CLONED_POLICY_FILE, policy, meta)
            on_clone(record)
        for update in range(start, config.updates):
            iteration = ppo_iteration(
                collector,
                optimizer,
                config.ppo,
                config.run.episode.reward.gamma,
                update=update,
                updates=config.updates,
                steps=steps,
                seeds=_update_seeds(config, update),
                restart=True,
            )
            rows.append(_row(update + 1, (update + 1) * config.envs, iteration))
            with (out / UPDATES_FILE).open("a") as handle:
                handle.write(rows[-1].to_json() + "\n")
            _save(out, policy, meta, optimizer, generator, update + 1)
            plot_training(rows, out / "training_curve.png", config.run.task)
            on_update(rows[-1])
    return rows


def _begin(out: Path, config: PPOTrainConfig) -> tuple[int, list[UpdateRow]]:
    """A new run (or one that stopped before its first update was saved): its config and
    an empty ``updates.jsonl``; it starts at update 0."""
    (out / "config.json").write_text(json.dumps(to_dict(config), indent=2) + "\n")
    (out / UPDATES_FILE).write_text("")
    return 0, []


def _restore(
    out: Path,
    config: PPOTrainConfig,
    policy: RecurrentFactoredPolicy,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> tuple[int, list[UpdateRow]]:
    """Load ``trainer.pt`` into the policy, optimizer and generator; the update to go on
    from and the rows before it (``updates.jsonl`` is cut back to them)."""
    state = torch.load(out / TRAINER_FILE, map_location="cpu", weights_only=True)
    policy.load_state_dict(state["policy"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    start = int(state["updates"])
    rows = read_updates(out / UPDATES_FILE)[:start]
    _write_rows(out / UPDATES_FILE, rows)
    return start, rows


def _save(
    out: Path,
    policy: RecurrentFactoredPolicy,
    meta: PolicyMeta,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    updates: int,
) -> None:
    save_policy(out / POLICY_FILE, policy, meta)
    save_atomic(
        out / TRAINER_FILE,
        {
            "policy": policy.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "updates": updates,
        },
    )


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


def _write_rows(path: Path, rows: list[UpdateRow]) -> None:
    atomic_write(path, "".join(row.to_json() + "\n" for row in rows).encode())


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
